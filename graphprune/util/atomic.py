"""Write a file so that it appears whole or not at all: every saver goes through here."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import GraphpruneError


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path next to ``dst``; renamed onto ``dst`` when the block succeeds and
    removed when it raises, so a failed save leaves no partial file."""
    dst = Path(dst)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=suffix, prefix=f".{dst.name}.", dir=dst.parent)
    except OSError as exc:  # a read-only folder, a file where a folder should be: say where, not the temp name
        raise GraphpruneError(f"cannot write '{dst}': {exc.strerror or exc}; choose another path") from exc
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private; the file gets what open() would give
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_writable(out: str | os.PathLike, flag: str) -> None:
    """Fail before any work when ``out`` cannot be written: the nearest existing folder above it
    must take new files (a file in the way, /proc, a read-only mount or missing rights stop here,
    not after a prune). Nothing is created: missing folders are made only when writing."""
    where = Path(out).absolute().parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise GraphpruneError(f"{flag} {out}: '{where}' is a file, not a folder; choose another {flag}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".graphprune-probe.", dir=where)
    except OSError as exc:
        raise GraphpruneError(f"{flag} {out}: cannot create files in '{where}' ({exc.strerror or exc}); "
                              f"choose another {flag}") from exc
    os.close(fd)
    os.remove(probe)


def current_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def public_tree(path: str | os.PathLike) -> None:
    """Give a folder made by ``tempfile.mkdtemp`` and what was written in it the modes ``mkdir``
    and ``open`` would give them (mkdtemp, and safetensors' writer, make them private)."""
    mask = current_umask()
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)


def write_bytes_atomic(dst: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(dst) as tmp:
        tmp.write_bytes(data)
    return Path(dst)
