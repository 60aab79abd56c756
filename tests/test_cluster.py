"""Tests for patchstore.cluster: `patchstore build --dask` on a real Dask LocalCluster of processes."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from patchstore.build import build
from patchstore.cli import main
from patchstore.cluster import kept_environment, parse_address
from patchstore.config import BuildConfig

NO_DASK = "dask.distributed is not installed (pip install 'patchstore[dask]')"


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` (hidden ones too) and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def local_build(phantom_dataset, tmp_path_factory) -> Path:
    """The phantoms built here in one process: what every cluster build must equal."""
    out = tmp_path_factory.mktemp("local") / "shards"
    build(phantom_dataset, out, BuildConfig(), quiet=True)
    return out


def test_address_forms():
    """local:N is a local cluster of N processes; anything else a scheduler address."""
    assert parse_address("local:2") == (None, 2)
    assert parse_address("tcp://10.0.0.5:8786") == ("tcp://10.0.0.5:8786", None)
    with pytest.raises(ValueError, match=r"cluster address 'local:0'; expected local:N with N >= 1 worker"):
        parse_address("local:0")


def test_workers_and_dask_together_are_refused(tmp_path):
    """--workers 2 with --dask is a usage error naming both, before anything is read."""
    res = CliRunner().invoke(main, ["build", str(tmp_path), "-o", str(tmp_path / "out"), "--workers", "2",
                                    "--dask", "local:2"])
    assert res.exit_code == 2 and "--workers 2 and --dask local:2: give one of them" in res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_dask_build_equals_the_local_build(local_build, phantom_dataset, tmp_path):
    """`patchstore build --dask local:2` writes exactly the shards and manifest of a local build."""
    pytest.importorskip("distributed", reason=NO_DASK)
    out = tmp_path / "shards"
    environ = dict(os.environ)
    res = CliRunner().invoke(main, ["build", str(phantom_dataset), "-o", str(out), "--dask", "local:2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "built 4, already complete 0" in res.output
    assert folder_bytes(out) == folder_bytes(local_build)
    assert dict(os.environ) == environ  # no OMP_NUM_THREADS=1 left for processes started later


def kill_a_busy_worker(client, timeout: float) -> str | None:
    """SIGKILL the process of a worker while the scheduler has a task running on it; its address."""
    pids = client.run(os.getpid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [worker for worker, tasks in client.processing().items() if tasks and worker in pids]
        if busy:
            os.kill(pids[busy[0]], signal.SIGKILL)
            return busy[0]
        time.sleep(0.005)
    return None


@pytest.mark.slow
def test_worker_killed_mid_build_still_ends_in_the_same_bytes(local_build, phantom_dataset, tmp_path):
    """A worker process killed with SIGKILL while it builds a volume: the scheduler runs the task
    again elsewhere and the folder still equals the local build, no temporary file left."""
    distributed = pytest.importorskip("distributed", reason=NO_DASK)
    out = tmp_path / "shards"
    done: dict = {}

    def run_build() -> None:
        try:
            done["result"] = build(phantom_dataset, out, BuildConfig(), quiet=True, cluster=address)
        except Exception as e:  # handed to the test's thread
            done["error"] = e

    with kept_environment(), distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                      dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        address = cluster.scheduler_address
        thread = threading.Thread(target=run_build)
        thread.start()
        killed = kill_a_busy_worker(client, timeout=60)
        thread.join(timeout=300)
        rerun = [key for key, start, finish, *_ in cluster.scheduler.transition_log
                 if str(key).startswith("volume_task") and (start, finish) == ("processing", "released")]
    assert killed is not None and rerun and "error" not in done, (killed, rerun, done)
    assert sorted(done["result"].built) == ["phantom_000", "phantom_001", "phantom_002", "phantom_003"]
    assert folder_bytes(out) == folder_bytes(local_build)
