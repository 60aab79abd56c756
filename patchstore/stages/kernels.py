"""Numba kernels for the patch build: every loop over voxels in ``patchstore`` lives here.

Each kernel writes into an output array the caller allocates and checks (dtype, shape,
C-contiguity) at the call site; each has a plain NumPy/SciPy twin in ``tests/test_kernels.py``.
Kernels take only arrays and scalars. One-slice kernels are serial; the ``parallel=True`` ones
split rows, slices or (slice, view) pairs over threads (few, large thread launches: the machine
is shared and OpenMP barriers stall when a thread is descheduled).

Coordinates are (row, col) = (y, x) with pixel centres at integer positions.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True)
def window_slice(hu, hu_min, hu_max, out):
    """``window_scale`` of one (H, W) float32 slice."""
    for i in range(hu.shape[0]):
        for j in range(hu.shape[1]):
            v = hu[i, j]
            out[i, j] = v / hu_max if (v >= hu_min and v <= hu_max) else np.float32(0.0)


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


@njit(cache=True)
def smooth_slice(x, w, out):
    """Separable correlation of one slice with ``w``, zeros outside the slice.

    x, out: (H, W) float32; w: (2r+1,) float64 (symmetric Gaussian weights). Rows first, then
    columns; sums in float64, the intermediate stored as float32, as
    ``scipy.ndimage.gaussian_filter`` does:

        tmp[i, j] = sum_k w[k] * x[i + k - r, j]           (rows outside the slice are 0)
        out[i, j] = sum_k w[k] * tmp[i, j + k - r]         (tmp is stored with r zero columns
                                                            on each side: tmp_pad[i, j + k])
    """
    nh, nw = x.shape
    nk = w.shape[0]
    r = (nk - 1) // 2
    tmp = np.zeros((nh, nw + 2 * r), np.float32)
    acc = np.empty(nw, np.float64)
    for i in range(nh):
        acc[:] = 0.0
        for k in range(max(0, r - i), min(nk, nh - i + r)):
            wk = w[k]
            row = i + k - r
            for j in range(nw):
                acc[j] += wk * x[row, j]
        for j in range(nw):
            tmp[i, j + r] = acc[j]
    for i in range(nh):
        acc[:] = 0.0
        for k in range(nk):
            wk = w[k]
            for j in range(nw):
                acc[j] += wk * tmp[i, j + k]
        for j in range(nw):
            out[i, j] = acc[j]


@njit(cache=True, parallel=True)
def smooth_slices(x, w, out):
    """``smooth_slice`` on every slice, slices split over threads. x, out: (Z, H, W) float32."""
    for z in prange(x.shape[0]):
        smooth_slice(x[z], w, out[z])


@njit(cache=True)
def bilinear_at(src, m, i, j):
    """Bilinear sample (float32) of the (H, W) float32 ``src`` for output pixel (i, j) under ``m``.

        (y_in, x_in) = m[:, :2] @ (i, j) + m[:, 2]

    The four neighbours of (y_in, x_in) are weighted bilinearly in float64; neighbours outside
    the slice count as 0 (``scipy.ndimage.map_coordinates(order=1, mode='grid-constant')``).
    """
    nh, nw = src.shape
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
    return np.float32(acc)


@njit(cache=True)
def resample_bilinear(src, m, out):
    """Bilinear affine resampling of one slice, zero outside it (see ``bilinear_at``).

    src, out: (H, W) float32; m: (2, 3) float64 map from an output pixel to an input coordinate.
    """
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = bilinear_at(src, m, i, j)


@njit(cache=True)
def resample_nearest(src, m, out):
    """Nearest-neighbour affine resampling of one slice, zero outside it.

    src, out: (H, W) uint8; m: (2, 3) float64, the same map as ``resample_bilinear``; the
    input pixel is (floor(y_in + 0.5), floor(x_in + 0.5)).
    """
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = nearest_at(src, m, i, j)


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
def quantize_u8(v):
    """float32 in [0, 1] -> uint8 round(v * 255), half to even, clipped (as ``quantize``)."""
    q = np.rint(v * np.float32(255.0))
    return np.uint8(min(max(q, np.float32(0.0)), np.float32(255.0)))


@njit(cache=True)
def gather_u8(src, rows, cols, out):
    """Crop patches at top-left (rows[k], cols[k]) and quantize: round(x * 255) -> uint8.

    src: (H, W) float32 in [0, 1]; rows, cols: (K,) int32; out: (K, n, n) uint8.
    """
    n = out.shape[1]
    for k in range(rows.shape[0]):
        r = rows[k]
        c = cols[k]
        for i in range(n):
            for j in range(n):
                out[k, i, j] = quantize_u8(src[r + i, c + j])


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


@njit(cache=True)
def gather_resampled(src, m, rows, cols, quantize, out):
    """Crop patches of the bilinear view of ``src`` under ``m`` without resampling the slice.

    Same values as ``resample_bilinear(src, m, view)`` followed by ``gather_u8`` (quantize=True,
    out (K, n, n) uint8) or ``gather_f32`` (quantize=False, out float32), computing only the
    patch pixels: kept patches cover a small part of a view.
    """
    n = out.shape[1]
    for k in range(rows.shape[0]):
        r = rows[k]
        c = cols[k]
        for i in range(n):
            for j in range(n):
                v = bilinear_at(src, m, r + i, c + j)
                if quantize:
                    out[k, i, j] = quantize_u8(v)
                else:
                    out[k, i, j] = v


@njit(cache=True)
def is_identity_map(m):
    """True when the (2, 3) float64 map is exactly the identity."""
    return m[0, 0] == 1.0 and m[0, 1] == 0.0 and m[0, 2] == 0.0 and m[1, 0] == 0.0 and m[1, 1] == 1.0 and m[1, 2] == 0.0


@njit(cache=True)
def nearest_at(src, m, i, j):
    """The nearest-neighbour sample of ``resample_nearest`` at output pixel (i, j) alone."""
    y = m[0, 0] * i + m[0, 1] * j + m[0, 2]
    x = m[1, 0] * i + m[1, 1] * j + m[1, 2]
    iy = int(np.floor(y + 0.5))
    ix = int(np.floor(x + 0.5))
    if iy < 0 or iy >= src.shape[0] or ix < 0 or ix >= src.shape[1]:
        return 0
    return src[iy, ix]


@njit(cache=True, parallel=True)
def volume_labels(mask, maps, n, stride, rule, out):
    """Pass 1 of the build: labels of every grid patch of every view of every slice.

    mask: (Z, H, W) uint8 0/1; maps: (Z, V, 2, 3) float64 (see ``resample_bilinear``);
    rule 0 (majority): 1 iff the patch count * 2 > n * n; rule 1 (centre): the view's pixel at
    (r + n/2, c + n/2); out: (Z, V, Gr, Gc) uint8. (slice, view) pairs are split over threads;
    an identity map reads the slice itself.
    """
    nz, nv = maps.shape[0], maps.shape[1]
    nh, nw = mask.shape[1], mask.shape[2]
    h = n // 2
    for zv in prange(nz * nv):
        z = zv // nv
        v = zv % nv
        if rule == 1:
            for a in range(out.shape[2]):
                for b in range(out.shape[3]):
                    out[z, v, a, b] = nearest_at(mask[z], maps[z, v], a * stride + h, b * stride + h)
            continue
        counts = np.empty((out.shape[2], out.shape[3]), np.int32)
        if is_identity_map(maps[z, v]):
            grid_counts(mask[z], n, stride, counts)
        else:
            view = np.empty((nh, nw), np.uint8)
            resample_nearest(mask[z], maps[z, v], view)
            grid_counts(view, n, stride, counts)
        for a in range(counts.shape[0]):
            for b in range(counts.shape[1]):
                out[z, v, a, b] = 1 if counts[a, b] * 2 > n * n else 0


@njit(cache=True)
def splitmix64(x):
    """SplitMix64 finaliser of a uint64 counter: a counter-based generator, so every pixel's draw
    depends on (key, pixel) only, never on thread scheduling."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True)
