"""One volume -> its kept, labelled, quantized patches (paper II.A-C), in bounded memory.

    image (Z,H,W) float32 HU, mask (Z,H,W) uint8 0/1
      | draw all shifts up front: (Z, n_views, 2)            (generator 1 of seed_seq)
      | pass 1, per slice, per view: resample the MASK only -> label counts -> labels (tiny)
      | RUS over all candidate labels -> kept indices        (generator 2 of seed_seq)
      | pass 2, per slice holding kept patches: window + smooth the slice; per view holding kept
      |         patches: resample the IMAGE -> crop + quantize the kept patches into the output
      v
    VolumePatches: patches (N,n,n), labels (N,), origin (N,4) = (z, row, col, view)

Never more than one slice's views exist at a time, so peak memory is the input volume plus the
output patches plus a few slices, whatever the number of views.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from patchstore import augment, balance, patches
from patchstore.config import BuildConfig
from patchstore.preprocess import preprocess_float


@dataclass(frozen=True)
class VolumePatches:
    """Kept patches of one volume, in candidate order (z, view, grid row, grid col).

    patches: (N, n, n) uint8 or float16; labels: (N,) uint8; origin: (N, 4) int32 rows of
    (z, top-left row, top-left col, view); counts_before / counts_after: (n0, n1) over all
    candidates / over the kept ones.
    """

    patches: np.ndarray
    labels: np.ndarray
    origin: np.ndarray
    counts_before: tuple[int, int]
    counts_after: tuple[int, int]


def child_seeds(seed_seq: np.random.SeedSequence, n: int) -> list[np.random.SeedSequence]:
    """The first ``n`` children of ``seed_seq``, the same on every call.

    ``seed_seq.spawn`` would advance the parent's counter, so a second build with the same
    object would draw differently; these are the children a fresh ``spawn(n)`` returns.
    """
    return [
        np.random.SeedSequence(seed_seq.entropy, spawn_key=seed_seq.spawn_key + (i,), pool_size=seed_seq.pool_size)
        for i in range(n)
    ]


def check_volume(image: np.ndarray, mask: np.ndarray) -> None:
    """Raise TypeError / ValueError unless image is (Z,H,W) float32 and mask the same shape uint8 0/1."""
    for name, a, dtype in (("image", image, np.float32), ("mask", mask, np.uint8)):
        if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != 3 or not a.flags.c_contiguous:
            found = f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}"
            raise TypeError(f"{name} must be a C-contiguous (Z, H, W) {np.dtype(dtype)} array, got {found}")
    if image.shape != mask.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    if mask.size and mask.max() > 1:
        raise ValueError(f"mask must hold 0/1 values, found {int(mask.max())}; select the labels first")


def candidate_labels(
    mask: np.ndarray, cfg: BuildConfig, shifts: np.ndarray, progress: Callable[[int], object] | None = None
) -> np.ndarray:
    """Pass 1: (Z * n_views * Gr * Gc,) uint8 labels of every candidate, in candidate order."""
    z_n, h, w = mask.shape
    angles = augment.view_angles(cfg)
    labels = []
    for z in range(z_n):
        maps = augment.slice_maps(angles, shifts[z], (h, w))
        for m in maps:
            labels.append(patches.slice_labels(augment.view_mask(mask[z], m), cfg.patch, cfg.stride))
        if progress is not None:
            progress(1)
    return np.concatenate(labels) if labels else np.zeros(0, np.uint8)


def gather_kept(
    image: np.ndarray,
    cfg: BuildConfig,
    shifts: np.ndarray,
    origin: np.ndarray,
    progress: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Pass 2: (N, n, n) patches at the (N, 4) origins, which are sorted by (z, view).

    Resamples the image only for (slice, view) pairs that hold kept patches.
    """
    z_n, h, w = image.shape
    n = cfg.patch
    out = np.empty((len(origin), n, n), np.dtype(cfg.dtype))
    angles = augment.view_angles(cfg)
    pair = origin[:, 0].astype(np.int64) * cfg.n_views + origin[:, 3]
    bounds = np.flatnonzero(np.diff(pair)) + 1
    starts = np.concatenate([[0], bounds]) if len(origin) else np.zeros(0, np.int64)
    ends = np.concatenate([bounds, [len(origin)]]) if len(origin) else np.zeros(0, np.int64)
    done, cur_z, pre = 0, -1, None
    for s, e in zip(starts, ends):
        z, a = int(origin[s, 0]), int(origin[s, 3])
        if z != cur_z:
            pre = preprocess_float(image[z : z + 1], cfg)[0]
            cur_z = z
            if progress is not None and z > done:
                progress(z - done)
                done = z
        view = augment.view_image(pre, augment.affine_map(angles[a], shifts[z, a], (h, w)))
        rows = np.ascontiguousarray(origin[s:e, 1])
        cols = np.ascontiguousarray(origin[s:e, 2])
        patches.gather_patches(view, rows, cols, out[s:e])
    if progress is not None and z_n > done:
        progress(z_n - done)
    return out


def build_volume(
    image: np.ndarray,
    mask: np.ndarray,
    cfg: BuildConfig,
    seed_seq: np.random.SeedSequence,
    progress: Callable[[int], object] | None = None,
) -> VolumePatches:
    """(Z, H, W) float32 HU image and uint8 0/1 mask -> the volume's kept patches.

    Randomness: child 0 of ``seed_seq`` draws the shifts, child 1 the RUS sample, so the same
    inputs and ``seed_seq`` give byte-identical outputs. ``progress(k)`` (e.g. a tqdm bar's
    ``update``) is called with the number of slices just finished, in each pass: the calls sum
    to 2 * Z.
    """
    check_volume(image, mask)
    shift_seed, rus_seed = child_seeds(seed_seq, 2)
    shifts = augment.draw_shifts(image.shape[0], cfg, np.random.default_rng(shift_seed))
    labels = candidate_labels(mask, cfg, shifts, progress)
    if cfg.rus:
        keep = balance.rus_indices(labels, cfg.ratio, np.random.default_rng(rus_seed))
    else:
        keep = np.arange(labels.size, dtype=np.int64)
    grid = patches.grid_shape(image.shape[1:], cfg.patch, cfg.stride)
    origin = patches.candidate_origins(keep, cfg.n_views, grid, cfg.stride)
    out = gather_kept(image, cfg, shifts, origin, progress)
    kept_labels = labels[keep]
    return VolumePatches(
        patches=out,
        labels=kept_labels,
        origin=origin,
        counts_before=balance.class_counts(labels),
        counts_after=balance.class_counts(kept_labels),
    )
