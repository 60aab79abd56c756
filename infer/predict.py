"""Whole-volume inference: CT -> the paper's stride-1 patch classification -> post-processed mask.

    read_volume (canonical LPS) -> batches of axial slices:
        to the checkpoint's pixel size (patchstore.stages.resample, bilinear; as the build did)
        -> patchstore.stages.preprocess.preprocess (the build's window, smoothing, quantization)
        -> to_unit -> engine (dense or patches) -> softmax -> probability of vertebra
        -> back to the input's pixels (bilinear)
    -> probability (Z, Y, X) on the input grid -> > threshold (0.5: the argmax) -> postprocess
    -> write in the input's own orientation and geometry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from infer.dense import DenseOPConvNet, patch_nonzero
from infer.patch_engine import patch_logits
from infer.postprocess import body_mask, postprocess
from patchstore.config import BuildConfig
from patchstore.io.volume import Volume, binarize, check_same_grid, read_volume
from patchstore.stages.preprocess import preprocess, to_unit
from patchstore.stages.resample import PlaneGrid, plane_grid, to_grid_image, to_native
from train.checkpoint import load_checkpoint
from train.model import OPConvNet

ENGINES = ("dense", "patches")


@dataclass(frozen=True)
class Prediction:
    """``probability`` (Z, Y, X) float32 of vertebra; ``raw`` argmax mask; ``mask`` after postprocess."""

    probability: np.ndarray
    raw: np.ndarray
    mask: np.ndarray
    seconds: float
    skipped_fraction: float


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[OPConvNet, BuildConfig]:
    """The trained network (eval mode) and the build parameters its shards were made with."""
    ckpt = load_checkpoint(checkpoint)
    for key in ("model", "build"):
        if key not in ckpt:
            raise ValueError(f"{checkpoint}: checkpoint has no {key!r} entry; expected a file written by `train run`")
    model = OPConvNet()
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), BuildConfig.from_dict(ckpt["build"])


def training_pixel_mm(checkpoint: str | Path) -> tuple[float, float] | None:
    """[smallest, largest] pixel size (mm) of the checkpoint's training patches (None: not recorded)."""
    found = load_checkpoint(checkpoint).get("pixel_mm_range")
    return (float(found[0]), float(found[1])) if found else None


def pixel_warning(build: BuildConfig, trained_at: tuple[float, float] | None,
                  spacing_yx: tuple[float, float]) -> str | None:
    """Why the scan's pixels may not suit the model: more than 25 % off the training pixels while
    the checkpoint classifies at native pixels (no resampling applies). None when fine."""
    if build.pixel_mm is not None or trained_at is None:
        return None
    lo, hi = trained_at
    if all(lo / 1.25 <= s <= hi * 1.25 for s in spacing_yx):
        return None
    return (f"pixels of {spacing_yx[1]:.3g} x {spacing_yx[0]:.3g} mm, but the model was trained on "
            f"{lo:.3g}-{hi:.3g} mm pixels at native size (no resampling): expect poor masks; train with "
            f"`patchstore build --pixel-mm` so every scan is brought to one pixel size")


def vertebra_probability(model: OPConvNet, cfg: BuildConfig, hu: np.ndarray, *, engine: str = "dense",
                         skip_zero: bool = True, body: bool = False, batch_slices: int = 4,
                         device: torch.device | None = None, bf16: bool = False,
                         spacing_yx: tuple[float, float] | None = None,
                         progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, float]:
    """(Z, Y, X) HU -> ((Z, Y, X) float32 probability of vertebra, fraction of pixels skipped).

    spacing_yx: the slices' (sy, sx) mm, needed when the checkpoint's build resampled to
    ``cfg.pixel_mm``: each batch is classified on that grid and the probability brought back
    (the skipped fraction then counts working-grid pixels).
    skip_zero: pixels whose read window is all zero get the zero patch's logits (exact).
    body: pixels outside ``body_mask`` are skipped too, i.e. also get the zero patch's logits
    (opt-in, not exact: a patch at the body's edge may hold nonzero values outside it).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}; expected one of {ENGINES}")
    if cfg.patch != 32:
        raise ValueError(f"checkpoint's build has patch {cfg.patch}; OP-convNet (Table 1) needs 32")
    if cfg.pixel_mm is not None and spacing_yx is None:
        raise ValueError(f"the checkpoint was built at {cfg.pixel_mm} mm pixels; pass the slices' spacing_yx")
    grid = plane_grid(hu.shape[1:], spacing_yx or (1.0, 1.0), cfg.pixel_mm)
    prob = np.empty(hu.shape, np.float32)
    skipped = 0
    for z0, p, n_skipped in grid_probability(model, cfg, hu, grid, engine=engine, skip_zero=skip_zero, body=body,
                                             batch_slices=batch_slices, device=device, bf16=bf16):
        prob[z0:z0 + len(p)] = to_native(grid, p)
        skipped += n_skipped
        if progress:
            progress(len(p))
    return prob, skipped / max(1, hu.shape[0] * grid.shape[0] * grid.shape[1])


def grid_probability(model: OPConvNet, cfg: BuildConfig, hu: np.ndarray, grid: PlaneGrid, *, engine: str = "dense",
                     skip_zero: bool = True, body: bool = False, batch_slices: int = 4,
                     device: torch.device | None = None,
                     bf16: bool = False) -> Iterator[tuple[int, np.ndarray, int]]:
    """Batches of (first slice z0, (B, H2, W2) float32 probability of vertebra on ``grid``'s
    working pixels, pixels skipped) over the (Z, H, W) HU volume ``hu``."""
    device = device or next(model.parameters()).device
    dense = DenseOPConvNet(model).to(device) if engine == "dense" else None
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for z0 in range(0, hu.shape[0], batch_slices):
            hu_grid = to_grid_image(grid, np.asarray(hu[z0:z0 + batch_slices], np.float32))
            x = torch.from_numpy(to_unit(preprocess(hu_grid, cfg))).to(device)
            need = patch_nonzero(x) if skip_zero else None
            if body:
                inside = torch.from_numpy(body_mask(hu_grid)).to(device)
                need = inside if need is None else need & inside
            logits = dense(x, need) if dense is not None else patch_logits(model, x, need=need)
            p = torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy()
            yield z0, p, int((~need).sum()) if need is not None else 0


def segment(model: OPConvNet, cfg: BuildConfig, volume: Volume, *, postprocess_method: str = "spine",
            threshold: float = 0.5, **engine_options) -> Prediction:
    """Classify every pixel of every axial slice of ``volume`` and post-process the mask."""
    t0 = time.perf_counter()
    prob, skipped = vertebra_probability(model, cfg, volume.array, spacing_yx=volume.geometry.spacing_zyx[1:],
                                         **engine_options)
    raw = prob > threshold  # 0.5: the argmax of two classes; a tie goes to background
    mask = postprocess(raw, volume.geometry.spacing_zyx, method=postprocess_method, hu=volume.array)
    return Prediction(prob, raw, mask, time.perf_counter() - t0, skipped)


def read_reference(path: str | Path, image: Volume, labels: tuple[int, ...]) -> np.ndarray:
    """A reference mask on the image's grid, canonical (Z, Y, X) bool."""
    ref = read_volume(path, dtype=None)
    check_same_grid(image, ref)
    return binarize(ref.array, labels).astype(bool)
