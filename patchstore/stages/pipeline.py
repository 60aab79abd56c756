"""One volume -> its kept, labelled, quantized patches (paper II.A-C), in bounded memory.

    image (Z,H,W) float32 HU, mask (Z,H,W) uint8 0/1, native pixels
      | working grid (H2,W2) at cfg.pixel_mm (stages.resample; the native grid when None)
      | draw all shifts up front: (Z, n_views, 2)            (generator 1 of seed_seq)
      | pass 1, per CHUNK slices: mask to the working grid (nearest); per slice, per view:
      |         resample the MASK only -> labels under cfg.label_rule (tiny)
      | RUS over all candidate labels -> kept indices        (generator 2 of seed_seq)
      | pass 2, per CHUNK of slices holding kept patches: HU to the working grid (bilinear),
      |         window + smooth each slice; per view holding kept patches: sample the IMAGE
      |         view (bilinear) at the kept patches' pixels only, quantized into the output
      |         (numba calls of CHUNK slices, (slice, view) pairs over threads)
      v
    VolumePatches: patches (N,n,n), labels (N,), origin (N,4) = (z, row, col, view), rows and
    columns on the working grid

Views are never stored, and the working grid exists CHUNK slices at a time: peak memory is the
input volume plus the output patches plus about CHUNK working slices, whatever the pixel size
or the number of views.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from patchstore.config import BuildConfig
from patchstore.stages import augment, balance, kernels, patches
from patchstore.stages.preprocess import gaussian_weights
from patchstore.stages.resample import PlaneGrid, plane_grid, to_grid_image, to_grid_mask

CHUNK = 16  # slices per kernel call: few thread launches, a progress tick, a small float16 block


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
    mask: np.ndarray, cfg: BuildConfig, maps: np.ndarray, grid: PlaneGrid,
    progress: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Pass 1: (Z * n_views * Gr * Gc,) uint8 labels of every candidate, in candidate order.

    mask: (Z, H, W) uint8 0/1, native; maps: (Z, n_views, 2, 3) float64 from
    ``augment.volume_maps`` on the working grid.
    """
    labels = []
    for z0 in range(0, mask.shape[0], CHUNK):
        z1 = min(z0 + CHUNK, mask.shape[0])
        m = to_grid_mask(grid, mask[z0:z1])
        labels.append(patches.volume_labels(m, maps[z0:z1], cfg.patch, cfg.stride, cfg.label_rule).ravel())
        if progress is not None:
            progress(z1 - z0)
    return np.concatenate(labels) if labels else np.zeros(0, np.uint8)


