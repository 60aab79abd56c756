"""Checkpoints: a plain dict of tensors and plain values, loadable with ``weights_only=True``.

    {"model": state_dict, "optimizer": state_dict, "scheduler": state_dict,
     "epoch": epochs completed, "val_loss": float, "best_val_loss": float,
     "config": TrainConfig as dict,
     "build": the shard manifest's build parameters (so inference preprocesses identically),
     "pixel_mm_range": [smallest, largest] pixel size (mm) the training patches were cut at,
     "manifest_sha256": str, "versions": {"torch": str, "python": str, "patchstore": str},
     "rng": {"torch": uint8 tensor, "cuda": [uint8 tensor of rank 0's GPU] (CUDA runs),
             "permutation": next epoch's generator}}   every RNG state a CPU uint8 tensor

Written to a temporary file in the same folder and renamed, so ``last.pt`` is always complete
even when the process is killed while saving. ``load_checkpoint`` refuses, in one line naming the
file: a file torch.save did not write, pickled Python objects (``weights_only=True``), a model
whose weights are not OP-convNet's (each name and shape checked), and config / build entries that
are not valid training and build parameters. Callers (``train``, ``infer``) can then use every
entry without guarding.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import torch

from patchstore.config import BuildConfig
from patchstore.files import atomic_path
from train.model import OPConvNet

REQUIRED = ("model", "epoch", "config", "build")
TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save: a zip archive; before torch 1.6, a pickle


class CheckpointError(ValueError):
    """A checkpoint that can't be used: the message names the file and the problem."""


def save_checkpoint(path: str | os.PathLike, ckpt: dict) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace``."""
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint dict, every entry checked; refuses files holding pickled Python objects
    (only tensors and plain values load)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(TORCH_MAGIC):
        found = f"starts with the bytes {head.hex()}" if head else "is empty"
        raise CheckpointError(f"{path}: not a torch checkpoint (it {found}; expected a file written by torch.save, "
                              f"a zip archive starting with 'PK')")
    try:
        with warnings.catch_warnings():  # damaged files also warn about odd pickle protocols
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if not found:  # damaged bytes, not a forbidden object
            raise CheckpointError(f"{path}: damaged torch checkpoint ({_reason(e)})") from e
        raise CheckpointError(f"{path}: holds pickled Python objects such as {found.group(1)}, not only tensors "
                              f"and plain values; refusing to load it (torch.load with weights_only=True)") from e
    except Exception as e:  # garbage input fails in many ways inside torch.load; name the file
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {_reason(e)})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: holds a {type(ckpt).__name__}; expected a checkpoint dict")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: keys {missing} are missing; expected a checkpoint written by `train run`")
    check_entries(path, ckpt)
    return ckpt


def _reason(e: BaseException) -> str:
    """The informative part of torch.load's long messages: the unpickler's own error, else the
    first sentence."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else "unpickling failed")
    return lines[0].split(". ")[0] if lines else type(e).__name__


def check_entries(path: Path, ckpt: dict) -> None:
    """Refuse entries a loader would choke on: model weights of another network, a config or build
    entry that is not a valid parameter set, an epoch that is not a count."""
    model = ckpt["model"]
    if not isinstance(model, dict):
        raise CheckpointError(f"{path}: entry 'model' is a {type(model).__name__}; expected a state dict of tensors")
    expected = {k: tuple(v.shape) for k, v in OPConvNet().state_dict().items()}
    extra, absent = sorted(set(model) - set(expected)), sorted(set(expected) - set(model))
    if extra or absent:
        found = ", ".join(([f"missing {absent[:3]}{' ...' if len(absent) > 3 else ''}"] if absent else [])
                          + ([f"unexpected {extra[:3]}{' ...' if len(extra) > 3 else ''}"] if extra else []))
        raise CheckpointError(f"{path}: model weights {found}; expected the {len(expected)} weights of OP-convNet "
                              f"(conv1.weight ... fc3.bias)")
    for name, shape in expected.items():
        w = model[name]
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise CheckpointError(f"{path}: model weight {name!r} is a {type(w).__name__} "
                                  f"{getattr(w, 'dtype', '')}; expected a floating-point tensor")
        if tuple(w.shape) != shape:
            raise CheckpointError(f"{path}: model weight {name!r} has shape {tuple(w.shape)}; OP-convNet's is "
                                  f"{shape} (Table 1 of the paper)")
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{path}: entry 'config' is a {type(ckpt['config']).__name__}; expected the training "
                              f"parameters as a dict")
    try:  # inference preprocesses with these: they must make a BuildConfig
        if not isinstance(ckpt["build"], dict):
            raise TypeError(f"a {type(ckpt['build']).__name__}, not a dict")
        BuildConfig.from_dict(ckpt["build"])
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: entry 'build' is not valid build parameters ({e}); expected the shards' "
                              f"build parameters that `train run` stored") from e
    if not isinstance(ckpt["epoch"], int) or isinstance(ckpt["epoch"], bool) or ckpt["epoch"] < 0:
        raise CheckpointError(f"{path}: entry 'epoch' is {ckpt['epoch']!r}; expected an integer >= 0")


def rng_state(device: torch.device | str = "cpu") -> dict:
    """The global torch RNG states (dropout draws from them) as CPU uint8 tensors: the CPU's, and on
    CUDA this process's GPU's (a list of one; each rank uses one GPU)."""
    state = {"torch": torch.get_rng_state()}
    device = torch.device(device)
    if device.type == "cuda":
        state["cuda"] = [torch.cuda.get_rng_state(device).cpu()]
    return state


def byte_state(t: torch.Tensor) -> torch.Tensor:
    """An RNG state as ``torch.set_rng_state`` wants it: a contiguous uint8 tensor on the CPU, also
    when the checkpoint was loaded onto a GPU (or the ``meta`` device: then it holds no values)."""
    if t.device.type == "meta":
        raise CheckpointError("an RNG state on the meta device holds no values; load checkpoints with "
                              "map_location='cpu'")
    return t.detach().to("cpu", torch.uint8).contiguous()


def cuda_state_for(states: list[torch.Tensor], index: int) -> torch.Tensor:
    """The saved CUDA state for device ``index``: its own when the checkpoint has one (older
    checkpoints hold every visible GPU's), else the first. Never fails on a run resumed with fewer
    or more GPUs than it was saved with."""
    return byte_state(states[index] if index < len(states) else states[0])


def set_rng_state(state: dict, device: torch.device | str = "cpu") -> None:
    """Restore ``rng_state``'s record: the CPU state, and on a CUDA ``device`` its GPU's state.

    Informational for ``train``, whose epochs reseed from (seed, epoch, rank); a CUDA record is
    ignored on the CPU and a CPU-only record leaves a GPU's state alone.
    """
    torch.set_rng_state(byte_state(state["torch"]))
    device = torch.device(device)
    if device.type == "cuda" and state.get("cuda"):
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_rng_state(cuda_state_for(list(state["cuda"]), index), device)


def remove_stale_temps(folder: str | os.PathLike) -> None:
    """Temporary checkpoint files a killed run left behind (never a complete checkpoint)."""
    for p in Path(folder).glob(".*.pt.*.tmp"):
        p.unlink(missing_ok=True)
