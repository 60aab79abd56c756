"""Overlapping n x n patches on a stride grid, their labels, origins and crops (paper II.B).

Grid along one axis of length ``size``:

    starts 0, s, 2s, ... while start + n <= size          G = (size - n) // s + 1

    |<--- n --->|
    +-----------+---------- ... ----+
    0     s     |  2s               size
          |<--- n --->|

Label rule: a patch is 1 (vertebra) iff more than half of its pixels are vertebra,
``count * 2 > n * n`` (513 of 1024 for 32x32 -> 1, 512 -> 0).

Candidates of a volume are numbered in the order (slice z, view a, grid row gi, grid col gj):

    index = ((z * n_views + a) * Gr + gi) * Gc + gj
    origin = (z, gi * stride, gj * stride, a)      int32, top-left corner of the patch
"""

from __future__ import annotations

import numpy as np

from patchstore.stages import kernels


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


def volume_labels(mask: np.ndarray, maps: np.ndarray, n: int, stride: int) -> np.ndarray:
    """(Z, H, W) uint8 0/1 mask and (Z, V, 2, 3) float64 view maps -> (Z, V, Gr, Gc) uint8 labels.

    The label of every grid patch of every (nearest-neighbour) mask view; views are never kept.
    """
    kernels.check_array("mask", mask, np.uint8, 3)
    kernels.check_array("maps", maps, np.float64, 4)
    if maps.shape[0] != mask.shape[0] or maps.shape[2:] != (2, 3):
        raise ValueError(f"maps must have shape ({mask.shape[0]}, V, 2, 3), got {maps.shape}")
    out = np.zeros(maps.shape[:2] + grid_shape(mask.shape[1:], n, stride), np.uint8)
    if out.size:
        kernels.volume_labels(mask, maps, n, stride, out)
    return out


def label_rule(counts: np.ndarray, n: int) -> np.ndarray:
    """Foreground pixel counts -> uint8 labels, 1 iff count > n*n/2."""
    return (np.asarray(counts) * 2 > n * n).astype(np.uint8)


def slice_labels(mask: np.ndarray, n: int, stride: int) -> np.ndarray:
    """(H, W) uint8 mask -> (Gr * Gc,) uint8 labels, row-major over the grid."""
    return label_rule(grid_counts(mask, n, stride), n).ravel()


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
