"""Training throughput: our device-resident loop vs the bare model step vs a DataLoader over HDF5.

    python tools/bench_train.py                       # makes 20k random patches in a temp folder
    python tools/bench_train.py --shards shards/ --steps 50
    python tools/bench_train.py --device cuda --shards shards/            # batches 128, 512, 2048
    torchrun --standalone --nproc-per-node 8 tools/bench_train.py --shards shards/   # 1 vs N GPUs: run
                                                      # with --nproc-per-node 1 and N, compare "ours"

Every number is samples/s of full training steps (forward, backward, SGD step), each timing
between two device synchronisations (``sync``: CUDA runs asynchronously):
  floor   the model step on one batch already in memory (the compute floor)
  ours    train.loop.train_epoch: gather by index on the device, uint8 -> float, step
  h5 DL   torch DataLoader over a Dataset that reads one patch at a time with h5py
then the other memory layout and the options that make the floor faster: torch.compile, bf16 autocast and TF32
(GPU only), each also through our loop where it is a `train run` option.
Each measurement is repeated (``--repeats``, interleaved) and the best kept: other processes on a
shared machine only ever slow a run down.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from train.loop import new_model, setup_distributed, train_epoch
from train.model import algorithms, fp32_precision, pick_device


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


def sync(device: torch.device) -> None:
    """Wait for the device's queued work: CUDA kernels run asynchronously, so a timer read
    without this measures only the launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)


def step(model, opt, x, y, amp: bool = False) -> None:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def floor(model, batch: int, steps: int, device: torch.device, channels_last: bool = False,
          amp: bool = False) -> float:
    """Samples/s of the bare training step on a batch already in (device) memory."""
    x = torch.rand(batch, 1, 32, 32, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    y = torch.randint(0, 2, (batch,), device=device)
    opt = sgd(model)
    model.train()
    step(model, opt, x, y, amp)  # warm-up
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step(model, opt, x, y, amp)
    sync(device)
    return batch * steps / (time.perf_counter() - t)


def ours(ps, cfg: TrainConfig, epoch: int, rank: int = 0, world: int = 1) -> float:
    """Samples/s (all processes together) of train.loop.train_epoch limited to cfg.max_steps
    batches; under torchrun each process takes its share of every batch, as `train run` does."""
    device = ps.x.device
    model = new_model(cfg, device)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    net = torch.compile(net) if cfg.compile else net
    opt = sgd(model)
    idx = torch.arange(len(ps), device=device)  # the index lives with the patches
    train_epoch(net, opt, ps, idx, dataclasses.replace(cfg, max_steps=1), 99, rank, world, False)
    sync(device)
    t = time.perf_counter()
    _, _, n = train_epoch(net, opt, ps, idx, cfg, epoch, rank, world, False)
    sync(device)
    return n / (time.perf_counter() - t)


def dataloader(folder: Path, batch: int, steps: int, workers: int, device: torch.device) -> float:
    """Samples/s of a DataLoader (shuffled, per-sample HDF5 reads) feeding the same training step."""
    cuda = device.type == "cuda"
    loader = DataLoader(H5Patches(folder), batch_size=batch, shuffle=True, num_workers=workers, pin_memory=cuda,
                        generator=torch.Generator().manual_seed(0), persistent_workers=workers > 0)
    model = new_model(TrainConfig(), device)
    opt = sgd(model)
    it = iter(loader)
    to_dev = lambda b: [t.to(device, non_blocking=cuda) for t in b]  # noqa: E731
    step(model, opt, *to_dev(next(it)))  # warm-up, starts the workers
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step(model, opt, *to_dev(next(it)))
    sync(device)
    return batch * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=Path, help="shard folder (default: random shards in a temp folder)")
    ap.add_argument("--patches", type=int, default=20000, help="random patches to make without --shards")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: the GPU when there is one")
    ap.add_argument("--batch-sizes", type=lambda v: [int(b) for b in v.split(",")], default=None,
                    help="comma-separated global batch sizes (default: 128; on CUDA 128,512,2048)")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    ap.add_argument("--loader-steps", type=int, default=8, help="timed steps of the (slow) HDF5 DataLoader")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to start)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.shards
        if folder is None:
            folder = Path(tmp)
            if int(os.environ.get("RANK", 0)) == 0:
                t = time.perf_counter()
                make_random_shards(folder, args.patches)
                print(f"made {args.patches:,} random patches in {time.perf_counter() - t:.1f} s")
            elif "WORLD_SIZE" in os.environ:
                raise SystemExit("under torchrun, pass --shards (each process would make its own temp folder)")
        run(folder, args)


