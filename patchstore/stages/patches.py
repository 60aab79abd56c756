"""Overlapping n x n patches on a stride grid, their labels, origins and crops (paper II.B).

Grid along one axis of length ``size``:

    starts 0, s, 2s, ... while start + n <= size          G = (size - n) // s + 1

    |<--- n --->|
    +-----------+---------- ... ----+
    0     s     |  2s               size
          |<--- n --->|

Label rules (``BuildConfig.label_rule``):

    majority (the paper's)  1 iff more than half of the patch's pixels are vertebra,
                            ``count * 2 > n * n`` (513 of 1024 for 32x32 -> 1, 512 -> 0)
    centre                  1 iff pixel (n/2, n/2) of the patch is vertebra: the pixel whose
                            class stride-1 inference takes from this patch (its patch spans
                            rows and columns -n/2 .. n/2-1 around it)

At stride 1 either rule, applied to the reference mask, gives the mask of an ideal classifier of
the training labels (``rule_mask``); its DSC against the reference (``rule_dsc``) tells what the
rule lets a network reach: 1.0 for "centre", far less for "majority" at coarse pixel sizes.

Candidates of a volume are numbered in the order (slice z, view a, grid row gi, grid col gj):

    index = ((z * n_views + a) * Gr + gi) * Gc + gj
    origin = (z, gi * stride, gj * stride, a)      int32, top-left corner of the patch
"""

from __future__ import annotations

import numpy as np

from patchstore.stages import kernels
from patchstore.stages.resample import PlaneGrid, to_grid_mask, to_native_mask

RULES = {"majority": 0, "centre": 1}  # the kernels' rule codes


def grid_starts(size: int, n: int, stride: int) -> np.ndarray:
    """(G,) int32 top-left positions 0, stride, ... with position + n <= size (empty if size < n)."""
    return np.arange(0, size - n + 1, stride, dtype=np.int32)


def grid_shape(shape: tuple[int, int], n: int, stride: int) -> tuple[int, int]:
    """(Gr, Gc): patches per column and per row of an (H, W) slice."""
    return len(grid_starts(shape[0], n, stride)), len(grid_starts(shape[1], n, stride))


def grid_counts(mask: np.ndarray, n: int, stride: int) -> np.ndarray:
    """(H, W) uint8 0/1 mask -> (Gr, Gc) int32 foreground pixels in each grid patch."""
    kernels.check_array("mask slice", mask, np.uint8, 2)
    out = np.zeros(grid_shape(mask.shape, n, stride), np.int32)
    if out.size:
        kernels.grid_counts(mask, n, stride, out)
    return out


def volume_labels(mask: np.ndarray, maps: np.ndarray, n: int, stride: int, rule: str = "majority") -> np.ndarray:
    """(Z, H, W) uint8 0/1 mask and (Z, V, 2, 3) float64 view maps -> (Z, V, Gr, Gc) uint8 labels.

    The label under ``rule`` of every grid patch of every (nearest-neighbour) mask view; views
    are never kept.
    """
    kernels.check_array("mask", mask, np.uint8, 3)
    kernels.check_array("maps", maps, np.float64, 4)
    if maps.shape[0] != mask.shape[0] or maps.shape[2:] != (2, 3):
        raise ValueError(f"maps must have shape ({mask.shape[0]}, V, 2, 3), got {maps.shape}")
    out = np.zeros(maps.shape[:2] + grid_shape(mask.shape[1:], n, stride), np.uint8)
    if out.size:
        kernels.volume_labels(mask, maps, n, stride, RULES[rule], out)
    return out


def label_rule(counts: np.ndarray, n: int) -> np.ndarray:
    """Foreground pixel counts -> uint8 labels, 1 iff count > n*n/2 (the majority rule)."""
    return (np.asarray(counts) * 2 > n * n).astype(np.uint8)


