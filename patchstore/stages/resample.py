"""In-plane resampling of axial slices to the build's pixel size (``BuildConfig.pixel_mm``).

OP-convNet decides a whole n x n patch, so what a patch shows in millimetres is set by the pixel
size; scans from other scanners (0.6-1.0 mm, or 3 mm) are brought to one pixel size first, as
nnU-Net and TotalSegmentator bring every scan to their training spacing. Slice spacing is kept.

The grid keeps the slice's field of view: an (H, W) slice of pixels (sy, sx) mm becomes
(H2, W2) = (round(H sy / p), round(W sx / p)) pixels of (H sy / H2, W sx / W2) ~ p mm, and the
pixel edges of both grids meet at the borders (edge-aligned, like torch's align_corners=False):

    native   |  0  |  1  |  2  |  3  |            output pixel i samples native coordinate
    output   | 0| 1| 2| 3| 4| 5| 6| 7|            x = (i + 0.5) * H / H2 - 0.5   (clamped)

Images go bilinearly when the grid is finer (numba ``resize_bilinear``) and through a triangle
filter as wide as the output pixel when it is coarser (antialiased, as PIL and torch's
``antialias=True`` do: plain bilinear sampling would skip input pixels and alias noise and thin
bone); masks nearest-neighbour (a label map stays one); ``to_native`` brings a probability map
back the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from patchstore.stages import kernels

SAME_PIXEL_RTOL = 1e-4  # closer than this to the target, a slice is used as it is (bit-identical)


@dataclass(frozen=True)
class PlaneGrid:
    """The in-plane grids of one volume: ``native`` (H, W) with ``native_spacing`` (sy, sx) mm,
    and ``shape`` (H2, W2), where the build and inference work."""

    native: tuple[int, int]
    native_spacing: tuple[float, float]
    shape: tuple[int, int]

    @property
    def identity(self) -> bool:
        return self.shape == self.native

    @property
    def spacing(self) -> tuple[float, float]:
        """(sy, sx) mm of the working grid."""
        return tuple(s * n / m for s, n, m in zip(self.native_spacing, self.native, self.shape))


def plane_grid(native: tuple[int, int], spacing_yx: tuple[float, float], pixel_mm: float | None) -> PlaneGrid:
    """The working grid for slices of shape ``native`` with pixels ``spacing_yx`` (sy, sx) mm;
    ``pixel_mm`` None, or within SAME_PIXEL_RTOL of both, keeps the native grid."""
    native = (int(native[0]), int(native[1]))
    spacing = (float(spacing_yx[0]), float(spacing_yx[1]))
    if pixel_mm is None or all(abs(s - pixel_mm) <= SAME_PIXEL_RTOL * pixel_mm for s in spacing):
        return PlaneGrid(native, spacing, native)
    shape = tuple(max(1, int(round(n * s / pixel_mm))) for n, s in zip(native, spacing))
    return PlaneGrid(native, spacing, shape)


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    lower, weight = np.empty(n_out, np.int64), np.empty(n_out, np.float64)
    kernels.resize_taps(n_in, n_out, lower, weight)
    return lower, weight


def triangle_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Taps of an antialiased linear resize of one axis, n_out < n_in: output pixel i averages the
    input pixels within one output pixel (f = n_in / n_out input pixels) of its centre
    x = (i + 0.5) f - 0.5, weights max(0, 1 - |j - x| / f) normalised over the slice.

    Returns start (n_out,) int64 and weights (n_out, K) float64: input pixels start[i] + k.
    """
    f = n_in / n_out
    x = (np.arange(n_out) + 0.5) * f - 0.5
    start = np.clip(np.floor(x - f).astype(np.int64) + 1, 0, None)
    k = int(np.ceil(2 * f)) + 1
    j = start[:, None] + np.arange(k)[None, :]
    w = np.where(j < n_in, np.maximum(0.0, 1.0 - np.abs(j - x[:, None]) / f), 0.0)
    return start, w / w.sum(axis=1, keepdims=True)


def _axis_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Taps of one axis for ``resize_filtered``: antialiased when shrinking, bilinear when growing."""
    if n_out < n_in:
        return triangle_taps(n_in, n_out)
    lower, weight = _taps(n_in, n_out)
    upper = np.where(n_in > 1, 1.0, 0.0) * weight
    return lower, np.ascontiguousarray(np.column_stack([1.0 - weight, upper]))


def _resize(x: np.ndarray, shape: tuple[int, int], dtype, kernel) -> np.ndarray:
    x = np.ascontiguousarray(x)
    kernels.check_array("slices", x, dtype, 3)
    if x.shape[1:] == tuple(shape):
        return x
    out = np.empty((x.shape[0],) + tuple(shape), dtype)
    if not out.size:
        return out
    if kernel is kernels.resize_bilinear and (shape[0] < x.shape[1] or shape[1] < x.shape[2]):
        kernels.resize_filtered(x, *_axis_taps(x.shape[1], shape[0]), *_axis_taps(x.shape[2], shape[1]), out)
    else:
        kernel(x, *_taps(x.shape[1], shape[0]), *_taps(x.shape[2], shape[1]), out)
    return out


def to_grid_image(grid: PlaneGrid, hu: np.ndarray) -> np.ndarray:
    """(Z, H, W) float32 native slices -> (Z, H2, W2) float32 (bilinear); the same array if identity."""
    return _resize(hu, grid.shape, np.float32, kernels.resize_bilinear)


def to_grid_mask(grid: PlaneGrid, mask: np.ndarray) -> np.ndarray:
    """(Z, H, W) uint8 native mask -> (Z, H2, W2) uint8 (nearest); the same array if identity."""
    return _resize(mask, grid.shape, np.uint8, kernels.resize_nearest)


def to_native(grid: PlaneGrid, x: np.ndarray) -> np.ndarray:
    """(Z, H2, W2) float32 on the working grid -> (Z, H, W) float32 native (bilinear)."""
    return _resize(x, grid.native, np.float32, kernels.resize_bilinear)


def to_native_mask(grid: PlaneGrid, mask: np.ndarray) -> np.ndarray:
    """(Z, H2, W2) uint8 on the working grid -> (Z, H, W) uint8 native (nearest)."""
    return _resize(mask, grid.native, np.uint8, kernels.resize_nearest)
