"""Each numba kernel against its plain NumPy/SciPy twin."""

import numpy as np
import pytest
from scipy import ndimage

from patchstore.stages import kernels
from patchstore.stages.augment import affine_map
from patchstore.stages.preprocess import gaussian_weights, quantize


def window_twin(hu, hu_min, hu_max):
    inside = (hu >= hu_min) & (hu <= hu_max)
    return np.where(inside, hu / np.float32(hu_max), np.float32(0)).astype(np.float32)


def nearest_twin(src, m):
    i, j = np.indices(src.shape, dtype=np.float64)
    y = m[0, 0] * i + m[0, 1] * j + m[0, 2]
    x = m[1, 0] * i + m[1, 1] * j + m[1, 2]
    iy, ix = np.floor(y + 0.5).astype(np.int64), np.floor(x + 0.5).astype(np.int64)
    ok = (iy >= 0) & (iy < src.shape[0]) & (ix >= 0) & (ix < src.shape[1])
    out = np.zeros_like(src)
    out[ok] = src[iy[ok], ix[ok]]
    return out


def counts_twin(mask, n, stride):
    rows = range(0, mask.shape[0] - n + 1, stride)
    cols = range(0, mask.shape[1] - n + 1, stride)
    return np.array([[int(mask[r : r + n, c : c + n].sum()) for c in cols] for r in rows], np.int32)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_window_scale_exact(rng):
    """window_scale equals the NumPy where/divide exactly, bounds included, float32 compare."""
    hu = rng.uniform(-1000, 3000, (3, 17, 23)).astype(np.float32)
    hu[0, 0, :4] = [100.1, 1500.0, 99.99, 1500.01]
    out = np.empty_like(hu)
    kernels.window_scale(hu, np.float32(100.1), np.float32(1500.0), out)
    np.testing.assert_array_equal(out, window_twin(hu, 100.1, 1500.0))


