"""Patch-classification metrics of the paper (section III.B.1, eqs. 1-4, 6) from confusion counts.

Convention for an empty denominator: every ratio here is ``num / den`` with ``num <= den``, so a
zero denominator means ``0 / 0``, i.e. there was nothing to find and nothing was found. We define
``0 / 0 = 1.0`` (vacuously perfect), everywhere, so that e.g. PRE of a classifier that predicts
no positive at all is 1.0 while its SEN (if positives existed) is 0.0 and its F-score is 0.0
(the paper's Table 2 convention; training warns when a side of the split holds one class).
``infer.metrics`` instead reports such segmentation metrics as undefined (None, "n/a").
"""

from __future__ import annotations

import numpy as np


def ratio(num: float, den: float) -> float:
    """``num / den`` as a float, with ``0 / 0`` defined as 1.0 (see the module docstring)."""
    if den == 0:
        if num != 0:
            raise ValueError(f"ratio {num}/{den}: numerator must be 0 when the denominator is 0")
        return 1.0
    return float(num) / float(den)


def confusion_metrics(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    """PRE, SPE, ACC, F-score and SEN from confusion counts, each a float in [0, 1].

    PRE = TP/(TP+FP) (eq. 2), SPE = TN/(TN+FP) (eq. 1), ACC = (TP+TN)/(TP+TN+FP+FN) (eq. 3),
    F-score = 2TP/(2TP+FP+FN) (eq. 4), SEN = TP/(TP+FN) (eq. 6). A zero denominator gives 1.0.
    Counts must be non-negative integers.
    """
    counts = {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    for name, value in counts.items():
        if int(value) != value or value < 0:
            raise ValueError(f"confusion count {name} must be a non-negative integer, not {value!r}")
    tp, fp, tn, fn = (int(v) for v in counts.values())
    return {
        "PRE": ratio(tp, tp + fp),
        "SPE": ratio(tn, tn + fp),
        "ACC": ratio(tp + tn, tp + tn + fp + fn),
        "F-score": ratio(2 * tp, 2 * tp + fp + fn),
        "SEN": ratio(tp, tp + fn),
    }


def confusion_matrix(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(2, 2) int64 confusion matrix of two binary label arrays of the same shape.

    Rows are the true class, columns the predicted class (as in the paper's Figure 13)::

                  pred 0   pred 1
        true 0  [[  TN  ,    FP  ],
        true 1   [  FN  ,    TP  ]]

    ``pred`` and ``target`` hold 0/1 (any integer or bool dtype, e.g. (N,) int64 patch labels).
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} must equal target shape {target.shape}")
    for name, a in (("pred", pred), ("target", target)):
        if a.size and not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name} must hold only 0 and 1, found values {np.unique(a)[:10]}")
    index = 2 * target.astype(np.int64).ravel() + pred.astype(np.int64).ravel()
    return np.bincount(index, minlength=4).astype(np.int64).reshape(2, 2)


def metrics_from_matrix(cm: np.ndarray) -> dict[str, float]:
    """``confusion_metrics`` of a (2, 2) matrix laid out as ``confusion_matrix`` returns it."""
    cm = np.asarray(cm)
    if cm.shape != (2, 2):
        raise ValueError(f"confusion matrix must have shape (2, 2), not {cm.shape}")
    (tn, fp), (fn, tp) = cm.tolist()
    return confusion_metrics(tp=tp, fp=fp, tn=tn, fn=fn)
