"""Whole-volume inference: CT -> the paper's stride-1 patch classification -> post-processed mask.

    read_volume (canonical LPS) -> patchstore.stages.preprocess.preprocess (the build's exact window,
    smoothing and quantization, from the checkpoint) -> to_unit -> batches of axial slices ->
    engine (dense or patches) -> softmax -> probability (Z, Y, X) -> argmax -> postprocess
    -> write in the input's own orientation and geometry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from infer.dense import DenseOPConvNet, patch_nonzero
from infer.patch_engine import patch_logits
from infer.postprocess import postprocess
from patchstore.config import BuildConfig
from patchstore.io.volume import Volume, binarize, check_same_grid, read_volume
from patchstore.stages.preprocess import preprocess, to_unit
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


def body_mask(hu: np.ndarray, threshold: float = -500.0, opening: int = 2) -> np.ndarray:
    """(Z, Y, X) HU -> (Z, Y, X) bool body, per axial slice: HU > threshold, binary opening (3x3
    square, ``opening`` iterations: drops thin table rails and noise), largest 2-D connected
    component, holes filled (lungs and bowel gas stay inside)."""
    out = np.zeros(hu.shape, bool)
    square = np.ones((3, 3), bool)
    for z, sl in enumerate(hu):
        m = ndimage.binary_opening(sl > threshold, square, iterations=opening) if opening else sl > threshold
        lab, n = ndimage.label(m)
        if n:
            largest = 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
            out[z] = ndimage.binary_fill_holes(lab == largest)
    return out


def vertebra_probability(model: OPConvNet, cfg: BuildConfig, hu: np.ndarray, *, engine: str = "dense",
                         skip_zero: bool = True, body: bool = False, batch_slices: int = 4,
                         device: torch.device | None = None, bf16: bool = False,
                         progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, float]:
    """(Z, Y, X) HU -> ((Z, Y, X) float32 probability of vertebra, fraction of pixels skipped).

    skip_zero: pixels whose read window is all zero get the zero patch's logits (exact).
    body: pixels outside ``body_mask`` are skipped too, i.e. also get the zero patch's logits
    (opt-in, not exact: a patch at the body's edge may hold nonzero values outside it).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}; expected one of {ENGINES}")
    if cfg.patch != 32:
        raise ValueError(f"checkpoint's build has patch {cfg.patch}; OP-convNet (Table 1) needs 32")
    device = device or next(model.parameters()).device
    dense = DenseOPConvNet(model).to(device) if engine == "dense" else None
    prob = np.empty(hu.shape, np.float32)
    skipped = 0
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for z0 in range(0, hu.shape[0], batch_slices):
            stored = preprocess(hu[z0:z0 + batch_slices], cfg)
            x = torch.from_numpy(to_unit(stored)).to(device)
            need = patch_nonzero(x) if skip_zero else None
            if body:
                inside = torch.from_numpy(body_mask(hu[z0:z0 + batch_slices])).to(device)
                need = inside if need is None else need & inside
            logits = dense(x, need) if dense is not None else patch_logits(model, x, need=need)
            prob[z0:z0 + len(x)] = torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy()
            if need is not None:
                skipped += int((~need).sum())
            if progress:
                progress(len(x))
    return prob, skipped / hu.size


def segment(model: OPConvNet, cfg: BuildConfig, volume: Volume, *, postprocess_on: bool = True,
            **engine_options) -> Prediction:
    """Classify every pixel of every axial slice of ``volume`` and post-process the mask."""
    t0 = time.perf_counter()
    prob, skipped = vertebra_probability(model, cfg, volume.array, **engine_options)
    raw = prob > 0.5  # argmax of two classes; a tie (exactly 0.5) goes to background
    mask = postprocess(raw, volume.geometry.spacing_zyx) if postprocess_on else raw
    return Prediction(prob, raw, mask, time.perf_counter() - t0, skipped)


def read_reference(path: str | Path, image: Volume, labels: tuple[int, ...]) -> np.ndarray:
    """A reference mask on the image's grid, canonical (Z, Y, X) bool."""
    ref = read_volume(path, dtype=None)
    check_same_grid(image, ref)
    return binarize(ref.array, labels).astype(bool)
