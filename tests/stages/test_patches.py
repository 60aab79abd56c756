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
    slice_labels,
)
from patchstore.stages.preprocess import quantize


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
