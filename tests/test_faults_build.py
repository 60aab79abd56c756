"""Fault class 5: a full disk, a killed build, two builds in one folder, a read-only destination.

Each test injects the fault for real where the machine allows it (a small tmpfs, a read-only
tmpfs, SIGKILL) and asserts the clear message and that nothing was lost: earlier shards intact,
no temporary files, no worker process left, another build's files untouched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from infer.cli import main as infer_main
from patchstore.build import BuildError, build
from patchstore.cli import main
from patchstore.config import BuildConfig
from patchstore.lock import LOCK_NAME, LockError, folder_lock
from patchstore.store.verify import verify
from tests.builders import write_case, write_checkpoint
from train.cli import main as train_main

CFG = BuildConfig.paper(angles=(), translations=0)
CLI = [sys.executable, "-c", "from patchstore.cli import main; main()"]


def _noise_dataset(root: Path, cases: int = 3) -> Path:
    """Cases whose shards hardly compress (noise): each --no-rus shard is about 300 kB."""
    rng = np.random.default_rng(0)
    for i in range(cases):
        img = rng.normal(300, 400, (6, 96, 96)).astype(np.int16)
        mask = np.zeros(img.shape, np.uint8)
        mask[:, 20:70, 20:70] = 1
        write_case(root, f"c{i}", img, mask)
    return root


def _assert_complete_shards_only(folder: Path) -> list[str]:
    """Every file is a complete, readable shard (no temporary files); returns their names."""
    names = sorted(p.name for p in folder.iterdir())
    assert not [n for n in names if n.startswith(".") and n != LOCK_NAME], names
    for name in names:
        with h5py.File(folder / name, "r") as f:  # every chunk passes its fletcher32 check
            f["patches"][:], f["labels"][:], f["origin"][:]
    return names


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_full_disk_gives_one_clear_line_and_keeps_earlier_shards(tmp_path, small_disk, workers):
    """On a 2 MiB tmpfs with room for one shard: exit 1 with 'disk full' (no segfault, no traceback),
    no temporary file, every shard left complete; with space freed, the same command finishes."""
    data = _noise_dataset(tmp_path / "data")
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (2 * 2**20 - 450 * 2**10))  # about 450 kB left
    out = small_disk / "shards"
    args = [*CLI, "build", str(data), "-o", str(out), "--paper", "--no-rus", "--quiet", "--workers", str(workers)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "disk full" in done.stderr and "run the same command to resume" in done.stderr
    assert "Traceback" not in done.stderr and "Segmentation" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    kept = _assert_complete_shards_only(out)
    assert "manifest.json" not in kept
    ballast.unlink()
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert verify(out) == []


_HOLD_LOCK = """
import sys, time
from patchstore.lock import folder_lock
with folder_lock(sys.argv[1], "build"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _hold_lock(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_second_build_into_a_locked_folder_is_refused(build_dataset, tmp_path):
    """A build into a folder another build holds is refused naming pid, host and start time, and
    touches nothing: the holder's temporary file stays."""
    out = tmp_path / "out"
    out.mkdir()
    holder = _hold_lock(out)
    try:
        theirs = out / ".case0.h5.abcd1234.tmp"  # the live build's shard being written
        theirs.write_bytes(b"half a shard")
        with pytest.raises(LockError, match=rf"another patchstore build is writing here \(pid {holder.pid} on host "
                                            rf"{socket.gethostname()}, started 20\d\d-.*choose another folder"):
            build(build_dataset, out, CFG, quiet=True)
        assert theirs.read_bytes() == b"half a shard"
        assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, theirs.name])
        res = CliRunner().invoke(main, ["build", str(build_dataset), "-o", str(out), "--quiet"])
        assert res.exit_code == 1 and f"pid {holder.pid}" in res.output and "Traceback" not in res.output
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_killed_build_is_taken_over(build_dataset, tmp_path):
    """The lock file of a build killed with SIGKILL does not block the next build, which says whose it was."""
    out = tmp_path / "out"
    holder = _hold_lock(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / LOCK_NAME).exists()
    result = build(build_dataset, out, CFG, quiet=True)
    assert result.notes == [f"took over the lock of an interrupted build: pid {holder.pid} on host "
                            f"{socket.gethostname()}, started {_started(result.notes[0])} (no longer running)"]
    assert not (out / LOCK_NAME).exists() and verify(out) == []


