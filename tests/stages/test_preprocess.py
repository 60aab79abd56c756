"""Preprocessing keeps the reference semantics (window, smooth, quantize) on numba kernels."""

import numpy as np
from scipy import ndimage

from patchstore.config import BuildConfig
from patchstore.stages.preprocess import preprocess, preprocess_float, quantize, smooth, to_unit, window


def test_window_reference_semantics():
    """Outside [hu_min, hu_max] -> 0, inside / hu_max; int16 and 2-D input accepted."""
    hu = np.array([[-1000, 99, 100, 750, 1500, 1501]], np.int16)
    out = window(hu, 100.0, 1500.0)
    assert out.dtype == np.float32 and out.shape == hu.shape
    np.testing.assert_array_equal(out, np.float32([[0, 0, 100 / 1500, 0.5, 1, 0]]))


def test_smooth_matches_scipy_per_slice():
    """smooth equals scipy gaussian_filter over the last two axes only, within 1e-5."""
    x = np.random.default_rng(0).random((3, 20, 24), dtype=np.float32)
    ref = ndimage.gaussian_filter(x, (0, 0.8, 0.8), mode="constant", cval=0.0, truncate=4.0)
    np.testing.assert_allclose(smooth(x, 0.8), ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(smooth(x[0], 0.8), ref[0], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(smooth(x, 0.0), x)


def test_preprocess_is_quantized_preprocess_float():
    """preprocess = quantize(preprocess_float) in both stored dtypes; to_unit inverts to 1/510."""
    hu = np.random.default_rng(1).uniform(-500, 2500, (2, 16, 16)).astype(np.float32)
    for dtype in ("uint8", "float16"):
        cfg = BuildConfig.paper(dtype=dtype)
        f = preprocess_float(hu, cfg)
        assert f.dtype == np.float32 and f.min() >= 0 and f.max() <= 1
        q = preprocess(hu, cfg)
        np.testing.assert_array_equal(q, quantize(f, dtype))
        assert np.abs(to_unit(q) - f).max() <= 1 / 510 + 1e-6
