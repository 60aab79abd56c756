"""Whole-volume inference: CT -> the paper's stride-1 patch classification -> post-processed mask.

    read_volume (canonical LPS) -> batches of axial slices:
        to the checkpoint's pixel size (patchstore.stages.resample, bilinear; as the build did)
        -> patchstore.stages.preprocess.preprocess (the build's window, smoothing, quantization)
        -> to_unit -> engine (dense or patches) -> softmax -> probability of vertebra
        -> back to the input's pixels (bilinear)
    -> probability (Z, Y, X) on the input grid -> smoothed along z (infer.postprocess.smooth_along_z)
    -> > threshold (0.5: the argmax) -> postprocess
    -> write in the input's own orientation and geometry.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from infer.cascade import CascadeEngine
from infer.dense import DenseOPConvNet, patch_nonzero
from infer.patch_engine import patch_logits
from infer.postprocess import MIDLINE_MM, Z_SIGMA_MM, body_mask, postprocess, smooth_along_z
from patchstore.config import BuildConfig
from patchstore.io.volume import Volume, binarize, check_same_grid, read_volume
from patchstore.stages.preprocess import preprocess, to_unit
from patchstore.stages.resample import PlaneGrid, plane_grid, to_grid_image, to_native
from train.checkpoint import load_checkpoint
from train.model import OPConvNet

ENGINES = ("dense", "patches", "cascade")


@dataclass(frozen=True)
class Prediction:
    """``probability`` (Z, Y, X) float32 of vertebra, smoothed along z as asked; ``raw`` =
    probability > threshold; ``mask`` after postprocess."""

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


def vertebra_probability(model: OPConvNet, cfg: BuildConfig, hu: np.ndarray, *,
                         spacing_yx: tuple[float, float] | None = None,
                         progress: Callable[[int], None] | None = None,
                         **engine_options) -> tuple[np.ndarray, float]:
    """(Z, Y, X) HU -> ((Z, Y, X) float32 probability of vertebra, fraction of pixels skipped).

    spacing_yx: the slices' (sy, sx) mm, needed when the checkpoint's build resampled to
    ``cfg.pixel_mm``: each batch is classified on that grid and the probability brought back
    (the skipped fraction then counts working-grid pixels).
    engine_options: ``grid_probability``'s (engine, skip_zero, body, batch_slices, device, bf16,
    tf32, band sizes, patch_batch, prefetch).
    """
    if cfg.pixel_mm is not None and spacing_yx is None:
        raise ValueError(f"the checkpoint was built at {cfg.pixel_mm} mm pixels; pass the slices' spacing_yx")
    grid = plane_grid(hu.shape[1:], spacing_yx or (1.0, 1.0), cfg.pixel_mm)
    prob = np.empty(hu.shape, np.float32)
    skipped = 0
    for z0, p, n_skipped in grid_probability(model, cfg, hu, grid, **engine_options):
        prob[z0:z0 + len(p)] = to_native(grid, p)
        skipped += n_skipped
        if progress:
            progress(len(p))
    return prob, skipped / max(1, hu.shape[0] * grid.shape[0] * grid.shape[1])


def dense_engine(model: OPConvNet, device: torch.device, *, bf16: bool = False, tf32: bool = False,
                 band_rows: int | None = None, tile_cols: int | None = None,
                 stage1_rows: int | None = None) -> DenseOPConvNet:
    """The dense engine on ``device``. bf16: built in bfloat16 (weights, workspaces, every GEMM),
    not under autocast, which leaves ``addmm(out=...)`` (conv3's tap products, fc1, fc2: 95 % of
    the multiply-adds) in fp32. Band sizes None: the device's defaults (``infer.dense.band_sizes``)."""
    return DenseOPConvNet(model, band_rows=band_rows, tile_cols=tile_cols, stage1_rows=stage1_rows,
                          dtype=torch.bfloat16 if bf16 else torch.float32, tf32=tf32).to(device)


@dataclass(frozen=True)
class Batch:
    """One batch of slices made ready on the host (``prepare_batch``)."""

    z0: int  # first slice
    x: torch.Tensor  # (B, H2, W2) float32 network input on the working grid; pinned for a GPU
    need: torch.Tensor | None  # (B, H2, W2) bool pixels to classify, on the host
    skipped: int  # pixels not classified