def test_smooth_slices_matches_scipy(rng):
    """Separable smoothing equals scipy gaussian_filter per slice (zero outside) within 1e-5."""
    x = rng.random((2, 19, 27), dtype=np.float32)
    for sigma in (0.8, 2.0):
        out = np.empty_like(x)
        kernels.smooth_slices(x, gaussian_weights(sigma), out)
        ref = ndimage.gaussian_filter(x, (0, sigma, sigma), mode="constant", cval=0.0, truncate=4.0)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_resample_bilinear_matches_map_coordinates(rng):
    """Bilinear resampling equals map_coordinates(order=1, mode='grid-constant') within 1e-5."""
    src = rng.random((21, 30), dtype=np.float32)
    for angle, shift in ((10.0, (1.3, -2.7)), (-33.0, (0.0, 0.0)), (0.0, (3.5, 0.25))):
        m = affine_map(angle, np.array(shift), src.shape)
        out = np.empty_like(src)
        kernels.resample_bilinear(src, m, out)
        i, j = np.indices(src.shape, dtype=np.float64)
        coords = np.stack([m[0, 0] * i + m[0, 1] * j + m[0, 2], m[1, 0] * i + m[1, 1] * j + m[1, 2]])
        ref = ndimage.map_coordinates(src, coords, order=1, mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_resample_nearest_exact(rng):
    """Nearest resampling equals the NumPy floor(c + 0.5) twin exactly."""
    src = rng.integers(0, 2, (21, 30), dtype=np.uint8)
    for angle, shift in ((10.0, (1.3, -2.7)), (-90.0, (0.5, -0.5)), (7.0, (-4.0, 4.0))):
        m = affine_map(angle, np.array(shift), src.shape)
        out = np.empty_like(src)
        kernels.resample_nearest(src, m, out)
        np.testing.assert_array_equal(out, nearest_twin(src, m))


def test_grid_counts_brute_force(rng):
    """Integral-image box sums equal brute-force sums on the stride grid."""
    mask = rng.integers(0, 2, (45, 52), dtype=np.uint8)
    for n, stride in ((8, 3), (16, 12), (45, 1)):
        ref = counts_twin(mask, n, stride)
        out = np.zeros(ref.shape, np.int32)
        kernels.grid_counts(mask, n, stride, out)
        np.testing.assert_array_equal(out, ref)


def test_gather_quantizes_like_quantize(rng):
    """gather_u8 equals quantize(crop, 'uint8'); gather_f32 equals the crop (fancy indexing)."""
    src = rng.random((40, 50), dtype=np.float32)
    src[0, :3] = [0.5 / 255, 1.5 / 255, 1.0]  # ties round half to even like np.rint
    rows = np.array([0, 5, 8, 0], np.int32)
    cols = np.array([0, 3, 42, 0], np.int32)
    n = 8
    crops = src[rows[:, None, None] + np.arange(n)[:, None], cols[:, None, None] + np.arange(n)]
    u8 = np.empty((4, n, n), np.uint8)
    kernels.gather_u8(src, rows, cols, u8)
    np.testing.assert_array_equal(u8, quantize(crops, "uint8"))
    f32 = np.empty((4, n, n), np.float32)
    kernels.gather_f32(src, rows, cols, f32)
    np.testing.assert_array_equal(f32, crops)


def test_check_array_names_expected_dtype():
    """Wrong dtype or layout raises TypeError naming what was expected."""
    with pytest.raises(TypeError, match="must be a float32 array, got float64"):
        kernels.check_array("image", np.zeros((2, 2)), np.float32, 2)
    with pytest.raises(TypeError, match="C-contiguous uint8"):
        kernels.check_array("mask", np.zeros((4, 4), np.uint8)[:, ::2], np.uint8, 2)


def test_gather_resampled_equals_resample_then_gather(rng):
    """Sampling only patch pixels gives the same bytes as resampling the slice, then cropping."""
    src = rng.random((40, 50), dtype=np.float32)
    m = affine_map(-10.0, np.array([2.3, -1.7]), src.shape)
    rows, cols = np.array([0, 8, 24], np.int32), np.array([34, 0, 17], np.int32)
    view = np.empty_like(src)
    kernels.resample_bilinear(src, m, view)
    for quantize, dtype, gather in ((True, np.uint8, kernels.gather_u8), (False, np.float32, kernels.gather_f32)):
        ref, out = np.empty((3, 16, 16), dtype), np.empty((3, 16, 16), dtype)
        gather(view, rows, cols, ref)
        kernels.gather_resampled(src, m, rows, cols, quantize, out)
        np.testing.assert_array_equal(out, ref)


def test_volume_labels_equals_per_view_twin(rng):
    """Pass-1 driver equals nearest twin + brute-force counts + the 513 rule, view by view."""
    mask = (rng.random((2, 30, 34)) > 0.4).astype(np.uint8)
    maps = np.stack([[affine_map(a, np.array(s), mask.shape[1:]) for a, s in ((0, (0, 0)), (10, (1.2, -0.4)))]] * 2)
    n, stride = 8, 5
    out = np.zeros((2, 2) + counts_twin(mask[0], n, stride).shape, np.uint8)
    kernels.volume_labels(mask, np.ascontiguousarray(maps), n, stride, 0, out)
    for z in range(2):
        for v in range(2):
            ref = counts_twin(nearest_twin(mask[z], maps[z, v]), n, stride) * 2 > n * n
            np.testing.assert_array_equal(out[z, v], ref)


def test_volume_labels_centre_rule_reads_the_view_at_the_patch_centre(rng):
    """Rule 1 labels each grid patch by the nearest-neighbour view's pixel (r + n/2, c + n/2)."""
    mask = (rng.random((2, 30, 34)) > 0.5).astype(np.uint8)
    maps = np.stack([[affine_map(a, np.array(s), mask.shape[1:]) for a, s in ((0, (0, 0)), (10, (1.2, -0.4)))]] * 2)
    n, stride = 8, 5
    out = np.zeros((2, 2) + counts_twin(mask[0], n, stride).shape, np.uint8)
    kernels.volume_labels(mask, np.ascontiguousarray(maps), n, stride, 1, out)
    rows, cols = np.arange(0, 30 - n + 1, stride) + n // 2, np.arange(0, 34 - n + 1, stride) + n // 2
    for z in range(2):
        for v in range(2):
            np.testing.assert_array_equal(out[z, v], nearest_twin(mask[z], maps[z, v])[np.ix_(rows, cols)])


def resize_coords(n_in, n_out):
    """Edge-aligned source coordinates of an axis resize, clamped (torch's align_corners=False)."""
    return np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)


