"""Writing files so that a final name only ever holds a complete file, and hashing them.

    with atomic_path(final) as tmp:      tmp = <folder>/.<name>.<random>.tmp<suffix>
        write tmp                        (a shard, a checkpoint, a mask, a PNG, JSON ...)
    -> fsync(tmp), rename tmp -> final   on success (atomic within one folder)
    -> tmp removed                       on any error; ``final`` is untouched

Every writer in the three packages goes through ``atomic_path``; the file mode follows the
process umask (0644 under umask 022), as ``open()`` would give, not mkstemp's owner-only 0600.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_MARK = ".tmp"


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set back at once
    os.umask(mask)
    return mask


def temp_path(final: str | os.PathLike, suffix: str = "") -> Path:
    """A new empty file with a unique hidden name beside ``final`` (same folder: rename is atomic).

    ``suffix`` is appended after ``.tmp`` for writers that choose the format by extension
    (``.tmp.nii.gz``). The mode is 0666 less the process umask.
    """
    final = Path(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=TEMP_MARK + suffix, dir=final.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(tmp)


def is_temp(path: Path) -> bool:
    """Is ``path`` a temporary file of ``temp_path`` (left behind by a killed writer)?"""
    return path.name.startswith(".") and TEMP_MARK in path.name[1:]


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "", fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``final``, on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final, suffix)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data) -> Path:
    """JSON with sorted keys, two-space indent and a final newline, written atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