def _started(note: str) -> str:
    return note.split("started ")[1].split(" (")[0]


def test_lock_is_released_and_reusable_in_process(tmp_path):
    """The lock is held only inside the block; a nested attempt in the same process is refused too."""
    with folder_lock(tmp_path, "merge"):
        with pytest.raises(LockError, match=rf"another patchstore merge is writing here \(pid {os.getpid()}"):
            with folder_lock(tmp_path, "build"):
                pass
    with folder_lock(tmp_path, "build") as stale:
        assert stale == {}
    assert list(tmp_path.iterdir()) == []


# The workers stall in the middle of their volumes, so the kill lands while they run.
_STALLING_BUILD = """
import os, sys, time
from pathlib import Path
from patchstore import build as b
from patchstore.config import BuildConfig

def stalling(*args, **kwargs):
    (Path(os.environ["PIDS"]) / str(os.getpid())).touch()
    time.sleep(120)

b.build_job = stalling  # module level: the spawned workers import this file and stall too

if __name__ == "__main__":
    b.build(sys.argv[1], sys.argv[2], BuildConfig.paper(angles=(), translations=0), workers=2, quiet=True)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@pytest.mark.slow
def test_sigkill_of_a_two_worker_build_leaves_no_worker(build_dataset, tmp_path):
    """SIGKILL of a --workers 2 build ends its workers too (PR_SET_PDEATHSIG), and frees the folder."""
    script, pids, out = tmp_path / "stalling_build.py", tmp_path / "pids", tmp_path / "out"
    script.write_text(_STALLING_BUILD)
    pids.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(build_dataset), str(out)],
                            env={**os.environ, "PIDS": str(pids)})
    workers: set[int] = set()
    try:
        assert _wait(lambda: len(list(pids.iterdir())) == 2, 60), "the workers did not start"
        workers = {int(p.name) for p in pids.iterdir()}
        assert all(_alive(pid) for pid in workers)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _wait(lambda: not any(_alive(pid) for pid in workers), 10), "workers outlived the killed build"
    finally:  # a failing test leaves nothing running either
        for pid in [proc.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    result = build(build_dataset, out, CFG, quiet=True)  # the folder is free and the build completes
    assert "no longer running" in result.notes[0] and verify(out) == []


def test_readonly_destination_is_one_clear_line(build_dataset, tmp_path, readonly_dir):
    """build, train and infer into a read-only file system fail at once with one line naming the folder."""
    res = CliRunner().invoke(main, ["build", str(build_dataset), "-o", str(readonly_dir / "shards"), "--quiet"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    assert f"{readonly_dir}/shards: can't create files here (read-only file system)" in res.output, res.output
    with pytest.raises(BuildError, match="read-only file system"):
        build(build_dataset, readonly_dir / "shards", CFG, quiet=True)

    shards = tmp_path / "shards"
    build(build_dataset, shards, CFG, quiet=True)
    res = CliRunner().invoke(train_main, ["run", str(shards), "-o", str(readonly_dir / "run"), "--quiet"])
    assert res.exit_code == 1 and "read-only file system" in res.output and "loading" not in res.output

    model = write_checkpoint(tmp_path / "m.pt")
    ct = build_dataset / "imagesTr" / "case0_0000.nii.gz"
    res = CliRunner().invoke(infer_main, ["volume", str(ct), "-m", str(model), "-o", str(readonly_dir / "p.nii.gz")])
    assert res.exit_code == 1 and f"{readonly_dir}: can't create files here (read-only" in res.output


def test_infer_output_of_unknown_type_fails_before_inference(build_dataset, tmp_path, monkeypatch):
    """`infer volume -o x.txt` is refused before the model is loaded or any slice classified."""
    import infer.predict

    def never(*a, **k):
        raise AssertionError("inference ran")

    monkeypatch.setattr(infer.predict, "segment", never)
    monkeypatch.setattr(infer.predict, "load_model", never)
    ct = build_dataset / "imagesTr" / "case0_0000.nii.gz"
    res = CliRunner().invoke(infer_main, ["volume", str(ct), "-m", str(write_checkpoint(tmp_path / "m.pt")),
                                          "-o", str(tmp_path / "x.txt")])
    assert res.exit_code == 1 and "x.txt: can't write this file type; expected one of .nii" in res.output, res.output
    assert not (tmp_path / "x.txt").exists()
