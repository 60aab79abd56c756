"""Random under-sampling (RUS, paper II.C): which candidate patches of a volume are kept."""

from __future__ import annotations

import numpy as np


def class_counts(labels: np.ndarray) -> tuple[int, int]:
    """(n0, n1) of a (N,) 0/1 label array."""
    n1 = int(np.count_nonzero(labels))
    return int(labels.size) - n1, n1


def rus_indices(labels: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """(K,) int64 sorted indices of the kept candidates of one volume.

    Every minority-class candidate is kept, plus a sample without replacement of exactly
    min(n_major, round(ratio * n_minor)) majority candidates (Python ``round``: half to even).
    The minority is the class with fewer candidates; on a tie class 1 is the minority.
    If the minority class is empty nothing is kept: a volume without one class adds nothing
    to a balanced set. Indices come back in candidate order.
    """
    labels = np.asarray(labels)
    n0, n1 = class_counts(labels)
    minority = 1 if n1 <= n0 else 0
    n_minor = min(n0, n1)
    if n_minor == 0:
        return np.zeros(0, np.int64)
    minor_idx = np.flatnonzero(labels == minority)
    major_idx = np.flatnonzero(labels != minority)
    k = min(major_idx.size, int(round(ratio * n_minor)))
    picked = major_idx[rng.choice(major_idx.size, size=k, replace=False)]
    return np.sort(np.concatenate([minor_idx, picked]))
