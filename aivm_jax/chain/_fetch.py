"""Bounded fetches of the bytes behind a URI: a byte cap, a deadline for the whole transfer,
and local files only where the caller allows them.

A node fetches two things that others name: a program (at the URI its owner
registered) and sometimes an input (at the URI a requester gave). Either can
be hostile: a server that drips one byte a second, an endless body, a path to
``/dev/zero``, a FIFO that blocks a reader forever. So:

- ``http(s)``: `http.client` with a per-read socket timeout and a watchdog that
  shuts the socket down when the whole transfer's deadline passes (headers
  included); at most `MAX_REDIRECTS` redirects, to allowed schemes only; a
  ``Content-Length`` over the cap is refused before the body is read, and the
  body is cut off at the cap whatever the header said.
- local paths (``file://`` or plain): only when allowed, inside ``root`` when
  one is given; opened with ``O_NONBLOCK`` (a FIFO cannot block the open) and
  checked with ``fstat``: regular files only, at most the cap.

`fetch_program` streams to a temporary file beside its destination while it
hashes, and renames it into place only when the bytes hash to the expected
model id; `fetch_bytes` returns a small input in memory.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import socket
import ssl
import stat
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from aivm_jax._errors import (
    FetchError,
    FetchTimeoutError,
    ModelIdMismatchError,
    ResourceLimitError,
    TamperedModelError,
    UriPolicyError,
)

__all__ = ["MAX_REDIRECTS", "fetch_bytes", "fetch_program", "local_path"]

MAX_REDIRECTS = 5
CHUNK = 1 << 20
READ_TIMEOUT = 30.0  # one socket operation; the watchdog bounds the whole transfer
_CHECKSUM = 32  # a program file ends with sha256 of everything before it, which is its model id


def local_path(uri: str) -> Path | None:
    """The local path a URI names (``file://`` or a plain path), or None for a network URI."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UriPolicyError(f"{uri!r} names a file on another host; only local file:// URIs exist")
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri)
    return None


def fetch_bytes(
    uri: str,
    *,
    max_bytes: int,
    timeout: float,
    schemes: frozenset[str],
    local: bool,
    root: Path | None = None,
    stop: threading.Event | None = None,
) -> bytes:
    """The bytes at ``uri``, at most ``max_bytes`` of them, within ``timeout`` seconds.

    Args:
      uri: ``http(s)://``, ``file://`` or a plain path.
      max_bytes: refuse more than this.
      timeout: seconds for the whole fetch (connection, headers, body).
      schemes: network schemes allowed (``http``, ``https``).
      local: whether local paths are allowed at all.
      root: if given, local paths must resolve inside it (relative ones are taken from it).
      stop: set to abandon the fetch (the node is shutting down).

    Raises:
      UriPolicyError: a scheme or local path the caller does not allow.
      ResourceLimitError: more than ``max_bytes``.
      FetchTimeoutError: past ``timeout``.
      FetchError: anything else (no such file, not a regular file, HTTP error, connection).
    """
    out = io.BytesIO()
    for chunk in _chunks(uri, max_bytes, time.monotonic() + timeout, schemes, local, root, stop):
        out.write(chunk)
    return out.getvalue()


