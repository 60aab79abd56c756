"""`patchstore build --dask ADDRESS`: the build's volumes as tasks on a Dask distributed cluster.

    this process (the client)                              workers (processes, on any machines)
      holds OUT's lock; make_jobs hashes every volume
      one task per volume ───────────────────────────────>  volume_task -> build.build_job: skip a
                                                            complete volume, else read, build and
                                                            write its shards (atomically)
      manifest entries and warnings as tasks finish <─────  ("ok", outcome) or ("error", exception)
      then (build.py) temporary files of killed workers removed, manifest.json written

A worker that dies mid-task (killed, out of memory, its node lost) is noticed by the scheduler,
which runs the task again on another worker (up to its ``distributed.scheduler.allowed-failures``,
default 3); a task that raises an OSError (a network file system's hiccup) runs again up to
RETRIES times (``retries=``). A volume's own problem (a cut-off file, a patch larger than the slice)
is returned, not raised: running it again can't help. A volume's shards depend only on the seed,
its content and the parameters, and each is written under a temporary name and then renamed, so a
task run twice, or by two workers at once, writes the same bytes: the folder equals a local build's.

Every worker must see DATA and OUT at the same paths (a shared file system); that is checked on
the workers connected before any task runs. ``local:N`` starts a LocalCluster of N single-threaded
worker processes on this machine. dask.distributed is imported only here, only for such a build.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from patchstore.build import BuildError, Job, build_job
from patchstore.config import BuildConfig
from patchstore.io.volume import VolumeError

RETRIES = 2  # more runs of a task that raised (an OSError); a dead worker is the scheduler's to handle
CONNECT_TIMEOUT_S = 30


def parse_address(address: str) -> tuple[str | None, int | None]:
    """'local:4' -> (None, 4): a local cluster of 4 processes; 'tcp://host:8786' -> (that, None)."""
    if address.startswith("local:"):
        n = address[len("local:"):]
        if not (n.isdigit() and int(n) >= 1):
            raise ValueError(f"cluster address {address!r}; expected local:N with N >= 1 worker processes, or a "
                             f"scheduler address such as tcp://host:8786")
        return None, int(n)
    return address, None


@contextmanager
def kept_environment() -> Iterator[None]:
    """Give os.environ back as it was: starting a LocalCluster sets OMP_NUM_THREADS=1 (and MKL's,
    OpenBLAS's, MALLOC_TRIM_THRESHOLD_, PYTHONHASHSEED) in this process's environment for its
    workers, and every process started afterwards (a `train run`, torch's own pools) would inherit
    one thread."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def connect(address: str) -> Iterator:
    """A dask.distributed Client of the cluster at ``address``; on exit the client is closed (and a
    local cluster stopped, its worker processes with it)."""
    scheduler, n_local = parse_address(address)
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise BuildError("a build on a Dask cluster needs dask.distributed; expected it installed "
                         "(pip install 'patchstore[dask]')") from None
    if n_local is not None:
        with kept_environment(), \
                LocalCluster(n_workers=n_local, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as e:
        raise BuildError(f"{scheduler}: no Dask scheduler answered within {CONNECT_TIMEOUT_S} s ({e}); expected the "
                         f"address of a running scheduler") from None
    with client:
        yield client


def _missing(paths: list[str]) -> list[str]:
    """Run on each worker: which of ``paths`` it does not see."""
    return [p for p in paths if not os.path.exists(p)]


def check_shared(client, paths: list[Path]) -> None:
    """Refuse a cluster whose connected workers don't see ``paths`` where this process does."""
    seen = client.run(_missing, [str(p) for p in paths])
    for worker, missing in sorted(seen.items()):
        if missing:
            raise BuildError(f"Dask worker {worker} does not see {missing[0]}; expected the dataset and the output "
                             f"folder at the same paths on every worker (a shared file system)")


def volume_task(job: Job, out: Path, cfg: BuildConfig):
    """One volume on a worker: ("ok", build_job's outcome), or ("error", the exception) for a problem
    of the volume itself. Other errors are raised, so that dask runs the task again."""
    try:
        return "ok", build_job(job, out, cfg)
    except (VolumeError, BuildError, ValueError) as e:
        return "error", e


def run_on_cluster(address: str, jobs: list[Job], out: Path, cfg: BuildConfig) -> Iterator[tuple[Job, object]]:
    """(job, outcome) for every job as its task finishes on the cluster at ``address``: build_job's
    (status, entries, warnings), or the exception that stopped it (KilledWorker: its workers kept
    dying; an OSError after its retries; a volume's own error)."""
    from distributed import as_completed
    with connect(address) as client:
        if jobs:
            check_shared(client, [out, jobs[0].case.image, jobs[0].case.mask])
        futures = {client.submit(volume_task, job, out, cfg, retries=RETRIES, pure=False): job for job in jobs}
        try:
            for fut in as_completed(futures):
                try:
                    _, outcome = fut.result()
                except Exception as e:  # whatever stopped the task on the cluster, for the build to report
                    outcome = e
                yield futures[fut], outcome
        finally:
            client.cancel(list(futures))