def group_kept(origin: np.ndarray, n_views: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Group (K >= 1, 4) origins sorted by (z, view) into slices and (slice, view) pairs, CSR style.

    Returns slices (S,) int64, slice_pairs (S+1,) int64, pair_bounds (P+1,) int64 and
    pair_view (P,) int64: slice slices[s] owns pairs slice_pairs[s]:slice_pairs[s+1], pair p is
    view pair_view[p] and owns origins pair_bounds[p]:pair_bounds[p+1].
    """
    pair = origin[:, 0].astype(np.int64) * n_views + origin[:, 3]
    pair_bounds = np.concatenate([[0], np.flatnonzero(np.diff(pair)) + 1, [len(origin)]]).astype(np.int64)
    first = pair_bounds[:-1]
    pair_z = origin[first, 0].astype(np.int64)
    pair_view = origin[first, 3].astype(np.int64)
    slices, slice_first = np.unique(pair_z, return_index=True)
    slice_pairs = np.concatenate([slice_first, [len(first)]]).astype(np.int64)
    return slices, slice_pairs, pair_bounds, pair_view


def gather_kept(
    image: np.ndarray,
    cfg: BuildConfig,
    maps: np.ndarray,
    origin: np.ndarray,
    grid: PlaneGrid,
    jitter: tuple[np.ndarray, np.ndarray],
    progress: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Pass 2: (K, n, n) patches at the (K, 4) origins, which are sorted by (z, view).

    Windows and smooths only slices holding kept patches and samples each view only at its kept
    patches' pixels (identical values to resampling the view, then cropping), CHUNK
    slices per kernel call, cropping straight into the output (float16 through a float32
    block per chunk: numba has no float16).
    """
    n = cfg.patch
    out = np.empty((len(origin), n, n), np.dtype(cfg.dtype))
    if len(origin) == 0:
        if progress is not None:
            progress(image.shape[0])
        return out
    slices, slice_pairs, pair_bounds, pair_view = group_kept(origin, cfg.n_views)
    w = gaussian_weights(cfg.sigma) if cfg.sigma > 1e-15 else np.ones(1)
    done = 0
    for c0 in range(0, len(slices), CHUNK):
        c1 = min(c0 + CHUNK, len(slices))
        p0, p1 = slice_pairs[c0], slice_pairs[c1]
        k0, k1 = pair_bounds[p0], pair_bounds[p1]
        block = out[k0:k1] if out.dtype == np.uint8 else np.empty((k1 - k0, n, n), np.float32)
        args = (
            ("image slices", to_grid_image(grid, np.ascontiguousarray(image[slices[c0:c1]])), np.float32, 3),
            ("w", w, np.float64, 1),
            ("maps", np.ascontiguousarray(maps[slices[c0:c1]]), np.float64, 4),
            ("jitter", np.ascontiguousarray(jitter[0][slices[c0:c1]]), np.float32, 3),
            ("keys", np.ascontiguousarray(jitter[1][slices[c0:c1]]), np.uint64, 2),
            ("slice_pairs", slice_pairs[c0 : c1 + 1] - p0, np.int64, 1),
            ("pair_bounds", pair_bounds[p0 : p1 + 1] - k0, np.int64, 1),
            ("pair_view", pair_view[p0:p1], np.int64, 1),
            ("rows", np.ascontiguousarray(origin[k0:k1, 1]), np.int32, 1),
            ("cols", np.ascontiguousarray(origin[k0:k1, 2]), np.int32, 1),
            ("out", block, block.dtype, 3),
        )
        for name, a, dtype, ndim in args:
            kernels.check_array(name, a, dtype, ndim)
        img, w_, mp, jit, keys, sp, pb, pv, rows, cols, _ = (a for _, a, _, _ in args)
        hu_min, hu_max = np.float32(cfg.hu_min), np.float32(cfg.hu_max)
        kernels.volume_patches(img, hu_min, hu_max, w_, mp, jit, keys, sp, pb, pv, rows, cols, out.dtype == np.uint8,
                               block)
        if out.dtype != np.uint8:
            out[k0:k1] = block.astype(out.dtype)
        if progress is not None:
            progress(int(slices[c1 - 1]) + 1 - done)
            done = int(slices[c1 - 1]) + 1
    if progress is not None and image.shape[0] > done:
        progress(image.shape[0] - done)
    return out


def build_volume(
    image: np.ndarray,
    mask: np.ndarray,
    cfg: BuildConfig,
    seed_seq: np.random.SeedSequence,
    progress: Callable[[int], object] | None = None,
    spacing_yx: tuple[float, float] | None = None,
) -> VolumePatches:
    """(Z, H, W) float32 HU image and uint8 0/1 mask -> the volume's kept patches.

    ``spacing_yx`` (sy, sx) mm of the native pixels is needed when ``cfg.pixel_mm`` is set.
    Randomness: child 0 of ``seed_seq`` draws the shifts, child 1 the RUS sample, child 2 the
    intensity jitter, child 3 the zooms, child 4 the mirrors, so the same inputs and ``seed_seq`` give byte-identical outputs. ``progress(k)`` (e.g. a tqdm bar's
    ``update``) is called with the number of slices just finished, in each pass: the calls sum
    to 2 * Z.
    """
    check_volume(image, mask)
    if cfg.pixel_mm is not None and spacing_yx is None:
        raise ValueError(f"pixel_mm={cfg.pixel_mm} needs the slices' spacing_yx to resample them")
    grid = plane_grid(image.shape[1:], spacing_yx or (1.0, 1.0), cfg.pixel_mm)
    shift_seed, rus_seed, jitter_seed, zoom_seed, mirror_seed = child_seeds(seed_seq, 5)
    shifts = augment.draw_shifts(image.shape[0], cfg, np.random.default_rng(shift_seed))
    zooms = augment.draw_zooms(image.shape[0], cfg, np.random.default_rng(zoom_seed))
    mirrors = augment.draw_mirrors(image.shape[0], cfg, np.random.default_rng(mirror_seed))
    maps = augment.volume_maps(cfg, shifts, grid.shape, zooms, mirrors)
    labels = candidate_labels(mask, cfg, maps, grid, progress)
    if cfg.rus:
        keep = balance.rus_indices(labels, cfg.ratio, np.random.default_rng(rus_seed))
    else:
        keep = np.arange(labels.size, dtype=np.int64)
    shape = patches.grid_shape(grid.shape, cfg.patch, cfg.stride)
    origin = patches.candidate_origins(keep, cfg.n_views, shape, cfg.stride)
    jitter = augment.draw_jitter(image.shape[0], cfg, np.random.default_rng(jitter_seed))
    out = gather_kept(image, cfg, maps, origin, grid, jitter, progress)
    kept_labels = labels[keep]
    return VolumePatches(
        patches=out,
        labels=kept_labels,
        origin=origin,
        counts_before=balance.class_counts(labels),
        counts_after=balance.class_counts(kept_labels),
    )
