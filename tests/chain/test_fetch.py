"""Bounded fetches: a byte cap, a deadline for the whole transfer, local files only where allowed."""

from __future__ import annotations

import os
import resource
import time

import pytest

import aivm_jax
from aivm_jax import FetchError, FetchTimeoutError, ResourceLimitError, UriPolicyError
from aivm_jax.chain._fetch import fetch_bytes, fetch_program
from aivm_jax.conformance import DATA_DIR

from ._servers import http_server

NET = frozenset({"http", "https"})
MLP = DATA_DIR / "digits-mlp.aivm"


@pytest.fixture(scope="module")
def server():
    with http_server() as s:
        s.files["/mlp.aivm"] = MLP.read_bytes()
        s.files["/small"] = b"hello"
        yield s


def _get(uri, **kw):
    args = {"max_bytes": 1 << 20, "timeout": 10.0, "schemes": NET, "local": False} | kw
    return fetch_bytes(uri, **args)


def test_a_program_streams_to_disk_and_is_kept_only_if_it_hashes_to_its_id(server, tmp_path):
    model_id = aivm_jax.load(MLP).model_id
    dest = tmp_path / "m.aivm"
    args = {"max_bytes": 1 << 24, "timeout": 10.0, "schemes": NET, "local": False}
    fetch_program(f"{server.url}/mlp.aivm", model_id, dest, **args)
    assert dest.read_bytes() == MLP.read_bytes()
    other = "0x" + "11" * 32
    with pytest.raises(aivm_jax.ModelIdMismatchError):
        fetch_program(f"{server.url}/mlp.aivm", other, tmp_path / "o.aivm", **args)
    with pytest.raises(aivm_jax.TamperedModelError):
        fetch_program(f"{server.url}/small", other, tmp_path / "s.aivm", **args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.aivm"]  # no partial files left
    # the registered size caps the download
    with pytest.raises(ResourceLimitError):
        fetch_program(f"{server.url}/mlp.aivm", model_id, tmp_path / "c.aivm", **(args | {"max_bytes": 100}))


def test_a_dripping_body_is_cut_off_at_the_deadline(server):
    start = time.monotonic()
    with pytest.raises(FetchTimeoutError, match="download time limit"):
        _get(f"{server.url}/drip", timeout=2.0)
    assert time.monotonic() - start < 4


def test_dripping_headers_are_cut_off_at_the_deadline(server):
    start = time.monotonic()
    with pytest.raises(FetchTimeoutError):
        _get(f"{server.url}/drip-headers", timeout=2.0)
    assert time.monotonic() - start < 4


def test_an_endless_body_stops_at_the_cap_and_memory_stays_flat(server, tmp_path):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ResourceLimitError, match="more than the"):
        fetch_program(
            f"{server.url}/endless",
            "0x" + "00" * 32,
            tmp_path / "e.aivm",
            max_bytes=64 << 20,
            timeout=30.0,
            schemes=NET,
            local=False,
        )
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 << 10  # KiB: < 32 MiB more
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ResourceLimitError, match="announces"):
        _get(f"{server.url}/huge")


def test_redirects_stay_within_the_allowed_schemes(server):
    assert _get(f"{server.url}/redirect/small") == b"hello"
    with pytest.raises(UriPolicyError):
        _get(f"{server.url}/to-file")
    with pytest.raises(UriPolicyError):
        _get(f"{server.url}/small", schemes=frozenset({"https"}))
    with pytest.raises(FetchError, match="404"):
        _get(f"{server.url}/nothing")
    with pytest.raises(UriPolicyError):
        _get("ftp://example.com/x")


def test_local_paths_only_where_allowed_and_only_regular_files(tmp_path):
    inside = tmp_path / "in"
    inside.mkdir()
    (inside / "x.npy").write_bytes(b"data")
    (inside / "link").symlink_to("/etc/passwd")
    os.mkfifo(inside / "fifo")
    assert _get(str(inside / "x.npy"), local=True, root=inside) == b"data"
    assert _get("x.npy", local=True, root=inside) == b"data"  # relative to the input directory
    assert _get((inside / "x.npy").as_uri(), local=True, root=inside) == b"data"
    for outside in ["/etc/passwd", "file:///etc/passwd", "../../../../etc/passwd", str(inside / "link")]:
        with pytest.raises(UriPolicyError, match="outside"):
            _get(outside, local=True, root=inside)
    with pytest.raises(UriPolicyError, match="local path"):
        _get("/etc/passwd", local=False)
    start = time.monotonic()
    with pytest.raises(FetchError, match="not a regular file"):  # opened without blocking
        _get(str(inside / "fifo"), local=True, root=inside)
    assert time.monotonic() - start < 2
    with pytest.raises(FetchError, match="not a regular file"):
        _get("/dev/zero", local=True)
    with pytest.raises(FetchError, match="no file"):
        _get(str(inside / "missing.npy"), local=True, root=inside)
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as handle:
        handle.truncate(1 << 40)  # a terabyte that takes no disk
    with pytest.raises(ResourceLimitError):
        _get(str(sparse), local=True)
