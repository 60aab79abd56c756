"""Numba kernels for the patch build: every loop over voxels in ``patchstore`` lives here.

Each kernel writes into an output array the caller allocates and checks (dtype, shape,
C-contiguity) at the call site; each has a plain NumPy/SciPy twin in ``tests/test_kernels.py``.
Kernels take only arrays and scalars; the ``parallel=True`` ones split rows over threads.

Coordinates are (row, col) = (y, x) with pixel centres at integer positions.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def window_scale(hu, hu_min, hu_max, out):
    """HU outside [hu_min, hu_max] -> 0, the rest divided by hu_max.

    hu, out: (Z, H, W) float32; hu_min, hu_max: float32 (compared and divided in float32,
    exactly like NumPy does with a float32 array and Python floats).
    """
    nz, nh, nw = hu.shape
    for zi in prange(nz * nh):
        z = zi // nh
        i = zi % nh
        for j in range(nw):
            v = hu[z, i, j]
            if v >= hu_min and v <= hu_max:
                out[z, i, j] = v / hu_max
            else:
                out[z, i, j] = np.float32(0.0)


@njit(cache=True, parallel=True)
def smooth_rows(x, w, out):
    """Correlate each slice with ``w`` along axis 1 (rows), zeros outside the slice.

    x, out: (Z, H, W) float32; w: (2r+1,) float64 weights. Sums in float64, stores float32,
    as ``scipy.ndimage.correlate1d`` does.

        out[z, i, j] = sum_k w[k] * x[z, i + k - r, j]     (terms with i+k-r outside dropped)
    """
    nz, nh, nw = x.shape
    r = (w.shape[0] - 1) // 2
    for zi in prange(nz * nh):
        z = zi // nh
        i = zi % nh
        k0 = max(0, r - i)
        k1 = min(w.shape[0], nh - i + r)
        for j in range(nw):
            acc = 0.0
            for k in range(k0, k1):
                acc += w[k] * x[z, i + k - r, j]
            out[z, i, j] = acc


@njit(cache=True, parallel=True)
def smooth_cols(x, w, out):
    """Correlate each row with ``w`` along axis 2 (columns), zeros outside the slice.

    x, out: (Z, H, W) float32 (distinct arrays); w: (2r+1,) float64.
    """
    nz, nh, nw = x.shape
    r = (w.shape[0] - 1) // 2
    for zi in prange(nz * nh):
        z = zi // nh
        i = zi % nh
        for j in range(nw):
            k0 = max(0, r - j)
            k1 = min(w.shape[0], nw - j + r)
            acc = 0.0
            for k in range(k0, k1):
                acc += w[k] * x[z, i, j + k - r]
            out[z, i, j] = acc


@njit(cache=True, parallel=True)
def resample_bilinear(src, m, out):
    """Bilinear affine resampling of one slice, zero outside it.

    src, out: (H, W) float32; m: (2, 3) float64 map from an output pixel to an input coordinate:

        (y_in, x_in) = m[:, :2] @ (i, j) + m[:, 2]

    The four neighbours of (y_in, x_in) are weighted bilinearly; neighbours outside the slice
    count as 0 (``scipy.ndimage.map_coordinates(order=1, mode='grid-constant')``).
    """
    nh, nw = src.shape
    oh, ow = out.shape
    for i in prange(oh):
        for j in range(ow):
            y = m[0, 0] * i + m[0, 1] * j + m[0, 2]
            x = m[1, 0] * i + m[1, 1] * j + m[1, 2]
            y0 = np.floor(y)
            x0 = np.floor(x)
            fy = y - y0
            fx = x - x0
            iy = int(y0)
            ix = int(x0)
            acc = 0.0
            for dy in range(2):
                yy = iy + dy
                if yy < 0 or yy >= nh:
                    continue
                wy = fy if dy == 1 else 1.0 - fy
                for dx in range(2):
                    xx = ix + dx
                    if xx < 0 or xx >= nw:
                        continue
                    wx = fx if dx == 1 else 1.0 - fx
                    acc += wy * wx * src[yy, xx]
            out[i, j] = acc


@njit(cache=True, parallel=True)
def resample_nearest(src, m, out):
    """Nearest-neighbour affine resampling of one slice, zero outside it.

    src, out: (H, W) uint8; m: (2, 3) float64, the same map as ``resample_bilinear``; the
    input pixel is (floor(y_in + 0.5), floor(x_in + 0.5)).
    """
    nh, nw = src.shape
    oh, ow = out.shape
    for i in prange(oh):
        for j in range(ow):
            y = m[0, 0] * i + m[0, 1] * j + m[0, 2]
            x = m[1, 0] * i + m[1, 1] * j + m[1, 2]
            iy = int(np.floor(y + 0.5))
            ix = int(np.floor(x + 0.5))
            if iy < 0 or iy >= nh or ix < 0 or ix >= nw:
                out[i, j] = 0
            else:
                out[i, j] = src[iy, ix]


@njit(cache=True)
def grid_counts(mask, n, stride, out):
    """Foreground pixels in every n x n patch of the stride grid, via an integral image.

    mask: (H, W) uint8 0/1; out: (Gr, Gc) int32 with Gr = (H - n) // stride + 1 (Gc alike).

        s[i, j] = mask[:i, :j].sum()                      s: (H+1, W+1)
        out[a, b] = s[r+n, c+n] - s[r, c+n] - s[r+n, c] + s[r, c],   r = a*stride, c = b*stride

            c        c+n
        r   +--------+
            | patch  |
        r+n +--------+
    """
    nh, nw = mask.shape
    s = np.zeros((nh + 1, nw + 1), np.int32)
    for i in range(nh):
        run = 0
        for j in range(nw):
            run += mask[i, j]
            s[i + 1, j + 1] = s[i, j + 1] + run
    gr, gc = out.shape
    for a in range(gr):
        r = a * stride
        for b in range(gc):
            c = b * stride
            out[a, b] = s[r + n, c + n] - s[r, c + n] - s[r + n, c] + s[r, c]


@njit(cache=True)
def gather_u8(src, rows, cols, out):
    """Crop patches at top-left (rows[k], cols[k]) and quantize: round(x * 255) -> uint8.

    src: (H, W) float32 in [0, 1]; rows, cols: (K,) int32; out: (K, n, n) uint8. Rounds half
    to even (``np.rint``) on the float32 product, clipped to [0, 255], like ``quantize``.
    """
    n = out.shape[1]
    scale = np.float32(255.0)
    for k in range(rows.shape[0]):
        r = rows[k]
        c = cols[k]
        for i in range(n):
            for j in range(n):
                v = np.rint(src[r + i, c + j] * scale)
                out[k, i, j] = np.uint8(min(max(v, np.float32(0.0)), scale))


@njit(cache=True)
def gather_f32(src, rows, cols, out):
    """Crop patches at top-left (rows[k], cols[k]). src: (H, W) float32; out: (K, n, n) float32."""
    n = out.shape[1]
    for k in range(rows.shape[0]):
        r = rows[k]
        c = cols[k]
        for i in range(n):
            for j in range(n):
                out[k, i, j] = src[r + i, c + j]


def check_array(name: str, a: np.ndarray, dtype, ndim: int) -> None:
    """Raise TypeError unless ``a`` is a C-contiguous ``ndim``-D array of ``dtype``."""
    dtype = np.dtype(dtype)
    if not isinstance(a, np.ndarray) or a.dtype != dtype:
        found = getattr(a, "dtype", type(a).__name__)
        raise TypeError(f"{name} must be a {dtype} array, got {found}")
    if a.ndim != ndim:
        raise TypeError(f"{name} must be {ndim}-D {dtype}, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise TypeError(f"{name} must be C-contiguous {dtype} (use np.ascontiguousarray)")
