"""Views: enumeration, exact identity, image and mask moved by the same map."""

import numpy as np
import pytest

from patchstore.config import BuildConfig
from patchstore.stages.augment import (
    affine_map,
    augment_slice,
    draw_shifts,
    slice_maps,
    view_angles,
    view_image,
    view_mask,
    view_shifted,
)


def square(h=48, w=56, top=10, left=20, size=12):
    img = np.zeros((h, w), np.float32)
    img[top : top + size, left : left + size] = 1.0
    return img, (img > 0).astype(np.uint8)


def centroid(a):
    i, j = np.indices(a.shape)
    return np.array([(i * a).sum(), (j * a).sum()]) / a.sum()


def test_view_enumeration():
    """a = r * (1 + translations) + t; only t >= 1 copies are shifted; view 0 is the original."""
    cfg = BuildConfig.paper(angles=(-10, 10), translations=2)
    assert cfg.n_views == 9
    np.testing.assert_array_equal(view_angles(cfg), [0, 0, 0, -10, -10, -10, 10, 10, 10])
    np.testing.assert_array_equal(view_shifted(cfg), [False, True, True] * 3)
    s = draw_shifts(5, cfg, np.random.default_rng(3))
    assert s.shape == (5, 9, 2)
    assert np.all(s[:, ~view_shifted(cfg)] == 0) and np.all(np.abs(s) <= cfg.max_shift)
    assert np.all(s[:, view_shifted(cfg)] != 0)
    np.testing.assert_array_equal(s, draw_shifts(5, cfg, np.random.default_rng(3)))


def test_identity_view_is_exact():
    """The identity view is the slice itself, no resampling."""
    img = np.random.default_rng(0).random((20, 30), dtype=np.float32)
    m = affine_map(0.0, np.zeros(2), img.shape)
    np.testing.assert_array_equal(view_image(img, m), img)
    mask = (img > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(view_mask(mask, m), mask)


@pytest.mark.parametrize("angle,shift", [(10.0, (0.0, 0.0)), (-10.0, (2.6, -3.3)), (0.0, (-1.4, 3.9)), (30.0, (1.0, 1.0))])
def test_image_and_mask_stay_aligned(angle, shift):
    """A bright square and its mask, rotated and shifted, land on the same pixels, where expected."""
    img, mask = square()
    maps = slice_maps(np.array([angle]), np.array([shift]), img.shape)
    vi, vm = augment_slice(img, mask, maps)
    vi, vm = vi[0], vm[0]
    assert vm.sum() > 0.8 * mask.sum()
    assert np.all(vi[vm == 1] >= 0.25) and np.all(vi[vm == 0] <= 0.75)
    np.testing.assert_allclose(centroid(vm), centroid(vi), atol=0.5)
    # forward map: p_out = R(angle) (p_in - c) + c + t, R acting on (row, col)
    c = (np.array(img.shape) - 1) / 2
    th = np.deg2rad(angle)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    expected = rot @ (centroid(img) - c) + c + np.array(shift)
    np.testing.assert_allclose(centroid(vi), expected, atol=0.05)


def test_positive_angle_is_counter_clockwise():
    """A pixel right of the centre moves up (smaller row) under +90 degrees."""
    img = np.zeros((11, 11), np.float32)
    img[5, 9] = 1.0
    out = view_image(img, affine_map(90.0, np.zeros(2), img.shape))
    assert np.unravel_index(np.argmax(out), out.shape) == (1, 5)


def test_wrong_dtype_raises():
    """Resampling a float64 slice names the expected dtype."""
    m = affine_map(10.0, np.zeros(2), (8, 8))
    with pytest.raises(TypeError, match="float32"):
        view_image(np.zeros((8, 8)), m)
    with pytest.raises(TypeError, match="uint8"):
        view_mask(np.zeros((8, 8), np.int64), m)


@pytest.mark.parametrize("zoom", [0.8, 1.25])
def test_zoom_scales_about_the_centre(zoom):
    """A centred square keeps its centre and its side grows by the zoom factor; rotation composes."""
    img, mask = square(h=65, w=65, top=22, left=22, size=21)
    for angle in (0.0, 10.0):
        vi, vm = augment_slice(img, mask, affine_map(angle, np.zeros(2), img.shape, zoom)[None])
        np.testing.assert_allclose(centroid(vi[0]), (32, 32), atol=0.05)
        assert abs(vi[0].sum() / img.sum() - zoom ** 2) < 0.02
        assert abs(vm[0].sum() / mask.sum() - zoom ** 2) < 0.1


def test_mirror_reverses_the_columns_then_rotates_and_shifts():
    """A mirrored view is the slice with its columns reversed (exactly, image and mask), and
    rotation and shift act on the mirrored slice as on any other."""
    img, mask = square(h=48, w=57, top=10, left=5, size=12)
    img = img + np.arange(57, dtype=np.float32)[None, :] / 100  # asymmetric inside the square too
    vi, vm = augment_slice(img, mask, affine_map(0.0, np.zeros(2), img.shape, 1.0, mirror=True)[None])
    np.testing.assert_allclose(vi[0], img[:, ::-1], atol=1e-5)
    np.testing.assert_array_equal(vm[0], mask[:, ::-1])
    shift = np.array([2.0, -3.0])
    both = augment_slice(img, mask, affine_map(10.0, shift, img.shape, 1.1, mirror=True)[None])
    then = augment_slice(np.ascontiguousarray(img[:, ::-1]), np.ascontiguousarray(mask[:, ::-1]),
                         affine_map(10.0, shift, img.shape, 1.1)[None])
    np.testing.assert_allclose(both[0], then[0], atol=1e-4)
    np.testing.assert_array_equal(both[1], then[1])
