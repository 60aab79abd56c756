"""One writer per output folder: ``with folder_lock(out, "build"):`` holds ``out/.patchstore.lock``.

    .patchstore.lock     {"pid": 1234, "host": "node7", "started": "2024-05-01T10:00:00+00:00",
                          "command": "build"}

The lock is ``flock(LOCK_EX | LOCK_NB)`` on that file, held while the block runs. The kernel
drops it when its holder ends in any way (kill -9 included), so a lock file left by a killed
build is free: the next build takes it over and says whose it was. A second writer while the
first runs is refused with the first's pid, host and start time; or, given ``on_wait`` (the
download cache: another process fetching into it), told whom it waits for and then waits. The
holder removes the file when it is done; a writer that locked a file just removed tries again on
the new one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".patchstore.lock"


class LockError(RuntimeError):
    """Another process is writing into the same folder: the message names it."""


def _record(fd: int) -> dict:
    """The holder record in the lock file ({} when empty or unreadable)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def describe_holder(record: dict) -> str:
    """'pid 1234 on host node7, started 2024-05-01T10:00:00+00:00' (or what the record has)."""
    if not record:
        return "a process that left no record"
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')}, "
            f"started {record.get('started', '?')}")


def pid_alive(pid) -> bool:
    """Is there a process ``pid`` on this host (a zombie counts as gone)?"""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _lock_current(path: Path, on_wait: Callable[[dict], None] | None = None) -> tuple[int, dict]:
    """Open and lock the file now at ``path``: (fd, the previous holder's record). When it is held:
    LockError(holder record), or with ``on_wait`` that is called with the record, then it waits."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _record(fd)
            if on_wait is None:
                os.close(fd)
                raise LockError(holder) from None
            on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:  # else the holder removed it as we opened it: lock the new one
            return fd, _record(fd)
        os.close(fd)


@contextmanager
def folder_lock(folder: str | os.PathLike, command: str,
                on_wait: Callable[[str], None] | None = None) -> Iterator[dict]:
    """Hold ``folder``'s lock for ``command`` ("build", "merge", "fetch"); yields the record of a
    killed holder whose lock was taken over ({} when the folder was free). A folder locked by a live
    process is refused (LockError), or with ``on_wait`` waited for after telling it whom."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    tell = None if on_wait is None else (
        lambda holder: on_wait(f"{folder}: waiting for patchstore {holder.get('command', 'process')} "
                               f"({describe_holder(holder)}) to finish with it"))
    try:
        fd, stale = _lock_current(path, tell)
    except LockError as e:
        holder = e.args[0]
        raise LockError(f"{folder}: another patchstore {holder.get('command', 'process')} is writing here "
                        f"({describe_holder(holder)}; lock file {path}); wait for it to finish or choose "
                        f"another folder") from None
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record, sort_keys=True) + "\n").encode(), 0)
        yield stale
    finally:
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def takeover_note(stale: dict) -> list[str]:
    """What to tell the user when ``folder_lock`` took over the lock of a killed writer."""
    if not stale:
        return []
    gone = " (no longer running)" if not pid_alive(stale.get("pid")) else ""
    return [f"took over the lock of an interrupted {stale.get('command', 'build')}: {describe_holder(stale)}{gone}"]
