"""Benchmark shards shared between machines: training from a URL, and the build on Dask.

    python tools/bench_shared.py [--cases 4] [--size 96] [--slices 12] [--build-size 128]
                                 [--build-slices 48] [--repeats 2]

Prints times and ratios measured in this one run (no asserts but byte equality of the builds); each
case runs ``--repeats`` times, interleaved with the others, and the shortest time is reported (on a
shared machine, another job's load then falls on all cases alike):
  (a) phantoms (``--cases`` of ``--build-size`` x ``--build-slices``) built in this process (one
      worker, after a warm-up build, so none of its start-up), with ``--workers 2`` and with
      ``--dask local:2`` (both starting their worker processes, as a user of the command sees it),
      and on an already running LocalCluster of 2 processes (the build alone); the folders must be
      byte-identical.
  (b) one training epoch (``train run --epochs 1``, CPU) from the local shard folder, from its URL
      with a cold cache (download + SHA-256 of every file + the same epoch) and from the URL again
      with the cache warm. The URL is a ``python -m http.server``-style server on 127.0.0.1 in this
      process (no Range support: each file comes in one answer). After a one-step warm-up, so
      torch's first-call costs fall on none of them.
"""

from __future__ import annotations

import argparse
import functools
import json
import http.server
import tempfile
import threading
import time
from pathlib import Path

from patchstore.build import build
from patchstore.config import BuildConfig
from patchstore.phantom.generate import write_dataset
from patchstore.store.remote import fetch
from train.config import TrainConfig
from train.loop import train


def same_bytes(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all((a / n).read_bytes() == (b / n).read_bytes()
                                                                 for n in names)


def timed(fn, *args, **kwargs) -> float:
    t = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t


def shortest(repeats: int, cases: dict) -> dict:
    """{name: the shortest of ``repeats`` times of cases[name](k)}, the cases interleaved."""
    times = {name: [] for name in cases}
    for k in range(repeats):
        for name, run in cases.items():
            times[name].append(timed(run, k))
    return {name: min(t) for name, t in times.items()}


def bench_build(data: Path, tmp: Path, repeats: int) -> None:
    from distributed import Client, LocalCluster
    cfg = BuildConfig()
    build(data, tmp / "warmup", cfg, quiet=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.run(lambda: __import__("patchstore.build"))  # the workers' imports, as a running cluster has them
        t = shortest(repeats, {
            "workers1": lambda k: build(data, tmp / f"workers1-{k}", cfg, quiet=True),
            "workers2": lambda k: build(data, tmp / f"workers2-{k}", cfg, workers=2, quiet=True),
            "dask_local2": lambda k: build(data, tmp / f"dask_local2-{k}", cfg, quiet=True, cluster="local:2"),
            "dask_running": lambda k: build(data, tmp / f"dask_running-{k}", cfg, quiet=True,
                                            cluster=cluster.scheduler_address)})
    t_one, t_workers, t_local2, t_running = t["workers1"], t["workers2"], t["dask_local2"], t["dask_running"]
    equal = all(same_bytes(tmp / "warmup", tmp / f"{name}-{k}") for name in t for k in range(repeats))
    n_patches = sum(e["patches"] for e in json.loads((tmp / "warmup" / "manifest.json").read_text())["shards"])
    print(f"(a) build of {len(list((data / 'imagesTr').iterdir()))} phantoms ({n_patches:,} patches), "
          f"byte-identical: {equal}")
    print(f"    one process (warm)               {t_one:6.2f} s")
    print(f"    --workers 2                      {t_workers:6.2f} s")
    print(f"    --dask local:2 (with start-up)   {t_local2:6.2f} s   {t_local2 / t_workers:.2f}x --workers 2")
    print(f"    --dask on a running cluster (2)  {t_running:6.2f} s   {t_running / t_workers:.2f}x --workers 2")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def bench_train(shards: Path, tmp: Path, repeats: int) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(shards)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    cfg = TrainConfig(epochs=1, init="kaiming", device="cpu", quiet=True)
    train(shards, tmp / "warmup", TrainConfig(epochs=1, max_steps=1, device="cpu", quiet=True))
    t = shortest(repeats, {
        "local": lambda k: train(shards, tmp / f"local-{k}", cfg),
        "cold": lambda k: train(url, tmp / f"cold-{k}", cfg, cache=tmp / f"cache-{k}"),
        "warm": lambda k: train(url, tmp / f"warm-{k}", cfg, cache=tmp / f"cache-{k}"),
        "fetch": lambda k: fetch(url, tmp / f"cache-fetch-{k}")})
    t_local, t_cold, t_warm, t_fetch = t["local"], t["cold"], t["warm"], t["fetch"]
    server.shutdown()
    mb = sum(p.stat().st_size for p in shards.glob("*.h5")) / 1e6
    print(f"(b) one training epoch (CPU) on {mb:.1f} MB of shards")
    print(f"    local folder                     {t_local:6.2f} s")
    print(f"    URL, cold cache                  {t_cold:6.2f} s   {t_cold / t_local:.2f}x local "
          f"(fetch alone: {t_fetch:.2f} s, {mb / t_fetch:.0f} MB/s)")
    print(f"    URL, warm cache                  {t_warm:6.2f} s   {t_warm / t_local:.2f}x local")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--build-size", type=int, default=128)
    parser.add_argument("--build-slices", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_dataset(tmp / "build-data", cases=args.cases, seed=0, size=args.build_size, slices=args.build_slices)
        bench_build(tmp / "build-data", tmp / "build", args.repeats)
        write_dataset(tmp / "data", cases=args.cases, seed=0, size=args.size, slices=args.slices)
        build(tmp / "data", tmp / "shards", BuildConfig(), quiet=True)
        bench_train(tmp / "shards", tmp / "train", args.repeats)


if __name__ == "__main__":
    main()
