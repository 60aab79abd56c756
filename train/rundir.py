"""The run folder: config.json, split.json, metrics.jsonl and the best.pt / last.pt checkpoints.

    start_run_dir    config.json (configuration, shards, versions), split.json, empty metrics.jsonl
    save_epoch       one metrics.jsonl line per epoch, best.pt (lowest validation loss), last.pt
    resume_state     last.pt -> model / optimizer / scheduler, after checking it belongs to this run
    reopen_run_dir   metrics.jsonl cut back to the checkpoint's epoch; the resume noted in config.json

curves.png and confusion.json/png are written at the end of training (``train.loop.finish_run_dir``).
A new run goes only into a folder that holds none of these files, or the files of a run stopped
before its first checkpoint: never over files ``train run`` did not write.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

import patchstore
from patchstore.files import is_url, json_text, write_json_atomic, write_text_atomic
from train.checkpoint import CheckpointError, load_checkpoint, remove_stale_temps, save_checkpoint, set_rng_state
from train.config import RESUMABLE_CHANGES, TrainConfig
from train.data import PatchSet, split_record

RUN_FILES = ("config.json", "split.json", "metrics.jsonl", "best.pt", "last.pt", "curves.png", "confusion.json",
             "confusion.png")


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse a folder holding a run (last.pt: resume it) or files of a run's names that no run wrote."""
    if (run_dir / "last.pt").exists():
        raise FileExistsError(f"{run_dir}: holds a run already (last.pt); resume it with --resume "
                              f"or choose another output folder")
    present = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not present:
        return
    try:
        ours = {"config", "versions"} <= json.loads((run_dir / "config.json").read_text(encoding="utf-8")).keys()
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:  # a run stopped before its first checkpoint has our config.json: start it again
        raise FileExistsError(f"{run_dir}: holds {', '.join(present)} not written by `train run`; refusing to "
                              f"overwrite them: choose another output folder")


def versions() -> dict:
    return {"torch": str(torch.__version__), "python": platform.python_version(), "patchstore": patchstore.__version__}


def start_run_dir(run_dir: Path, shards: list[Path | str], cfg: TrainConfig, ps: PatchSet, split: dict, world: int,
                  device: torch.device) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", {
        "config": cfg.to_dict(), "shards": [s if is_url(s) else str(Path(s).resolve()) for s in shards],
        "manifest_sha256": ps.manifest_sha256, "build": ps.build, "world_size": world, "device": str(device),
        "versions": versions()})
    write_json_atomic(run_dir / "split.json", split_record(split, ps, cfg.val_fraction, cfg.seed))
    write_json_lines(run_dir / "metrics.jsonl", [])


def resume_state(run_dir: Path, cfg: TrainConfig, ps: PatchSet, model, optimizer, scheduler,
                 split: dict | None = None) -> dict:
    """Load last.pt into model / optimizer / scheduler after checking it belongs to this run (and,
    given the ``split`` made now, that it is the one split.json records: a run started by another
    version of the split must not go on validating on other patches).

    Loaded onto the CPU whatever the training device: load_state_dict copies weights and optimizer
    state to the parameters' device, and the RNG states must stay CPU uint8 tensors (loaded onto a
    GPU, ``torch.set_rng_state`` refuses them). A field the checkpoint predates counts as its default.
    """
    ckpt = load_checkpoint(run_dir / "last.pt", map_location="cpu")
    old = {**TrainConfig().to_dict(), **ckpt["config"]}
    changed = [k for k, v in cfg.to_dict().items() if old.get(k) != v and k not in RESUMABLE_CHANGES]
    if changed:
        detail = ", ".join(f"{k}={getattr(cfg, k)!r} (the run has {old.get(k)!r})" for k in changed)
        raise CheckpointError(f"{run_dir / 'last.pt'}: can't resume with other training parameters: {detail}")
    if ckpt.get("manifest_sha256") != ps.manifest_sha256:
        raise CheckpointError(f"{run_dir / 'last.pt'}: was trained on other shards (manifest SHA-256 "
                              f"{ckpt.get('manifest_sha256')}); these have {ps.manifest_sha256}")
    recorded = run_dir / "split.json"
    if split is not None and recorded.exists():
        was = json.loads(recorded.read_text(encoding="utf-8"))
        now = json.loads(json.dumps(split_record(split, ps, cfg.val_fraction, cfg.seed)))
        for side in ("train", "val"):
            recorded_side = was.get(side) or {}
            if any(recorded_side[k] != now[side].get(k) for k in SPLIT_KEYS if k in recorded_side):
                raise CheckpointError(f"{recorded}: the {side} side was {_side(was.get(side))}; this version of "
                                      f"train splits the same shards into {_side(now[side])}: start a new run")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"], ps.x.device)  # each epoch reseeds from (seed, epoch, rank) anyway
    return {"epoch": ckpt["epoch"], "best_val_loss": ckpt["best_val_loss"]}


SPLIT_KEYS = ("patches", "volumes", "slices", "indices")  # what a side of split.json holds, compared on resume


def _side(record: dict | None) -> str:
    """One side of split.json in words: its patch count and volumes or slices."""
    if not record:
        return "not recorded"
    if record.get("volumes"):
        where = f"{len(record['volumes'])} volume(s)"
    elif isinstance(record.get("slices"), list):
        where = "slices {}..{}".format(*record["slices"])
    else:
        where = "random patches" if record.get("indices") else "the rest"
    return f"{record.get('patches')} patches, {where}"


def reopen_run_dir(run_dir: Path, epoch: int, cfg: TrainConfig) -> None:
    """Drop metrics lines of epochs after the checkpoint (written before a kill) and temporary files;
    record the (possibly longer) configuration and the resume in config.json."""
    remove_stale_temps(run_dir)
    rows = read_metrics(run_dir)
    write_json_lines(run_dir / "metrics.jsonl", [r for r in rows if r["epoch"] <= epoch])
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    config["resumed_after_epochs"] = config.get("resumed_after_epochs", []) + [epoch]
    write_json_atomic(run_dir / "config.json", {**config, "config": cfg.to_dict(), "versions": versions()})


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line] if path.exists() else []


def write_json_lines(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json_text(r) + "\n" for r in rows))


def save_epoch(run_dir: Path, row: dict, state: dict, model, optimizer, scheduler, cfg: TrainConfig,
               ps: PatchSet, rng: dict) -> dict:
    """Append the metrics line, then write best.pt (when the validation loss dropped) and last.pt.

    rng: the RNG record stored in the checkpoint (``train.loop.rng_record``).
    """
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json_text(row) + "\n")
    best = min(state["best_val_loss"], row["val_loss"])
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": row["epoch"], "best_val_loss": best, "val_loss": row["val_loss"], "config": cfg.to_dict(),
            "build": ps.build, "manifest_sha256": ps.manifest_sha256, "pixel_mm_range": list(ps.pixel_mm_range),
            "versions": versions(), "rng": rng}
    if row["val_loss"] < state["best_val_loss"]:
        save_checkpoint(run_dir / "best.pt", ckpt)
    save_checkpoint(run_dir / "last.pt", ckpt)
    return {"epoch": row["epoch"], "best_val_loss": best}
