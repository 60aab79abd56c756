"""The training loop: shards on the device -> SGD epochs -> run folder with checkpoints and figures.

    load_shards -> split_patches -> per epoch e:
        permutation of the training indices from (seed, e)      (same on every rank)
        dropout RNG reseeded from (seed, e, rank)
        full batches of the permutation; rank r takes chunk r of each batch (DDP averages grads)
        validation: rank r takes chunk r of the validation indices; sums all-reduced
        rank 0: metrics.jsonl line, best.pt (lowest validation loss), last.pt
    rank 0: curves.png, confusion.json/png of best.pt on the validation set

Every random draw of an epoch is a function of (seed, epoch, rank), so a run resumed from
last.pt continues exactly as if it had never stopped (with the same number of ranks).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from patchstore.files import ensure_writable, is_url, write_json_atomic
from patchstore.store.shardset import ShardSet
from train.checkpoint import load_checkpoint, rng_state
from train.config import TrainConfig
from train.data import PatchSet, batch_input, check_classes, class_counts, load_sets, load_shards, split_patches
from train.metrics import metrics_from_matrix
from train.model import OPConvNet, algorithms, fp32_precision, init_paper, pick_device
from train.plots import plot_confusion, plot_curves
from train.rundir import check_new_run_dir, read_metrics, reopen_run_dir, resume_state, save_epoch, start_run_dir

INIT, PERMUTATION, DROPOUT = 1, 2, 3  # independent random streams derived from the seed
METRICS = ("PRE", "SPE", "ACC", "F-score", "SEN")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, stream, epoch, rank): independent streams, no collisions."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, PERMUTATION, epoch))


def rng_record(seed: int, epoch: int, device: torch.device | str = "cpu") -> dict:
    """The RNG state a checkpoint after ``epoch`` epochs records (CPU uint8 tensors): informational,
    since resume re-derives both from (seed, epoch, rank), which is what makes it exact."""
    return {**rng_state(device), "permutation": epoch_generator(seed, epoch).get_state()}


def setup_distributed(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, joined) from torchrun's RANK / WORLD_SIZE; joined: this call started the
    process group (NCCL on GPUs, gloo on CPU), so the caller ends it."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, False
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    joined = world > 1 and not dist.is_initialized()
    if joined:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, joined


def batch_note(batch_size: int, world: int) -> str | None:
    """What the global batch leaves each of ``world`` processes (DDP splits every batch); None for
    one process. Refuses a batch smaller than the number of processes (some would get nothing)."""
    if world == 1:
        return None
    if batch_size < world:
        raise ValueError(f"batch_size {batch_size} is smaller than the {world} processes; expected at least one "
                         f"patch per process")
    per = f"{batch_size // world}" + (f"-{batch_size // world + 1}" if batch_size % world else "")
    note = f"batch {batch_size} over {world} processes: {per} patches per process and step"
    if batch_size // world < 64:  # OP-convNet's step on a few dozen patches leaves a GPU mostly idle
        note += "; a GPU is mostly idle on so few: a larger batch_size (with a proportionally larger lr) uses it better"
    return note


def new_model(cfg: TrainConfig, device: torch.device) -> OPConvNet:
    """OP-convNet initialised from the seed: N(0, init_std) (paper) or Kaiming normal, zero biases."""
    model = OPConvNet(cfg.dropout)
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, INIT))
    if cfg.init == "paper":
        init_paper(model, cfg.init_std, generator=g)
    else:
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
                torch.nn.init.zeros_(m.bias)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def prepare(x: torch.Tensor, idx: torch.Tensor, channels_last: bool) -> torch.Tensor:
    b = batch_input(x, idx)
    return b.contiguous(memory_format=torch.channels_last) if channels_last else b


def all_reduce_(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(t)
    return t


def train_epoch(net, optimizer, ps: PatchSet, train_idx: torch.Tensor, cfg: TrainConfig, epoch: int,
                rank: int, world: int, show: bool) -> tuple[float, float, int]:
    """One epoch of SGD -> (mean loss, accuracy, samples), over all ranks.

    Full batches only (the paper's MATLAB trainNetwork drops the incomplete last mini-batch).
    """
    perm = train_idx[torch.randperm(len(train_idx), generator=epoch_generator(cfg.seed, epoch)).to(train_idx.device)]
    b = cfg.batch_size
    steps = max(1, len(perm) // b)
    steps = min(steps, cfg.max_steps) if cfg.max_steps else steps
    torch.manual_seed(derive_seed(cfg.seed, DROPOUT, epoch, rank))
    sums = torch.zeros(2, dtype=torch.float64, device=train_idx.device)  # loss sum, correct (this rank)
    seen = 0  # samples of this rank
    amp = torch.autocast(ps.x.device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16")
    net.train()
    bar = tqdm(total=steps * min(b, len(perm)), unit="sample", unit_scale=True, leave=False, disable=not show,
               desc=f"epoch {epoch + 1}/{cfg.epochs}", dynamic_ncols=True)
    for step in range(steps):
        batch = perm[step * b:(step + 1) * b]
        mine = batch.tensor_split(world)[rank]
        y = ps.y[mine]
        with amp:
            logits = net(prepare(ps.x, mine, cfg.channels_last)).float()
        loss_sum = F.cross_entropy(logits, y, reduction="sum")
        # DDP averages gradients over ranks: scaling by world/len(batch) makes that the batch mean
        optimizer.zero_grad(set_to_none=True)
        (loss_sum * (world / len(batch))).backward()
        optimizer.step()
        with torch.no_grad():
            sums += torch.stack([loss_sum.double(), (logits.argmax(1) == y).sum().double()])
        seen += len(mine)
        bar.update(len(batch))
        if show and (step % 10 == 9 or step == steps - 1):  # .item() waits for the GPU: not every step
            bar.set_postfix(loss=f"{sums[0].item() / max(seen, 1):.4f}")
    bar.close()
    totals = torch.cat([sums, torch.tensor([float(seen)], dtype=torch.float64, device=sums.device)])
    loss, correct, n = all_reduce_(totals, world).tolist()
    return loss / n, correct / n, int(n)


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, batch_size: int,
             channels_last: bool = False, amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy (float64 scalar) and (2, 2) int64 confusion counts (rows true) on ``idx``.

    Everything accumulates on the device: no host read per batch (``bincount`` would wait for the
    GPU to size its output), and no atomics, so the counts are deterministic.
    """
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    cm = torch.zeros(4, dtype=torch.int64, device=x.device)
    cells = torch.arange(4, device=x.device)  # 2 * true + predicted
    for chunk in idx.split(batch_size):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(prepare(x, chunk, channels_last)).float()
        loss += F.cross_entropy(logits, y[chunk], reduction="sum").double()
        cm += ((2 * y[chunk] + logits.argmax(1)).unsqueeze(1) == cells).sum(0)
    return loss, cm.view(2, 2)


def summarize(loss_sum: float, cm: np.ndarray) -> dict:
    """Validation loss, accuracy and the paper's patch metrics from summed loss and confusion counts."""
    n = int(cm.sum())
    return {"val_loss": loss_sum / max(n, 1), "val_acc": float(np.trace(cm)) / max(n, 1), **metrics_from_matrix(cm)}


def validation_indices(val_idx: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """The validation patches an epoch is scored on: all, or in smoke runs (max_steps) as many
    batches as training steps."""
    return val_idx[:cfg.max_steps * cfg.eval_batch_size] if cfg.max_steps else val_idx


def validate(model, ps: PatchSet, val_idx: torch.Tensor, cfg: TrainConfig, rank: int, world: int) -> dict:
    loss, cm = evaluate(model, ps.x, ps.y, validation_indices(val_idx, cfg).tensor_split(world)[rank],
                        cfg.eval_batch_size, cfg.channels_last, cfg.amp == "bf16")
    sums = all_reduce_(torch.cat([loss.view(1), cm.view(4).double()]), world).cpu()
    return summarize(float(sums[0]), sums[1:].long().numpy().reshape(2, 2))


def finish_run_dir(run_dir: Path, cfg: TrainConfig, ps: PatchSet, val_idx: torch.Tensor) -> dict | None:
    """curves.png from metrics.jsonl; confusion.json/png of best.pt on the validation set, evaluated
    as metrics.jsonl's validation was (same patches, memory format and autocast), so they agree."""
    plot_curves(read_metrics(run_dir), run_dir / "curves.png")
    if not (run_dir / "best.pt").exists():  # every validation loss was NaN
        print(f"warning: {run_dir}: no epoch had a finite validation loss; no best.pt", file=sys.stderr)
        return None
    best = load_checkpoint(run_dir / "best.pt")
    model = OPConvNet(cfg.dropout)
    model.load_state_dict(best["model"])
    model = model.to(ps.x.device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    loss, cm = evaluate(model, ps.x, ps.y, validation_indices(val_idx, cfg), cfg.eval_batch_size, cfg.channels_last,
                        cfg.amp == "bf16")
    cm = cm.cpu().numpy()
    result = {"epoch": best["epoch"], "matrix": cm.tolist(), "rows": "true class", "cols": "predicted class",
              "classes": ["background", "vertebra"], **summarize(float(loss), cm)}
    write_json_atomic(run_dir / "confusion.json", result)
    plot_confusion(cm, run_dir / "confusion.png", f"validation, epoch {best['epoch']}")
    return result


def train(shards: str | os.PathLike | list, run_dir: str | os.PathLike, cfg: TrainConfig, resume: bool = False,
          cache: str | os.PathLike | None = None) -> dict:
    """Train OP-convNet on one or several shard folders (or their URLs, fetched into ``cache``) into
    ``run_dir``; under torchrun, with DDP on every rank.

    Returns {"run_dir", "epoch", "best_val_loss", "last": last metrics row, "model": the trained module}.
    """
    shards = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    shards = [s if is_url(s) else Path(s) for s in shards]
    run_dir = Path(run_dir)
    device = pick_device(cfg.device)
    if cfg.amp == "bf16" and device.type != "cuda":
        raise ValueError(f"amp 'bf16' is for GPUs only; the device is {device}")
    with fp32_precision(device, cfg.tf32), algorithms(device, cfg.deterministic):
        return _train(shards, run_dir, cfg, device, resume, cache)


def _train(shards: list, run_dir: Path, cfg: TrainConfig, device: torch.device, resume: bool, cache) -> dict:
    """``train`` under its precision and algorithm settings."""
    if not resume:  # checked on every rank, so none waits for the others
        check_new_run_dir(run_dir)
    ensure_writable(run_dir)  # before the shards load: a read-only folder fails at once
    rank, world, joined = setup_distributed(device)
    main, show = rank == 0, rank == 0 and not cfg.quiet
    note = batch_note(cfg.batch_size, world)
    warn = (lambda s: print(f"warning: {s}", file=sys.stderr)) if main else (lambda s: None)
    ps = load_shards(shards, device, cfg.verify, log=print if show else lambda s: None, warn=warn, cache=cache,
                     progress=show)
    split = split_patches(ps, cfg.split_by, cfg.val_fraction, cfg.seed)
    for message in check_classes(ps, split, shards):
        warn(message)
    for message in (split["note"], note):
        if main and message:
            print(f"note: {message}", file=sys.stderr)
    train_idx, val_idx = (torch.from_numpy(split[k]).to(device) for k in ("train", "val"))
    model = new_model(cfg, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    state = {"epoch": 0, "best_val_loss": math.inf}
    if resume:
        state = resume_state(run_dir, cfg, ps, model, optimizer, scheduler, split)
        if main:
            reopen_run_dir(run_dir, state["epoch"], cfg)
    elif main:
        start_run_dir(run_dir, shards, cfg, ps, split, world, device)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    net = torch.compile(net) if cfg.compile else net
    if show:
        print(f"training on {len(train_idx):,} patches, validating on {len(val_idx):,} ({split['by']} split), "
              f"{world} process(es) on {device}, epochs {state['epoch'] + 1}..{cfg.epochs}")
    row = {}
    for epoch in range(state["epoch"], cfg.epochs):
        t0, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
        train_loss, train_acc, n = train_epoch(net, optimizer, ps, train_idx, cfg, epoch, rank, world, show)
        t_train = time.perf_counter() - t0
        scheduler.step()
        row = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc, "train_samples": n,
               **validate(model, ps, val_idx, cfg, rank, world), "lr": lr,
               "seconds": time.perf_counter() - t0, "samples_per_s": n / t_train}
        if main:
            if show:
                print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {train_loss:.4f} acc {train_acc:.4f} | val loss "
                      f"{row['val_loss']:.4f} acc {row['val_acc']:.4f} F {row['F-score']:.4f} | {row['samples_per_s']:.0f} "
                      f"samples/s")
            state = save_epoch(run_dir, row, state, model, optimizer, scheduler, cfg, ps,
                               rng_record(cfg.seed, row["epoch"], device))
    result = {"run_dir": run_dir, "epoch": cfg.epochs, "best_val_loss": state["best_val_loss"], "last": row,
              "model": model}
    if main:
        result["confusion"] = finish_run_dir(run_dir, cfg, ps, val_idx)
    if world > 1:
        dist.barrier()  # rank 0 has written the run folder
    if joined:
        dist.destroy_process_group()
    return result


def evaluate_checkpoint(checkpoint: str | os.PathLike, shards: str | os.PathLike, device: str = "auto",
                        batch_size: int = 1024, full_verify: bool = False, log=print,
                        cache: str | os.PathLike | None = None) -> dict:
    """The paper's patch metrics (Table 2: PRE, SPE, ACC, F-score; and SEN), the mean loss and the
    confusion matrix (rows true, columns predicted) of a checkpoint on every patch of a shard folder
    (or its URL, fetched into ``cache``)."""
    ckpt = load_checkpoint(checkpoint)
    shard_set = ShardSet.open(shards, full_verify, cache, progress=True)
    other = shard_set.check_preprocessing(ckpt["build"], f"checkpoint {checkpoint}")
    if other:
        log(f"note: the shards differ from the training shards only in parameters that are not preprocessing {other}")
    dev = pick_device(device)
    ps = load_sets([shard_set], dev, log, warn=lambda s: log(f"warning: {s}"))
    counts = class_counts(ps.y.cpu().numpy())
    if min(counts) == 0:
        log(f"warning: {shards}: every patch is {'background' if counts[1] == 0 else 'vertebra'} ({counts}): the "
            f"metrics of the other class are 0/0, reported as 1.0")
    model = OPConvNet().to(dev)  # evaluation: dropout is off, so the config is not needed
    model.load_state_dict(ckpt["model"])
    loss, cm = evaluate(model, ps.x, ps.y, torch.arange(len(ps), device=dev), batch_size)
    cm = cm.cpu().numpy()
    m = summarize(float(loss), cm)
    return {"checkpoint": str(checkpoint), "shards": str(shards), "patches": len(ps),
            "counts": [int(c) for c in cm.sum(axis=1)], "loss": m.pop("val_loss"), **{k: m[k] for k in METRICS},
            "confusion": cm.tolist(), "sampling_differences": other}
