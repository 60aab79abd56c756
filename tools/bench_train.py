"""Training throughput: our device-resident loop vs the bare model step vs a DataLoader over HDF5.

    python tools/bench_train.py                       # makes 20k random patches in a temp folder
    python tools/bench_train.py --shards shards/ --steps 50

Every number is samples/s of full training steps (forward, backward, SGD step, batch 128):
  floor   the model step on one batch already in memory (the compute floor)
  ours    train.loop.train_epoch: gather by index on the device, uint8 -> float, step
  h5 DL   torch DataLoader over a Dataset that reads one patch at a time with h5py
then options that make the floor faster: channels_last, torch.compile, bf16 autocast (GPU only).
Each measurement is repeated (``--repeats``, interleaved) and the best kept: other processes on a
shared machine only ever slow a run down.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from patchstore.config import BuildConfig
from patchstore.files import write_json_atomic
from patchstore.stages.preprocess import to_unit
from patchstore.store.manifest import MANIFEST, make_manifest, read_manifest, shard_entry
from patchstore.store.shard import ShardWriter
from train.config import TrainConfig
from train.data import load_shards
from train.loop import new_model, train_epoch


def make_random_shards(folder: Path, patches: int, per_shard: int = 5000, seed: int = 0) -> Path:
    """Random uint8 patches and labels in shards of ``per_shard`` (one volume each)."""
    cfg = BuildConfig.paper()
    rng = np.random.default_rng(seed)
    entries = []
    for s, start in enumerate(range(0, patches, per_shard)):
        n = min(per_shard, patches - start)
        labels = rng.integers(0, 2, n).astype(np.uint8)
        attrs = {"build": cfg.to_dict(), "build_key": cfg.content_key(), "case_id": f"random{s}",
                 "volume_key": f"{s + 1:064x}", "counts_before": [0, 0], "counts_after": [0, 0], "part": 0,
                 "n_parts": 1, "first_index": 0}
        path = folder / f"random{s}.h5"
        with ShardWriter(path, attrs) as w:
            w.write(rng.integers(0, 256, (n, 32, 32), dtype=np.uint8), labels, np.zeros((n, 4), np.int32))
        entries.append(shard_entry(path))
    write_json_atomic(folder / MANIFEST, make_manifest(cfg.to_dict(), cfg.content_key(), entries))
    return folder


class H5Patches(Dataset):
    """The conventional way: one h5py read per sample (files opened lazily, once per worker)."""

    def __init__(self, folder: Path) -> None:
        self.index = []
        for e in read_manifest(folder)["shards"]:
            self.index += [(str(folder / e["file"]), i) for i in range(e["patches"])]
        self.files: dict[str, h5py.File] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int):
        path, i = self.index[k]
        f = self.files.get(path) or self.files.setdefault(path, h5py.File(path, "r"))
        return torch.from_numpy(to_unit(f["patches"][i]))[None], int(f["labels"][i])


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)


def step(model, opt, x, y) -> None:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def floor(model, batch: int, steps: int, channels_last: bool = False) -> float:
    """Samples/s of the bare training step on a batch already in memory."""
    x = torch.rand(batch, 1, 32, 32)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    y = torch.randint(0, 2, (batch,))
    opt = sgd(model)
    model.train()
    step(model, opt, x, y)  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step(model, opt, x, y)
    return batch * steps / (time.perf_counter() - t)


def ours(ps, cfg: TrainConfig, epoch: int) -> float:
    """Samples/s of train.loop.train_epoch limited to cfg.max_steps batches."""
    model = new_model(cfg, ps.x.device)
    opt = sgd(model)
    idx = torch.arange(len(ps))
    train_epoch(model, opt, ps, idx, TrainConfig(batch_size=cfg.batch_size, max_steps=1), 99, 0, 1, False)
    t = time.perf_counter()
    _, _, n = train_epoch(model, opt, ps, idx, cfg, epoch, 0, 1, False)
    return n / (time.perf_counter() - t)


def dataloader(folder: Path, batch: int, steps: int, workers: int) -> float:
    """Samples/s of a DataLoader (shuffled, per-sample HDF5 reads) feeding the same training step."""
    loader = DataLoader(H5Patches(folder), batch_size=batch, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0), persistent_workers=workers > 0)
    model = new_model(TrainConfig(), torch.device("cpu"))
    opt = sgd(model)
    it = iter(loader)
    step(model, opt, *next(it))  # warm-up, starts the workers
    t = time.perf_counter()
    for _ in range(steps):
        step(model, opt, *next(it))
    return batch * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=Path, help="shard folder (default: random shards in a temp folder)")
    ap.add_argument("--patches", type=int, default=20000, help="random patches to make without --shards")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    ap.add_argument("--loader-steps", type=int, default=8, help="timed steps of the (slow) HDF5 DataLoader")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to start)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.shards
        if folder is None:
            t = time.perf_counter()
            folder = make_random_shards(Path(tmp), args.patches)
            print(f"made {args.patches:,} random patches in {time.perf_counter() - t:.1f} s")
        run(folder, args)


def run(folder: Path, args) -> None:
    b, steps = args.batch_size, args.steps
    print(f"torch {torch.__version__}, python {platform.python_version()}, {torch.get_num_threads()} threads, "
          f"batch {b}, {steps} steps per measurement, best of {args.repeats}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    t = time.perf_counter()
    ps = load_shards(folder, torch.device("cpu"), log=lambda s: None)
    print(f"load_shards: {len(ps):,} patches onto the device in {time.perf_counter() - t:.2f} s")
    cfg = TrainConfig(batch_size=b, max_steps=steps)
    model = new_model(cfg, torch.device("cpu"))
    best = {"floor": 0.0, "ours": 0.0}
    for r in range(args.repeats):  # interleaved, so a busy moment hits both alike
        best["floor"] = max(best["floor"], floor(model, b, steps))
        best["ours"] = max(best["ours"], ours(ps, cfg, r))
    overhead = 100 * (best["floor"] / best["ours"] - 1)
    print(f"{'bare model step (floor)':34s} {best['floor']:8.0f} samples/s")
    print(f"{'ours: device-resident loop':34s} {best['ours']:8.0f} samples/s   overhead vs floor {overhead:+.1f}%")
    for workers in (0, 2):
        sps = max(dataloader(folder, b, args.loader_steps, workers) for _ in range(max(1, args.repeats - 1)))
        print(f"{f'DataLoader h5py per-sample, {workers} wkr':34s} {sps:8.0f} samples/s   "
              f"ours is {best['ours'] / sps:.1f}x faster")
    print("floor with options:")
    cl = max(floor(new_model(TrainConfig(channels_last=True), torch.device("cpu")), b, steps, True)
             for _ in range(args.repeats))
    print(f"  {'channels_last':32s} {cl:8.0f} samples/s   {100 * (cl / best['floor'] - 1):+.1f}% vs floor")
    if args.no_compile:
        print(f"  {'torch.compile':32s}      n/a (--no-compile)")
    else:
        t = time.perf_counter()
        compiled = torch.compile(new_model(cfg, torch.device("cpu")))
        floor(compiled, b, 1)  # compiles forward and backward
        start = time.perf_counter() - t
        cc = max(floor(compiled, b, steps) for _ in range(args.repeats))
        print(f"  {'torch.compile':32s} {cc:8.0f} samples/s   {100 * (cc / best['floor'] - 1):+.1f}% vs floor "
              f"(compiling took {start:.0f} s)")
    print(f"  {'bf16 autocast':32s}      n/a on CPU (GPU only: train run --amp bf16)")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (other processes slow every number alike)")


if __name__ == "__main__":
    main()
