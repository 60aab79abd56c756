"""Random under-sampling: exact counts, candidate order, determinism."""

import numpy as np

from patchstore.stages.balance import class_counts, rus_indices


def labels_with(n1, n0, seed=0):
    lab = np.array([1] * n1 + [0] * n0, np.uint8)
    return np.random.default_rng(seed).permutation(lab)


def test_exact_counts_ratio_one():
    """7 minority and 100 majority at ratio 1 keep 7 + 7, all minority kept, in order."""
    lab = labels_with(7, 100)
    keep = rus_indices(lab, 1.0, np.random.default_rng(0))
    assert class_counts(lab[keep]) == (7, 7)
    assert set(np.flatnonzero(lab == 1)) <= set(keep.tolist())
    assert np.all(np.diff(keep) > 0)


def test_exact_counts_rounded_ratio():
    """Ratio 2.5 keeps round(17.5) = 18 majority; a short majority is kept whole."""
    lab = labels_with(7, 100)
    assert class_counts(lab[rus_indices(lab, 2.5, np.random.default_rng(0))]) == (18, 7)
    assert class_counts(lab[rus_indices(lab, 30.0, np.random.default_rng(0))]) == (100, 7)


def test_minority_is_class_zero_when_rarer_and_one_on_tie():
    """Class 0 can be the minority; on a tie class 1 is, and everything is kept at ratio 1."""
    lab = labels_with(50, 5)
    assert class_counts(lab[rus_indices(lab, 2.0, np.random.default_rng(0))]) == (5, 10)
    lab = labels_with(6, 6)
    assert rus_indices(lab, 1.0, np.random.default_rng(0)).size == 12


def test_empty_minority_keeps_nothing():
    """A volume with a single class contributes no patches."""
    assert rus_indices(np.zeros(40, np.uint8), 1.0, np.random.default_rng(0)).size == 0
    assert rus_indices(np.ones(40, np.uint8), 1.0, np.random.default_rng(0)).size == 0


def test_deterministic_per_seed():
    """Same seed, same indices; a different seed picks a different majority sample."""
    lab = labels_with(10, 500)
    a = rus_indices(lab, 1.0, np.random.default_rng(42))
    b = rus_indices(lab, 1.0, np.random.default_rng(42))
    c = rus_indices(lab, 1.0, np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
