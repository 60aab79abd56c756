"""Writing files so that a final name only ever holds a complete file, and hashing them.

    with atomic_path(final) as tmp:      tmp = <folder>/.<name>.<random>.tmp<suffix>
        write tmp                        (a shard, a checkpoint, a mask, a PNG, JSON ...)
    -> fsync(tmp), rename tmp -> final   on success (atomic within one folder)
    -> tmp removed                       on any error; ``final`` is untouched

Every writer in the three packages goes through ``atomic_path``; the file mode follows the
process umask (0644 under umask 022), as ``open()`` would give, not mkstemp's owner-only 0600.

Names read from inputs (a CSV's case column, a manifest's ``file`` entries) become paths only
through ``confined``: a plain file name, so nothing the tool reads or writes for them can lie
outside the folder it belongs to. ``is_url`` tells a shard folder's URL from a path.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_MARK = ".tmp"
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # scheme "://": https://, s3://, file://, ...
# temp_path's names: "." + final name + "." + mkstemp's random characters + ".tmp" + suffix
TEMP_NAME = re.compile(r"^\.(?P<final>.+)\.[A-Za-z0-9_]{1,16}\.tmp(?P<suffix>.*)$")
NAME_MAX = 200  # room for the temporary name's additions within the usual 255-byte limit


class UnsafePathError(ValueError):
    """A name taken from an input that is not a plain file name inside its folder."""


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


def temp_target(path: Path) -> str | None:
    """The final name a temporary file of ``temp_path`` was to become (None: not such a file)."""
    found = TEMP_NAME.match(path.name)
    return found.group("final") if found else None


def name_problem(name) -> str | None:
    """Why ``name`` is not a plain file name (None: it is one)."""
    if not isinstance(name, str):
        return f"of type {type(name).__name__}, not a string"
    if not name:
        return "empty"
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        return "a path with a folder separator"
    if name in (".", ".."):
        return "a reference to a folder"
    if name.startswith("."):
        return "a hidden name (the tool's temporary and lock files start with '.')"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "a name with control characters"
    if len(name.encode()) > NAME_MAX:
        return f"{len(name.encode())} bytes long (at most {NAME_MAX})"
    return None


def confined(folder: str | os.PathLike, name, what: str) -> Path:
    """``folder / name`` for a ``name`` taken from an input, which must be a plain file name.

        kept:      case_001   a.h5   CT 12 (arterial)
        refused:   ../victim  /home/me/x  sub/a.h5  ..  .hidden  ''  a\\b

    ``what`` says where the name was found ("cases.csv, line 3: case"); the error repeats it.
    """
    problem = name_problem(name)
    if problem:
        raise UnsafePathError(f"{what} is {name!r}, {problem}; expected a plain file name inside {folder}")
    return Path(folder) / name


def is_url(source) -> bool:
    """Is ``source`` a URL (``https://host/shards``, ``s3://bucket/shards``) rather than a local path?"""
    return isinstance(source, str) and URL.match(source) is not None


def ensure_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be created in it (a read-only mount, a
    folder of another user, a full disk); raises OSError naming the folder otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=TEMP_MARK, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                  errno.EPERM: "permission denied", errno.ENOSPC: "no space left on the device"}
        raise type(e)(e.errno, f"can't create files here ({reason.get(e.errno, e.strerror)}); expected a "
                      f"writable folder", str(folder)) from e
    return folder


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
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _finite(data):
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def json_text(data, **dumps_options) -> str:
    """``json.dumps(data)`` with every NaN / inf float as null (numbers NumPy gives become floats)."""
    def number(value):
        if hasattr(value, "item"):  # numpy scalars
            return _finite(value.item())
        raise TypeError(f"{type(value).__name__} {value!r} is not JSON serializable")
    return json.dumps(_finite(data), allow_nan=False, default=number, **dumps_options)


def write_json_atomic(path: str | os.PathLike, data) -> Path:
    """JSON with sorted keys, two-space indent and a final newline (NaN and inf as null), atomically."""
    return write_text_atomic(path, json_text(data, indent=2, sort_keys=True) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