def prepare_batch(hu: np.ndarray, z0: int, n: int, grid: PlaneGrid, cfg: BuildConfig, skip_zero: bool, body: bool,
                  pin: bool) -> Batch:
    """Slices z0 .. z0+n of the (Z, H, W) HU volume -> the engine's input and need mask, all on the
    host (resampling, preprocessing, the zero-skip and body masks): nothing here waits for a GPU."""
    hu_grid = to_grid_image(grid, np.asarray(hu[z0:z0 + n], np.float32))
    x = torch.from_numpy(to_unit(preprocess(hu_grid, cfg)))
    need = patch_nonzero(x) if skip_zero else None
    if body:
        inside = torch.from_numpy(body_mask(hu_grid))
        need = inside if need is None else need & inside
    skipped = int((~need).sum()) if need is not None else 0
    return Batch(z0, x.pin_memory() if pin else x, need, skipped)


def prepared_batches(hu: np.ndarray, grid: PlaneGrid, cfg: BuildConfig, batch_slices: int, skip_zero: bool,
                     body: bool, pin: bool, prefetch: bool) -> Iterator[Batch]:
    """``prepare_batch`` over the volume; prefetch: the next batch is prepared in a thread while
    the caller classifies this one (NumPy, SciPy and torch release the GIL; patchstore's numba
    kernels do not, so part of the preprocessing still takes turns with the caller)."""
    starts = range(0, hu.shape[0], batch_slices)
    make = lambda z0: prepare_batch(hu, z0, batch_slices, grid, cfg, skip_zero, body, pin)  # noqa: E731
    if not prefetch:
        yield from map(make, starts)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer-prefetch") as pool:
        ahead = pool.submit(make, starts[0]) if len(starts) else None
        for z0 in starts[1:]:
            ready, ahead = ahead.result(), pool.submit(make, z0)
            yield ready
        if ahead is not None:
            yield ahead.result()


def grid_probability(model: OPConvNet, cfg: BuildConfig, hu: np.ndarray, grid: PlaneGrid, *, engine: str = "dense",
                     skip_zero: bool = True, body: bool = False, batch_slices: int = 4,
                     device: torch.device | None = None, bf16: bool = False, tf32: bool = False,
                     band_rows: int | None = None, tile_cols: int | None = None, stage1_rows: int | None = None,
                     patch_batch: int | None = None, cascade_step: int = 4,
                     prefetch: bool | None = None) -> Iterator[tuple[int, np.ndarray, int]]:
    """Batches of (first slice z0, (B, H2, W2) float32 probability of vertebra on ``grid``'s
    working pixels, pixels skipped) over the (Z, H, W) HU volume ``hu``.

    skip_zero: pixels whose read window is all zero get the zero patch's logits (exact).
    body: pixels outside ``body_mask`` are skipped too, i.e. also get the zero patch's logits
        (opt-in, not exact: a patch at the body's edge may hold nonzero values outside it).
    bf16: the dense engine built in bfloat16, the patch engine under autocast; results
        approximate. Faster on GPUs and on CPUs with AVX512-BF16 or AMX, slower on other CPUs.
    tf32: TF32 matmuls and convolutions on CUDA (approximate).
    band_rows, tile_cols, stage1_rows: the dense engine's (None: the device's defaults);
    patch_batch: the patch engine's patches per pass (None: the device's default).
    engine "cascade": the dense engine on a lattice of every ``cascade_step``-th row and column,
        then exactly where the answer can change (``infer.cascade``; not exact elsewhere).
    prefetch: prepare the next batch on the host while this one runs (None: on a GPU only). The
        results do not depend on it, nor on the band sizes or patch_batch.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}; expected one of {ENGINES}")
    if cfg.patch != 32:
        raise ValueError(f"checkpoint's build has patch {cfg.patch}; OP-convNet (Table 1) needs 32")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if batch_slices < 1:
        raise ValueError(f"batch_slices is {batch_slices}; expected an integer >= 1")
    dense = (dense_engine(model, device, bf16=bf16, tf32=tf32, band_rows=band_rows, tile_cols=tile_cols,
                          stage1_rows=stage1_rows) if engine != "patches" else None)
    if engine == "cascade":
        dense = CascadeEngine(dense, step=cascade_step)
    cuda = device.type == "cuda"
    batches = prepared_batches(hu, grid, cfg, batch_slices, skip_zero, body, pin=cuda,
                               prefetch=cuda if prefetch is None else prefetch)
    return _classify(batches, model, dense, device, bf16, tf32, patch_batch)


def _classify(batches: Iterator[Batch], model: OPConvNet, dense: DenseOPConvNet | CascadeEngine | None,
              device: torch.device,
              bf16: bool, tf32: bool, patch_batch: int | None) -> Iterator[tuple[int, np.ndarray, int]]:
    """Run each batch on ``device``; a batch's probabilities are read back only after the next
    batch's work is queued, so the host's part (the caller's resampling back, the next
    preprocessing) overlaps the GPU's."""
    pending = None
    for b in batches:
        with torch.inference_mode():  # not across the yield: the caller's code runs there
            x = b.x.to(device, non_blocking=True)
            if dense is not None:
                logits = dense(x, b.need)  # a host mask: the skip bookkeeping reads nothing back
            else:
                need = None if b.need is None else b.need.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = patch_logits(model, x, need=need, batch=patch_batch, tf32=tf32)
            started = (b.z0, *_start_read_back(torch.softmax(logits.float(), dim=1)[:, 1]), b.skipped)
        if pending is not None:
            yield _read_back(*pending)
        pending = started
    if pending is not None:
        yield _read_back(*pending)


