"""In-plane resampling to the build's pixel size: grids, identity, linearity, label maps, round trips."""

from __future__ import annotations

import numpy as np
import pytest

from patchstore.stages.resample import plane_grid, to_grid_image, to_grid_mask, to_native, to_native_mask


def test_grid_keeps_the_field_of_view():
    """(H, W) at (sy, sx) mm -> round(H sy / p) x round(W sx / p) pixels; anisotropic pixels become square."""
    g = plane_grid((512, 400), (0.703125, 0.8), 0.35)
    assert g.shape == (1029, 914) and not g.identity
    assert g.spacing == pytest.approx((512 * 0.703125 / 1029, 400 * 0.8 / 914))
    assert plane_grid((512, 512), (0.7, 0.7), None).identity
    assert plane_grid((512, 512), (0.70003, 0.7), 0.7).identity  # within 1e-4 relative: as it is


def test_identity_returns_the_slices_unchanged():
    g = plane_grid((30, 20), (0.5, 0.5), 0.5)
    x = np.random.default_rng(0).random((2, 30, 20), dtype=np.float32)
    assert to_grid_image(g, x) is x and to_native(g, x) is x


def test_bilinear_reproduces_a_linear_ramp_away_from_the_border():
    """Edge-aligned bilinear resampling is exact on linear functions of the pixel position in mm; the
    antialiased way back to coarser pixels nearly so (a discrete triangle's centroid is off by < 0.01 mm)."""
    g = plane_grid((40, 50), (1.0, 1.0), 0.4)
    y, x = np.indices((40, 50)) + 0.5  # pixel centres in mm from the top-left edge
    hu = (3 * y - 2 * x)[None].astype(np.float32)
    fine = to_grid_image(g, hu)[0]
    yf, xf = (np.indices(g.shape) + 0.5) * np.array(g.spacing)[:, None, None]
    inner = (slice(2, -2), slice(2, -2))
    np.testing.assert_allclose(fine[inner], (3 * yf - 2 * xf)[inner], atol=1e-4)
    back = to_native(g, fine[None])[0]
    np.testing.assert_allclose(back[inner], hu[0][inner], atol=0.05)


def test_mask_stays_a_label_map_and_survives_a_round_trip():
    """Nearest-neighbour: no new values; up then down by an integer factor gives the mask back."""
    rng = np.random.default_rng(1)
    m = rng.integers(0, 4, (3, 21, 17)).astype(np.uint8)
    g = plane_grid((21, 17), (0.9, 0.9), 0.3)
    fine = to_grid_mask(g, m)
    assert fine.shape == (3, 63, 51) and set(np.unique(fine)) <= set(np.unique(m))
    np.testing.assert_array_equal(to_native_mask(g, fine), m)


def test_coarser_grid_averages_instead_of_skipping_pixels():
    """To coarser pixels, a fine checkerboard averages out to its mean (no aliasing) and a constant
    stays constant to the border."""
    g = plane_grid((64, 64), (0.5, 0.5), 1.25)
    assert g.shape == (26, 26)
    board = (np.indices((64, 64)).sum(0) % 2 * 1000).astype(np.float32)[None]
    down = to_grid_image(g, board)[0]
    assert np.abs(down[2:-2, 2:-2] - 500).max() < 60  # bilinear sampling would give 0s and 1000s
    flat = np.full((1, 64, 64), 300, np.float32)
    np.testing.assert_allclose(to_grid_image(g, flat), 300, rtol=1e-6)
    mixed = plane_grid((64, 40), (0.5, 1.0), 0.8)  # rows shrink, columns grow
    assert to_grid_image(mixed, flat[:, :, :40]).shape == (1, 40, 50)
