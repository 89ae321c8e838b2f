"""Build a small C++ shared library once per source, for the plain C helpers loaded with ctypes.

A library is named by a hash of its sources, compiler flags and machine, so a changed source is
rebuilt and an old build is never loaded. It lives beside the sources (``_native/build``) or in the
user's cache (``$XDG_CACHE_HOME/aivm_jax``), whichever is writable first. The compiler (``$CXX``
or ``g++``) writes a temporary file that is renamed into place under a file lock, so concurrent
processes never load a half-written library; builds of older sources are removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_directories", "build_library", "existing_library", "library_name"]


def build_directories(sources_dir: Path) -> list[Path]:
    """Where a library may live: ``sources_dir/build``, then the user's cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aivm_jax"
    return [sources_dir / "build", cache]


def library_name(
    prefix: str, sources: Sequence[Path], flags: Sequence[str], depends: Sequence[Path] = (), key: bytes = b""
) -> str:
    """``{prefix}-{16 hex digits}.so``, the digits a hash of the sources, the files they include
    (``depends``), the flags, the machine and ``key`` (a library version the build depends on)."""
    digest = hashlib.sha256()
    for source in (*sources, *depends):
        digest.update(source.read_bytes())
    digest.update(" ".join(flags).encode())
    digest.update(platform.machine().encode())
    digest.update(key)
    return f"{prefix}-{digest.hexdigest()[:16]}.so"


def existing_library(
    prefix: str, sources: Sequence[Path], flags: Sequence[str], directories: Sequence[Path], **name_args
) -> Path | None:
    """The built library of these sources and flags if a directory holds it, else None."""
    name = library_name(prefix, sources, flags, **name_args)
    return next((d / name for d in directories if (d / name).is_file()), None)


def build_library(
    prefix: str,
    sources: Sequence[Path],
    flags: Sequence[str],
    directories: Sequence[Path],
    *,
    depends: Sequence[Path] = (),
    key: bytes = b"",
    include_dirs: Sequence[str] = (),
    note: str | None = None,
) -> Path:
    """The path of the library of ``sources`` built with ``flags`` (and ``-I`` each of
    ``include_dirs``, which do not name the library), compiling it if no directory holds it yet;
    ``note`` (``{target}``: the library's path) is printed to stderr before a compile.

    Raises:
      RuntimeError: no C++ compiler, no writable directory, or the compile failed (its stderr).
    """
    found = existing_library(prefix, sources, flags, directories, depends=depends, key=key)
    if found is not None:
        return found
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on the PATH")
    name = library_name(prefix, sources, flags, depends, key)
    errors = []
    for directory in directories:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            target = directory / name
            with open(directory / f".lock-{prefix}", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if target.is_file():
                    return target
                if note is not None:
                    print(note.format(target=target), file=sys.stderr)
                fd, partial = tempfile.mkstemp(dir=directory, suffix=".so.partial")
                os.close(fd)
                includes = [f"-I{d}" for d in include_dirs]
                command = [cxx, *flags, *includes, "-o", partial, *map(str, sources)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    os.unlink(partial)
                    raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
                os.replace(partial, target)
                for stale in directory.glob(f"{prefix}-*.so"):  # libraries of older sources
                    if stale != target:
                        stale.unlink(missing_ok=True)
                return target
        except OSError as error:
            errors.append(f"{directory}: {error}")
    raise RuntimeError("no writable build directory: " + "; ".join(errors))