def fetch_program(
    uri: str,
    model_id: str,
    dest: Path,
    *,
    max_bytes: int,
    timeout: float,
    schemes: frozenset[str],
    local: bool,
    stop: threading.Event | None = None,
) -> Path:
    """Stream the program at ``uri`` to ``dest``, keeping it only if it hashes to ``model_id``.

    The bytes go to a temporary file in ``dest``'s directory while their SHA-256 is
    computed (over all but the last 32 bytes, the file's checksum); the file is
    renamed to ``dest`` only when that digest equals both the checksum and
    ``model_id``. Memory stays at one chunk, whatever the source sends.

    Args:
      uri, max_bytes, timeout, schemes, local, stop: as for `fetch_bytes` (no ``root``:
        a program's bytes are checked against its id, so any regular file will do).
      model_id: the registered id (``0x`` + 64 hex digits).
      dest: where the verified program goes.

    Raises:
      ModelIdMismatchError: the bytes hash to another id.
      TamperedModelError: the bytes do not end with their own checksum (not a program file).
      UriPolicyError, ResourceLimitError, FetchTimeoutError, FetchError: as for `fetch_bytes`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        hasher, tail, total = hashlib.sha256(), b"", 0
        with os.fdopen(fd, "wb") as out:
            deadline = time.monotonic() + timeout
            for chunk in _chunks(uri, max_bytes, deadline, schemes, local, None, stop):
                out.write(chunk)
                total += len(chunk)
                window = tail + chunk
                hasher.update(window[:-_CHECKSUM])
                tail = window[-_CHECKSUM:]
            out.flush()
            os.fsync(out.fileno())
        digest = hasher.digest()
        if total <= _CHECKSUM or digest != tail:
            raise TamperedModelError(
                f"{uri} does not hold an AIVM program file ({total} bytes that do not end with their "
                "own checksum); the model's registered URI is wrong"
            )
        if "0x" + digest.hex() != model_id.lower():
            raise ModelIdMismatchError(
                f"{uri} holds model id 0x{digest.hex()}, expected {model_id}; "
                "it is not the registered program"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


# ------------------------------------------------------------------ sources


def _chunks(
    uri: str,
    max_bytes: int,
    deadline: float,
    schemes: frozenset[str],
    local: bool,
    root: Path | None,
    stop: threading.Event | None,
) -> Iterator[bytes]:
    path = local_path(uri)
    if path is None:
        scheme = urllib.parse.urlsplit(uri).scheme.lower()
        if scheme not in schemes:
            allowed = ", ".join(sorted(schemes)) or "none"
            raise UriPolicyError(
                f"{uri!r}: scheme {scheme!r} is not fetched by this node (allowed: {allowed})"
            )
        source = _http_chunks(uri, deadline, max_bytes, schemes)
    else:
        if not local:
            raise UriPolicyError(
                f"{uri!r} is a local path; this node does not read local paths for it "
                "(inputs: only inside --input-dir; programs: unless --no-local-models)"
            )
        source = _file_chunks(_allowed_path(uri, path, root), max_bytes)
    total = 0
    try:
        for chunk in source:
            if stop is not None and stop.is_set():
                raise FetchError(f"fetch of {uri} abandoned: the node is stopping")
            if time.monotonic() > deadline:
                raise FetchTimeoutError(f"fetch of {uri} took longer than the node's download time limit")
            total += len(chunk)
            if total > max_bytes:
                raise ResourceLimitError(f"{uri} holds more than the {max_bytes} bytes this node accepts")
            yield chunk
    finally:
        source.close()  # the connection or file closes now, not when a traceback lets it go


def _allowed_path(uri: str, path: Path, root: Path | None) -> Path:
    if root is None:
        return path
    resolved = (root / path).resolve() if not path.is_absolute() else path.resolve()
    if not resolved.is_relative_to(root):
        raise UriPolicyError(f"{uri!r} is outside this node's input directory {root}; refused")
    return resolved


def _file_chunks(path: Path, max_bytes: int) -> Iterator[bytes]:
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FetchError(f"no file at {path}") from None
    except OSError as error:
        raise FetchError(f"cannot open {path}: {error.strerror or error}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FetchError(f"{path} is not a regular file (a FIFO, device or directory); refused")
        if info.st_size > max_bytes:
            raise ResourceLimitError(f"{path} has {info.st_size} bytes, more than the {max_bytes} accepted")
        while True:
            try:
                chunk = os.read(fd, CHUNK)
            except OSError as error:
                raise FetchError(f"cannot read {path}: {error.strerror or error}") from None
            if not chunk:
                return
            yield chunk
    finally:
        os.close(fd)


def _http_chunks(uri: str, deadline: float, max_bytes: int, schemes: frozenset[str]) -> Iterator[bytes]:
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme not in schemes:
            raise UriPolicyError(f"a redirect to {uri!r}: scheme {scheme!r} is not fetched by this node")
        if not parts.hostname:
            raise FetchError(f"{uri!r} names no host")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchTimeoutError(f"fetch of {uri} took longer than the node's download time limit")
        timeout = min(remaining, READ_TIMEOUT)
        if scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        expired = threading.Event()
        watchdog = threading.Timer(remaining, _abort, (conn, expired))
        watchdog.daemon = True
        watchdog.start()
        try:
            target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
            conn.request("GET", target, headers={"User-Agent": "aivm-node", "Accept-Encoding": "identity"})
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise FetchError(f"{uri} answered HTTP {response.status} without a Location")
                uri = urllib.parse.urljoin(uri, location)
                continue
            if response.status != 200:
                raise FetchError(f"{uri} answered HTTP {response.status} {response.reason}")
            length = response.getheader("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > max_bytes:
                raise ResourceLimitError(
                    f"{uri} announces {int(length)} bytes, more than the {max_bytes} accepted"
                )
            received = 0
            while True:
                chunk = response.read1(CHUNK)
                if not chunk:
                    break
                received += len(chunk)
                yield chunk
            if expired.is_set():
                raise FetchTimeoutError(f"fetch of {uri} took longer than the node's download time limit")
            if length is not None and length.strip().isdigit() and received < int(length):
                raise FetchError(f"{uri} ended after {received} of its {int(length)} bytes")
            return
        except (FetchError, ResourceLimitError, UriPolicyError):
            raise
        except (OSError, http.client.HTTPException, ValueError) as error:
            if expired.is_set() or time.monotonic() >= deadline or isinstance(error, TimeoutError):
                raise FetchTimeoutError(
                    f"fetch of {uri} took longer than the node's download time limit ({error or 'timeout'})"
                ) from None
            raise FetchError(f"cannot fetch {uri}: {type(error).__name__}: {error}") from None
        finally:
            watchdog.cancel()
            conn.close()
    raise FetchError(f"more than {MAX_REDIRECTS} redirects from {uri}")


def _abort(conn: http.client.HTTPConnection, expired: threading.Event) -> None:
    """The deadline passed: wake a read blocked on the socket (headers or body)."""
    expired.set()
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