def hash_normal(key, i):
    """A standard normal draw (float64) for counter ``i`` (int) under ``key`` (uint64): Box-Muller
    on two SplitMix64 uniforms in (0, 1]."""
    c = key + np.uint64(2) * np.uint64(i)
    u1 = (np.float64(splitmix64(c) >> np.uint64(11)) + 1.0) * (1.0 / 9007199254740992.0)
    u2 = np.float64(splitmix64(c + np.uint64(1)) >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


@njit(cache=True)
def jitter_slice(hu, gain, offset, noise, key, out):
    """out = hu * gain + offset + noise * N(0, 1), the normal draw of pixel (i, j) under ``key``.

    hu, out: (H, W) float32; gain, offset, noise: float32 (HU); key: uint64.
    """
    nw = hu.shape[1]
    for i in range(hu.shape[0]):
        for j in range(nw):
            v = hu[i, j] * gain + offset
            if noise > 0:
                v += noise * hash_normal(key, i * nw + j)
            out[i, j] = v


@njit(cache=True)
def gaussian_taps(sigma):
    """(2r+1,) float64 normalised Gaussian taps, r = int(4 sigma + 0.5) (``preprocess.gaussian_weights``)."""
    r = int(4.0 * sigma + 0.5)
    w = np.empty(2 * r + 1, np.float64)
    for k in range(2 * r + 1):
        w[k] = np.exp(-0.5 * ((k - r) / sigma) ** 2)
    return w / w.sum()


@njit(cache=True)
def preprocess_slice(hu, hu_min, hu_max, w, win, out):
    """Window ``hu`` into ``win``, then smooth with taps ``w`` into ``out`` (copy when len(w) == 1)."""
    window_slice(hu, hu_min, hu_max, win)
    if w.shape[0] > 1:
        smooth_slice(win, w, out)
    else:
        out[:, :] = win


@njit(cache=True)
def area_rows(x, n2):
    """(H, W) -> (n2, W) float64: the rows of ``x`` area-averaged onto n2 equal cells spanning
    them (each row's share of a cell is its overlap with it)."""
    n, w = x.shape
    out = np.zeros((n2, w), np.float64)
    step = n / n2
    for i in range(n2):
        lo, hi = i * step, (i + 1) * step
        for r in range(int(np.floor(lo)), min(int(np.ceil(hi)), n)):
            share = (min(hi, r + 1.0) - max(lo, float(r))) / step
            for j in range(w):
                out[i, j] += share * x[r, j]
    return out


@njit(cache=True)
def coarsen_slice(x, factor, out):
    """``x`` as a scanner with pixels ``factor`` times larger would show it, on the same grid:
    area-averaged onto an edge-aligned grid of round(H / factor) x round(W / factor) cells
    (``area_rows`` along rows, then along columns), then bilinearly back (``resize_taps``: the
    coarse grid's pixel edges meet the slice's at its borders, as ``stages.resample`` maps a
    coarse scan onto the working pixels). x, out: (H, W) float32; factor >= 1 (1: a copy)."""
    nh, nw = x.shape
    h2, w2 = max(1, int(round(nh / factor))), max(1, int(round(nw / factor)))
    coarse = area_rows(np.ascontiguousarray(area_rows(x, h2).T), w2).T
    ly, wy = np.empty(nh, np.int64), np.empty(nh, np.float64)
    lx, wx = np.empty(nw, np.int64), np.empty(nw, np.float64)
    resize_taps(h2, nh, ly, wy)
    resize_taps(w2, nw, lx, wx)
    for i in range(nh):
        r0, r1, a = ly[i], min(ly[i] + 1, h2 - 1), wy[i]
        for j in range(nw):
            c0, c1, b = lx[j], min(lx[j] + 1, w2 - 1), wx[j]
            top = (1.0 - b) * coarse[r0, c0] + b * coarse[r0, c1]
            bottom = (1.0 - b) * coarse[r1, c0] + b * coarse[r1, c1]
            out[i, j] = np.float32((1.0 - a) * top + a * bottom)


@njit(cache=True, parallel=True)
def volume_patches(image, hu_min, hu_max, w, maps, jitter, keys, slice_pairs, pair_bounds, pair_view, rows, cols,
                   quantize, out):
    """Pass 2 of the build: (jitter +) window + smooth + resample + crop the kept patches of some slices.

    image: (S, H, W) float32 HU, the slices holding kept patches; hu_min, hu_max: float32;
    w: (2r+1,) float64 Gaussian taps (length 1 = no smoothing); maps: (S, V, 2, 3) float64;
    jitter: (S, V, 5) float32 (gain, offset HU, noise SD HU, blur SD px, coarsening factor) and
    keys: (S, V) uint64 of the intensity augmentation of each view (``jitter_slice``, then a
    Gaussian blur of the HU, then ``coarsen_slice``; gain 1, offset 0, noise 0, blur 0, factor 1
    = none).
    The kept patches are grouped by slice, then by view, CSR style:

        slice s owns pairs    p in [slice_pairs[s], slice_pairs[s+1])
        pair p is view        pair_view[p], owning patches k in [pair_bounds[p], pair_bounds[p+1])
        patch k               top-left (rows[k], cols[k]) -> out[k]

    out: (K, n, n) uint8 (quantize=True: round(x * 255)) or float32 (quantize=False).
    Slices are split over threads; each holds a few (H, W) float32 scratch slices: the plain
    preprocessed slice once, and for each jittered view its own. Views are sampled only at the
    kept patches' pixels (``gather_resampled``).
    """
    nh, nw = image.shape[1], image.shape[2]
    for s in prange(image.shape[0]):
        win = np.empty((nh, nw), np.float32)
        plain = np.empty((nh, nw), np.float32)
        jittered = np.empty((nh, nw), np.float32)
        own = np.empty((nh, nw), np.float32)
        plain_done = False
        for p in range(slice_pairs[s], slice_pairs[s + 1]):
            v = pair_view[p]
            gain, offset, noise, blur = jitter[s, v, 0], jitter[s, v, 1], jitter[s, v, 2], jitter[s, v, 3]
            coarse = jitter[s, v, 4]
            if gain != 1 or offset != 0 or noise > 0 or blur > 0 or coarse > 1:
                jitter_slice(image[s], gain, offset, noise, keys[s, v], jittered)
                if blur > 0.05:  # below, the taps are [0, 1, 0]
                    smooth_slice(jittered, gaussian_taps(blur), own)
                    jittered[:, :] = own
                if coarse > 1.01:  # below, the grid keeps (almost) every pixel
                    coarsen_slice(jittered, coarse, own)
                    jittered[:, :] = own
                preprocess_slice(jittered, hu_min, hu_max, w, win, own)
                pre = own
            else:
                if not plain_done:
                    preprocess_slice(image[s], hu_min, hu_max, w, win, plain)
                    plain_done = True
                pre = plain
            m = maps[s, v]
            k0, k1 = pair_bounds[p], pair_bounds[p + 1]
            if not is_identity_map(m):
                gather_resampled(pre, m, rows[k0:k1], cols[k0:k1], quantize, out[k0:k1])
            elif quantize:
                gather_u8(pre, rows[k0:k1], cols[k0:k1], out[k0:k1])
            else:
                gather_f32(pre, rows[k0:k1], cols[k0:k1], out[k0:k1])


@njit(cache=True)
def resize_taps(n_in, n_out, lower, weight):
    """Linear taps of an edge-aligned resize of one axis from ``n_in`` to ``n_out`` pixels.

    Output pixel i samples input coordinate x = (i + 0.5) * n_in / n_out - 0.5 (pixel edges of
    both grids coincide at the borders), clamped to [0, n_in - 1] (edge pixels repeat):

        value[i] = (1 - weight[i]) * in[lower[i]] + weight[i] * in[lower[i] + 1]

    lower: (n_out,) int64 with lower + 1 <= n_in - 1 when n_in >= 2; weight: (n_out,) float64.
    """
    f = n_in / n_out
    for i in range(n_out):
        x = min(max((i + 0.5) * f - 0.5, 0.0), n_in - 1.0)
        lo = min(int(np.floor(x)), max(n_in - 2, 0))
        lower[i] = lo
        weight[i] = x - lo if n_in >= 2 else 0.0


@njit(cache=True, parallel=True)
def resize_bilinear(src, ly, wy, lx, wx, out):
    """Separable bilinear resize of every slice: src (Z, H, W) float32 -> out (Z, H2, W2) float32.

    ly, wy: (H2,) taps along rows and lx, wx: (W2,) along columns from ``resize_taps``; sums in
    float64. (slice, output row) pairs are split over threads.
    """
    nz, h2, w2 = out.shape
    w_in = src.shape[2]
    for zi in prange(nz * h2):
        z = zi // h2
        i = zi % h2
        r0 = ly[i]
        r1 = min(r0 + 1, src.shape[1] - 1)
        a = wy[i]
        for j in range(w2):
            c0 = lx[j]
            c1 = min(c0 + 1, w_in - 1)
            b = wx[j]
            top = (1.0 - b) * src[z, r0, c0] + b * src[z, r0, c1]
            bottom = (1.0 - b) * src[z, r1, c0] + b * src[z, r1, c1]
            out[z, i, j] = np.float32((1.0 - a) * top + a * bottom)


@njit(cache=True, parallel=True)
def resize_filtered(src, row_start, row_w, col_start, col_w, out):
    """Separable resize with explicit taps: src (Z, H, W) float32 -> out (Z, H2, W2) float32.

        tmp[z, i, x] = sum_k row_w[i, k] * src[z, row_start[i] + k, x]        (rows first)
        out[z, i, j] = sum_k col_w[j, k] * tmp[z, i, col_start[j] + k]

    row_start: (H2,) int64, row_w: (H2, K) float64 (zero-padded taps), likewise for columns;
    sums in float64, tmp stored as float32 per thread. Slices are split over threads.
    """
    nz, h2, w2 = out.shape
    w_in = src.shape[2]
    for z in prange(nz):
        tmp = np.empty((h2, w_in), np.float32)
        acc = np.empty(w_in, np.float64)
        for i in range(h2):
            acc[:] = 0.0
            for k in range(row_w.shape[1]):
                wk = row_w[i, k]
                if wk != 0.0:
                    r = row_start[i] + k
                    for x in range(w_in):
                        acc[x] += wk * src[z, r, x]
            for x in range(w_in):
                tmp[i, x] = acc[x]
        for i in range(h2):
            for j in range(w2):
                s = 0.0
                for k in range(col_w.shape[1]):
                    wk = col_w[j, k]
                    if wk != 0.0:
                        s += wk * tmp[i, col_start[j] + k]
                out[z, i, j] = np.float32(s)


@njit(cache=True, parallel=True)
def resize_nearest(src, ly, wy, lx, wx, out):
    """Nearest-neighbour resize with the taps of ``resize_bilinear`` (the nearer of the two input
    pixels, the lower one on a tie): a label map stays a label map. src, out: uint8."""
    nz, h2, w2 = out.shape
    for zi in prange(nz * h2):
        z = zi // h2
        i = zi % h2
        r = ly[i] + (1 if wy[i] > 0.5 else 0)
        for j in range(w2):
            out[z, i, j] = src[z, r, lx[j] + (1 if wx[j] > 0.5 else 0)]


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