@pytest.mark.parametrize("shape_out", [(61, 47), (13, 9), (30, 34)])
def test_resize_bilinear_equals_map_coordinates(rng, shape_out):
    """Separable bilinear resize = scipy map_coordinates(order=1) at the edge-aligned, clamped coordinates."""
    src = rng.random((2, 30, 34), dtype=np.float32)
    taps = [np.empty(k, np.int64) for k in shape_out], [np.empty(k, np.float64) for k in shape_out]
    kernels.resize_taps(30, shape_out[0], taps[0][0], taps[1][0])
    kernels.resize_taps(34, shape_out[1], taps[0][1], taps[1][1])
    out = np.empty((2,) + shape_out, np.float32)
    kernels.resize_bilinear(src, taps[0][0], taps[1][0], taps[0][1], taps[1][1], out)
    yy, xx = np.meshgrid(resize_coords(30, shape_out[0]), resize_coords(34, shape_out[1]), indexing="ij")
    for z in range(2):
        ref = ndimage.map_coordinates(src[z].astype(np.float64), [yy, xx], order=1, mode="nearest")
        np.testing.assert_allclose(out[z], ref, rtol=0, atol=2e-7)
    near = np.empty((2,) + shape_out, np.uint8)
    labels = (src * 5).astype(np.uint8)
    kernels.resize_nearest(labels, taps[0][0], taps[1][0], taps[0][1], taps[1][1], near)
    iy = np.floor(resize_coords(30, shape_out[0]) + 0.5 - 1e-12).astype(int)  # a tie goes to the lower pixel
    ix = np.floor(resize_coords(34, shape_out[1]) + 0.5 - 1e-12).astype(int)
    np.testing.assert_array_equal(near, labels[:, iy][:, :, ix])


def test_hash_normal_is_a_standard_normal_keyed_by_pixel():
    """Counter-based draws: N(0, 1) moments, the same for the same (key, pixel), other keys differ."""
    hu = np.zeros((200, 300), np.float32)
    a, b, c = (np.empty_like(hu) for _ in range(3))
    kernels.jitter_slice(hu, np.float32(1), np.float32(0), np.float32(1), np.uint64(7), a)
    kernels.jitter_slice(hu, np.float32(1), np.float32(0), np.float32(1), np.uint64(7), b)
    kernels.jitter_slice(hu, np.float32(1), np.float32(0), np.float32(1), np.uint64(8), c)
    assert np.array_equal(a, b) and np.corrcoef(a.ravel(), c.ravel())[0, 1] < 0.01
    assert abs(a.mean()) < 0.01 and abs(a.std() - 1) < 0.01 and abs(np.mean(a**4) - 3) < 0.05


@pytest.mark.parametrize("shape", [(40, 60), (37, 53)])
def test_coarsen_slice_is_a_coarser_grid_brought_back(rng, shape):
    """Factor 1 keeps the slice; a constant stays constant; with an integer factor dividing the
    size, the coarse cells are block means and the result is the edge-aligned bilinear resize of
    them; any factor keeps the slice's mean to within the edges' share."""
    x = rng.normal(100, 50, shape).astype(np.float32)
    out = np.empty_like(x)
    kernels.coarsen_slice(x, 1.0, out)
    np.testing.assert_allclose(out, x, rtol=1e-6, atol=1e-4)
    kernels.coarsen_slice(np.full(shape, 7.5, np.float32), 2.7, out)
    np.testing.assert_allclose(out, 7.5, rtol=1e-6)
    if shape == (40, 60):
        kernels.coarsen_slice(x, 4.0, out)
        blocks = x.reshape(10, 4, 15, 4).mean(axis=(1, 3))
        ly, wy, lx, wx = np.empty(40, np.int64), np.empty(40), np.empty(60, np.int64), np.empty(60)
        kernels.resize_taps(10, 40, ly, wy)
        kernels.resize_taps(15, 60, lx, wx)
        up = np.empty((1, 40, 60), np.float32)
        kernels.resize_bilinear(blocks[None].astype(np.float32), ly, wy, lx, wx, up)
        np.testing.assert_allclose(out, up[0], rtol=1e-5, atol=1e-3)
    kernels.coarsen_slice(x, 2.6, out)
    assert abs(out.mean() - x.mean()) < 2.0 and out.std() < 0.6 * x.std()


def test_jitter_slice_is_gain_then_offset():
    hu = np.array([[-1000, 0, 100, 1000]], np.float32)
    out = np.empty_like(hu)
    kernels.jitter_slice(hu, np.float32(1.1), np.float32(-20), np.float32(0), np.uint64(0), out)
    np.testing.assert_allclose(out, hu * 1.1 - 20, rtol=1e-6)


def test_gaussian_taps_equal_preprocess_weights():
    for sigma in (0.3, 1.0, 2.5):
        np.testing.assert_allclose(kernels.gaussian_taps(sigma), gaussian_weights(sigma), rtol=1e-12)
