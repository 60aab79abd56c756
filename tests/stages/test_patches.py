"""Stride grid, label rule, candidate origins and quantized crops."""

import numpy as np
import pytest

from patchstore.stages.patches import (
    candidate_origins,
    gather_patches,
    grid_counts,
    grid_shape,
    grid_starts,
    label_rule,
    rule_dsc,
    rule_mask,
    slice_labels,
)
from patchstore.stages.preprocess import quantize
from patchstore.stages.resample import plane_grid


def test_grid_starts():
    """Top-left positions 0, s, 2s, ... while pos + n <= size."""
    np.testing.assert_array_equal(grid_starts(100, 32, 12), [0, 12, 24, 36, 48, 60])
    assert grid_starts(31, 32, 12).size == 0
    assert grid_shape((512, 512), 32, 12) == (41, 41)


def test_label_rule_512_vs_513():
    """513 of 1024 vertebra pixels -> 1, 512 -> 0, counted from a mask."""
    for n_fg, label in ((512, 0), (513, 1), (1024, 1), (0, 0)):
        mask = np.zeros((32, 32), np.uint8)
        mask.ravel()[:n_fg] = 1
        assert grid_counts(mask, 32, 12)[0, 0] == n_fg
        assert slice_labels(mask, 32, 12).tolist() == [label]
    np.testing.assert_array_equal(label_rule(np.array([8, 9]), 4), [0, 1])


def test_candidate_origins_order():
    """Index ((z * V + a) * Gr + gi) * Gc + gj decodes to (z, gi * stride, gj * stride, a)."""
    v, gr, gc, s = 3, 4, 5, 7
    z, a, gi, gj = 2, 1, 3, 4
    idx = ((z * v + a) * gr + gi) * gc + gj
    np.testing.assert_array_equal(candidate_origins(np.array([0, idx]), v, (gr, gc), s), [[0, 0, 0, 0], [z, 21, 28, a]])
    assert candidate_origins(np.array([idx]), v, (gr, gc), s).dtype == np.int32


@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_gather_patches_equals_quantized_crop(dtype):
    """Crops at (row, col) equal quantize(slice)[row:row+n, col:col+n]."""
    src = np.random.default_rng(2).random((40, 44), dtype=np.float32)
    rows, cols = np.array([0, 8, 24], np.int32), np.array([12, 0, 28], np.int32)
    out = np.empty((3, 16, 16), dtype)
    gather_patches(src, rows, cols, out)
    q = quantize(src, dtype)
    for k in range(3):
        np.testing.assert_array_equal(out[k], q[rows[k] : rows[k] + 16, cols[k] : cols[k] + 16])


def test_gather_patches_checks_dtypes():
    """Wrong row dtype or output dtype raises TypeError naming the expected dtype."""
    src = np.zeros((8, 8), np.float32)
    with pytest.raises(TypeError, match="int32"):
        gather_patches(src, np.zeros(1, np.int64), np.zeros(1, np.int32), np.empty((1, 4, 4), np.uint8))
    with pytest.raises(TypeError, match="uint8 or float16"):
        gather_patches(src, np.zeros(1, np.int32), np.zeros(1, np.int32), np.empty((1, 4, 4), np.float32))


def test_label_rule_mask_keeps_only_majority_patches():
    """The ideal patch classifier keeps a pixel iff more than 512 of its 32x32 patch pixels are vertebra."""
    ref = np.zeros((1, 64, 64), bool)
    ref[0, 10:42, 10:26] = True  # 32 x 16 = 512 pixels: even the patch holding it all is only half
    assert not rule_mask(ref, 32).any()
    ref[0, 10:42, 26] = True  # 32 x 17 = 544 pixels
    got = rule_mask(ref, 32)
    padded = np.pad(ref[0], ((16, 15), (16, 15)))
    brute = np.array([[padded[r:r + 32, c:c + 32].sum() > 512 for c in range(64)] for r in range(64)])
    np.testing.assert_array_equal(got[0], brute)
    assert got[0, 26, 26] and not got[0, 26, 10]
    thin = np.zeros((1, 64, 64), bool)
    thin[0, :, 30:34] = True  # a 4-pixel-wide process never fills half a patch
    assert not rule_mask(thin, 32).any()


def test_rule_dsc_high_for_large_and_zero_for_thin_structures():
    """An ideal patch classifier nearly reproduces a large block and misses a thin one entirely."""
    big = np.zeros((1, 256, 256), bool)
    big[0, 28:228, 28:228] = True
    assert 0.95 < rule_dsc(big, 32) < 1.0  # corners round off
    thin = np.zeros((1, 64, 64), bool)
    thin[0, :, 30:34] = True
    assert rule_dsc(thin, 32) == 0.0


def test_centre_rule_is_the_mask_itself_at_any_pixel_size():
    """The centre rule's ideal classifier reproduces the reference: DSC 1.0 where the majority rule gets 0."""
    thin = np.zeros((2, 64, 64), np.uint8)
    thin[:, :, 30:34] = 1
    assert rule_dsc(thin, 32, "centre") == 1.0 and rule_dsc(thin, 32, "majority") == 0.0


def test_rule_dsc_on_a_finer_grid_rises_for_small_structures():
    """A 20x20-pixel block at 1 mm never fills half a 32x32 patch; resampled to 0.5 mm it does."""
    ref = np.zeros((1, 64, 64), np.uint8)
    ref[0, 20:40, 20:40] = 1
    assert rule_dsc(ref, 32) == 0.0
    fine = plane_grid((64, 64), (1.0, 1.0), 0.5)
    assert fine.shape == (128, 128) and rule_dsc(ref, 32, "majority", fine) > 0.8


def test_slice_labels_centre_reads_the_patch_centre():
    mask = np.zeros((40, 40), np.uint8)
    mask[16, 16] = 1  # the centre of the patch at (0, 0); the patch at (0, 12) has its centre at (16, 28)
    assert slice_labels(mask, 32, 12, "centre").tolist() == [1] and slice_labels(mask, 32, 12).tolist() == [0]