def _start_read_back(p: torch.Tensor) -> tuple[torch.Tensor, object]:
    """Start copying ``p`` to the host: into pinned memory without waiting on a GPU (the returned
    CUDA event marks its end), at once elsewhere."""
    if p.device.type != "cuda":
        return p.cpu(), None
    host = torch.empty(p.shape, dtype=p.dtype, pin_memory=True)
    host.copy_(p, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return host, done


def _read_back(z0: int, host: torch.Tensor, done, skipped: int) -> tuple[int, np.ndarray, int]:
    if done is not None:
        done.synchronize()
    return z0, host.numpy(), skipped


def segment(model: OPConvNet, cfg: BuildConfig, volume: Volume, *, postprocess_method: str = "spine",
            threshold: float = 0.5, refine: str | float | None = "window", midline_mm: float | None = MIDLINE_MM,
            z_sigma_mm: float | None = Z_SIGMA_MM, **engine_options) -> Prediction:
    """Classify every pixel of every axial slice of ``volume`` and post-process the mask.

    ``z_sigma_mm``: the probability's Gaussian smoothing along z before the threshold
    (``infer.postprocess.smooth_along_z``), None for none. ``refine``: the bone refinement's
    floor in HU (see ``infer.postprocess``), "window" for the build's ``hu_min``, None for none.
    ``midline_mm``: the spine filter's band around the body's midline
    (``infer.postprocess.spine_track``), None for none."""
    t0 = time.perf_counter()
    prob, skipped = vertebra_probability(model, cfg, volume.array, spacing_yx=volume.geometry.spacing_zyx[1:],
                                         **engine_options)
    prob = smooth_along_z(prob, volume.geometry.spacing_zyx[0], z_sigma_mm)
    raw = prob > threshold  # 0.5: the argmax of two classes; a tie goes to background
    mask = postprocess(raw, volume.geometry.spacing_zyx, method=postprocess_method, hu=volume.array,
                       refine_hu=cfg.hu_min if refine == "window" else refine, midline_mm=midline_mm)
    return Prediction(prob, raw, mask, time.perf_counter() - t0, skipped)


def read_reference(path: str | Path, image: Volume, labels: tuple[int, ...]) -> np.ndarray:
    """A reference mask on the image's grid, canonical (Z, Y, X) bool."""
    ref = read_volume(path, dtype=None)
    check_same_grid(image, ref)
    return binarize(ref.array, labels).astype(bool)