def run(folder: Path, args) -> None:
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    rank, world, joined = setup_distributed(device)
    say = print if rank == 0 else (lambda *a, **k: None)
    batches = args.batch_sizes or ([128, 512, 2048] if cuda else [128])
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    say(f"torch {torch.__version__}, python {platform.python_version()}, {device} ({where}), {world} process(es), "
        f"batches {batches}, {args.steps} steps per measurement, best of {args.repeats}, load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; fp32 without TF32 unless a row says otherwise")
    t = time.perf_counter()
    ps = load_shards(folder, device, log=lambda s: None)
    sync(device)
    say(f"load_shards: {len(ps):,} patches onto the device in {time.perf_counter() - t:.2f} s")
    with fp32_precision(device, tf32=False), algorithms(device, deterministic=False):
        for b in batches:
            cfg = TrainConfig(batch_size=b, max_steps=args.steps)
            measure_batch(ps, cfg, args, device, rank, world, say)
        if world == 1:
            for workers in (0, 2):
                sps = max(dataloader(folder, batches[0], args.loader_steps, workers, device)
                          for _ in range(max(1, args.repeats - 1)))
                say(f"{f'DataLoader h5py per-sample, {workers} wkr':34s} {sps:8.0f} samples/s (batch {batches[0]})")
            options(ps, TrainConfig(batch_size=batches[0], max_steps=args.steps), args, device, say)
    say(f"load average at the end {os.getloadavg()[0]:.1f} (other processes slow every number alike)")
    if joined:
        torch.distributed.destroy_process_group()


def measure_batch(ps, cfg: TrainConfig, args, device: torch.device, rank: int, world: int, say) -> None:
    """floor (one process, its share of the batch) and ours (all processes) at one global batch."""
    share = max(1, cfg.batch_size // world)
    best = {"floor": 0.0, "ours": 0.0}
    for r in range(args.repeats):  # interleaved, so a busy moment hits both alike
        best["floor"] = max(best["floor"], floor(new_model(cfg, device), share, args.steps, device, cfg.channels_last))
        best["ours"] = max(best["ours"], ours(ps, cfg, r, rank, world))
    per_process = best["ours"] / world
    say(f"batch {cfg.batch_size} ({share} per process): bare step {best['floor']:8.0f} samples/s per process; "
        f"ours {best['ours']:8.0f} samples/s over {world} process(es) ({per_process:.0f} each, "
        f"{100 * (best['floor'] / per_process - 1):+.1f}% overhead vs the bare step)")


def options(ps, cfg: TrainConfig, args, device: torch.device, say) -> None:
    """The bare step and our loop with each option that can make them faster."""
    b, steps, cuda = cfg.batch_size, args.steps, device.type == "cuda"
    base = max(floor(new_model(cfg, device), b, steps, device, cfg.channels_last) for _ in range(args.repeats))
    say(f"options at batch {b} (bare step {base:.0f} samples/s, {'channels_last' if cfg.channels_last else 'contiguous'}"
        f" layout: the default):")

    def row(name: str, sps: float, extra: str = "") -> None:
        say(f"  {name:32s} {sps:8.0f} samples/s   {100 * (sps / base - 1):+.1f}% vs bare step{extra}")

    other = not cfg.channels_last
    row("channels_last" if other else "contiguous (--no-channels-last)",
        max(floor(new_model(dataclasses.replace(cfg, channels_last=other), device), b, steps, device, other)
            for _ in range(args.repeats)))
    if cuda:
        row("bf16 autocast", max(floor(new_model(cfg, device), b, steps, device, cfg.channels_last, amp=True)
                                 for _ in range(args.repeats)))
        row("ours, amp bf16", max(ours(ps, dataclasses.replace(cfg, amp="bf16"), r) for r in range(args.repeats)))
        with fp32_precision(device, tf32=True):
            row("TF32", max(floor(new_model(cfg, device), b, steps, device, cfg.channels_last)
                            for _ in range(args.repeats)))
    else:
        say(f"  {'bf16 autocast, TF32':32s}      n/a on CPU (GPU only: train run --amp bf16 / tf32)")
    if args.no_compile:
        say(f"  {'torch.compile':32s}      n/a (--no-compile)")
        return
    t = time.perf_counter()
    compiled = torch.compile(new_model(cfg, device))
    floor(compiled, b, 1, device, cfg.channels_last)  # compiles forward and backward
    start = time.perf_counter() - t
    row("torch.compile", max(floor(compiled, b, steps, device, cfg.channels_last) for _ in range(args.repeats)),
        f" (compiling took {start:.0f} s)")
    row("ours, compile", max(ours(ps, dataclasses.replace(cfg, compile=True), r) for r in range(args.repeats)))


if __name__ == "__main__":
    main()
