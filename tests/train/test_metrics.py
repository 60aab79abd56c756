"""Tests for train.metrics: the paper's patch metrics from confusion counts."""

from __future__ import annotations

import numpy as np
import pytest

from train.metrics import confusion_matrix, confusion_metrics, metrics_from_matrix


def test_confusion_metrics_known_counts():
    """TP=90, FP=10, TN=880, FN=20 gives the hand-computed ratios."""
    m = confusion_metrics(tp=90, fp=10, tn=880, fn=20)
    assert m["PRE"] == pytest.approx(0.9)
    assert m["SPE"] == pytest.approx(880 / 890)
    assert m["ACC"] == pytest.approx(0.97)
    assert m["F-score"] == pytest.approx(180 / 210)
    assert m["SEN"] == pytest.approx(90 / 110)
    assert list(m) == ["PRE", "SPE", "ACC", "F-score", "SEN"]


def test_confusion_metrics_zero_denominators():
    """0/0 is 1.0: nothing positive anywhere is perfect; no positive predicted gives PRE 1, SEN 0."""
    assert confusion_metrics(tp=0, fp=0, tn=5, fn=0) == {
        "PRE": 1.0, "SPE": 1.0, "ACC": 1.0, "F-score": 1.0, "SEN": 1.0}
    m = confusion_metrics(tp=0, fp=0, tn=5, fn=3)
    assert (m["PRE"], m["SEN"], m["F-score"], m["ACC"]) == (1.0, 0.0, 0.0, 5 / 8)
    assert confusion_metrics(tp=0, fp=0, tn=0, fn=0)["ACC"] == 1.0


def test_confusion_metrics_rejects_negative():
    """A negative count is an error naming the count."""
    with pytest.raises(ValueError, match="fn"):
        confusion_metrics(tp=1, fp=0, tn=0, fn=-1)


def test_confusion_matrix_layout():
    """Rows are the true class, columns the predicted class: [[TN, FP], [FN, TP]]."""
    cm = confusion_matrix(np.array([0, 1, 1, 0, 1]), np.array([0, 1, 0, 1, 1]))
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 1], [1, 2]])
    assert metrics_from_matrix(cm) == confusion_metrics(tp=2, fp=1, tn=1, fn=1)
