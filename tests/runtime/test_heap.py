"""The heap setting of ``import aivm_jax``: freed memory stays in the process for the next call."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Three 30 MiB blocks written and freed, four times; page faults counted per round. Under glibc's
# defaults 30 MiB blocks are mapped and unmapped each time (or trimmed off the heap top), so every
# round faults on every page; kept, only the first round does.
_ROUNDS = """
import ctypes, json, resource
import aivm_jax
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size, faults = 30 << 20, []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(size) for _ in range(3)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    for block in blocks:
        libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"heap": aivm_jax.determinism_report()["heap"], "faults": faults}))
"""
_PAGES = 3 * (30 << 20) // 4096


def _rounds(heap: str | None) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "AIVM_HEAP"}
    if heap is not None:
        env["AIVM_HEAP"] = heap
    done = subprocess.run(
        [sys.executable, "-c", _ROUNDS], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt; elsewhere nothing is set")
def test_freed_memory_is_reused_without_page_faults():
    kept = _rounds(None)
    assert kept["heap"] == "keep"
    assert all(faults < _PAGES // 100 for faults in kept["faults"][1:]), kept["faults"]
    # The contrast: with the libc's defaults the same rounds fault again, so the check above can fail.
    system = _rounds("system")
    assert system["heap"] == "system"
    assert system["faults"][-1] > _PAGES // 2, system["faults"]