def slice_labels(mask: np.ndarray, n: int, stride: int, rule: str = "majority") -> np.ndarray:
    """(H, W) uint8 mask -> (Gr * Gc,) uint8 labels under ``rule``, row-major over the grid."""
    if rule == "centre":
        starts_r, starts_c = grid_starts(mask.shape[0], n, stride), grid_starts(mask.shape[1], n, stride)
        return mask[np.ix_(starts_r + n // 2, starts_c + n // 2)].astype(np.uint8).ravel()
    return label_rule(grid_counts(mask, n, stride), n).ravel()


def rule_mask(mask: np.ndarray, n: int, rule: str = "majority") -> np.ndarray:
    """(Z, H, W) 0/1 -> (Z, H, W) bool: the label ``rule`` applied at every pixel (stride 1), i.e.
    what an ideal classifier of the training patches segments; "centre" returns the mask itself.

    Pixel (r, c)'s patch spans rows r-n/2 .. r+n/2-1 (zero outside the slice); box sums by an
    integral image, a few slices at a time (bounded memory).
    """
    if rule == "centre":
        return mask.astype(bool)
    h, out = n // 2, np.empty(mask.shape, bool)
    for z0 in range(0, mask.shape[0], 16):
        padded = np.pad(mask[z0:z0 + 16].astype(np.int32), ((0, 0), (h, h - 1), (h, h - 1)))
        ii = np.pad(padded.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
        box = ii[:, n:, n:] - ii[:, :-n, n:] - ii[:, n:, :-n] + ii[:, :-n, :-n]
        out[z0:z0 + 16] = box * 2 > n * n
    return out


def rule_dsc(ref: np.ndarray, n: int, rule: str = "majority", grid: PlaneGrid | None = None) -> float:
    """DSC against ``ref`` ((Z, H, W) 0/1, native grid) of the ideal classifier of ``rule``,
    applied on ``grid``'s working pixels (None: native) and brought back to the native grid.

    Not a strict ceiling: a network that doesn't reproduce the labels exactly (a smooth
    probability thresholded at stride 1) can score above it. 0/0 (both empty) is 1.0.
    """
    ref = np.asarray(ref).astype(np.uint8)
    ideal = rule_mask(ref if grid is None else to_grid_mask(grid, ref), n, rule)
    if grid is not None:
        ideal = to_native_mask(grid, ideal.view(np.uint8)).view(bool)
    both, total = int(np.count_nonzero(ideal & (ref > 0))), int(np.count_nonzero(ideal)) + int(np.count_nonzero(ref))
    return 1.0 if total == 0 else 2.0 * both / total


def candidate_origins(index: np.ndarray, n_views: int, grid: tuple[int, int], stride: int) -> np.ndarray:
    """(K,) candidate indices -> (K, 4) int32 origins (z, row, col, view)."""
    za, g = np.divmod(np.asarray(index, dtype=np.int64), grid[0] * grid[1])
    z, a = np.divmod(za, n_views)
    gi, gj = np.divmod(g, grid[1])
    return np.stack([z, gi * stride, gj * stride, a], axis=1).astype(np.int32)


def gather_patches(src: np.ndarray, rows: np.ndarray, cols: np.ndarray, out: np.ndarray) -> None:
    """Crop (K, n, n) patches at top-left (rows, cols) of a [0, 1] slice, quantized into ``out``.

    src: (H, W) float32; rows, cols: (K,) int32; out: (K, n, n) uint8 (round(x * 255)) or
    float16, a C-contiguous block of the caller's output array. Same values as
    ``preprocess.quantize`` of the crop.
    """
    kernels.check_array("view", src, np.float32, 2)
    kernels.check_array("rows", rows, np.int32, 1)
    kernels.check_array("cols", cols, np.int32, 1)
    if out.dtype == np.uint8:
        kernels.check_array("out", out, np.uint8, 3)
        kernels.gather_u8(src, rows, cols, out)
    elif out.dtype == np.float16:
        kernels.check_array("out", out, np.float16, 3)
        tmp = np.empty(out.shape, np.float32)  # numba has no float16 on the CPU
        kernels.gather_f32(src, rows, cols, tmp)
        out[...] = tmp.astype(np.float16)
    else:
        raise TypeError(f"out must be a uint8 or float16 array, got {out.dtype}")
