"""Checkpoints: a plain dict of tensors and plain values, loadable with ``weights_only=True``.

    {"model": state_dict, "optimizer": state_dict, "scheduler": state_dict,
     "epoch": epochs completed, "val_loss": float, "best_val_loss": float,
     "config": TrainConfig as dict,
     "build": the shard manifest's build parameters (so inference preprocesses identically),
     "pixel_mm_range": [smallest, largest] pixel size (mm) the training patches were cut at,
     "manifest_sha256": str, "versions": {"torch": str, "python": str, "patchstore": str},
     "rng": {"torch": uint8 tensor, "cuda": [uint8 tensors], "permutation": next epoch's generator}}

Written to a temporary file in the same folder and renamed, so ``last.pt`` is always complete
even when the process is killed while saving.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from patchstore.files import atomic_path

REQUIRED = ("model", "epoch", "config", "build")


class CheckpointError(ValueError):
    """A checkpoint that can't be used: the message names the file and the problem."""


def save_checkpoint(path: str | os.PathLike, ckpt: dict) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace``."""
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint dict; refuses files holding pickled Python objects (only tensors and plain values load)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" such as {found.group(1)}" if found else ""
        raise CheckpointError(f"{path}: holds pickled Python objects{what}, not only tensors and plain "
                              f"values; refusing to load it (torch.load with weights_only=True)") from e
    except Exception as e:  # garbage input fails in many ways inside torch.load; name the file
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: holds a {type(ckpt).__name__}; expected a checkpoint dict")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: keys {missing} are missing; expected a checkpoint written by `train run`")
    return ckpt


def rng_state() -> dict:
    """The global torch RNG states (dropout draws from them) as tensors."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def remove_stale_temps(folder: str | os.PathLike) -> None:
    """Temporary checkpoint files a killed run left behind (never a complete checkpoint)."""
    for p in Path(folder).glob(".*.pt.*.tmp"):
        p.unlink(missing_ok=True)
