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
def smooth_slices(x, w, out):
    """Separable correlation of every axial slice with ``w``, zeros outside the slice.

    x, out: (Z, H, W) float32; w: (2r+1,) float64 (symmetric Gaussian weights). Rows first,
    then columns; sums in float64, the intermediate stored as float32, as
    ``scipy.ndimage.gaussian_filter`` does:

        tmp[i, j] = sum_k w[k] * x[z, i + k - r, j]        (rows outside the slice are 0)
        out[z, i, j] = sum_k w[k] * tmp[i, j + k - r]      (tmp is stored with r zero columns
                                                            on each side: tmp_pad[i, j + k])
    """
    nz, nh, nw = x.shape
    nk = w.shape[0]
    r = (nk - 1) // 2
    tmp = np.zeros((nh, nw + 2 * r), np.float32)
    for z in range(nz):
        for i in prange(nh):
            acc = np.zeros(nw, np.float64)
            for k in range(max(0, r - i), min(nk, nh - i + r)):
                wk = w[k]
                row = i + k - r
                for j in range(nw):
                    acc[j] += wk * x[z, row, j]
            for j in range(nw):
                tmp[i, j + r] = acc[j]
        for i in prange(nh):
            acc = np.zeros(nw, np.float64)
            for k in range(nk):
                wk = w[k]
                for j in range(nw):
                    acc[j] += wk * tmp[i, j + k]
            for j in range(nw):
                out[z, i, j] = acc[j]


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
