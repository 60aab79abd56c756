"""Tests for infer.metrics: 3-D segmentation metrics, undefined metrics and their reasons, tables."""

from __future__ import annotations

import numpy as np
import pytest

from infer.metrics import boundary, format_table, reasons_for, segmentation_metrics

SPACING = (2.0, 1.0, 0.5)  # (sz, sy, sx) mm


def cube_pair(shape=(6, 5, 5), offset=(0, 0, 0)):
    """ref = 3x3x3 cube at z,y,x 1..3; pred = the same cube shifted by one voxel along z."""
    ref = np.zeros(shape, dtype=bool)
    pred = np.zeros(shape, dtype=bool)
    z, y, x = offset
    ref[z + 1 : z + 4, y + 1 : y + 4, x + 1 : x + 4] = True
    pred[z + 2 : z + 5, y + 1 : y + 4, x + 1 : x + 4] = True
    return pred, ref


def test_boundary_of_cube_touching_edge():
    """Every voxel of a 3x3x3 block but its centre is boundary; the array edge counts as outside."""
    b = boundary(np.ones((3, 3, 3), dtype=bool))
    assert b.sum() == 26 and not b[1, 1, 1]


def test_shifted_cubes_overlap_metrics():
    """Cubes of 27 voxels overlapping in 18: DSC 2/3, JAC 1/2, TN = 150 - 36."""
    pred, ref = cube_pair()
    m = segmentation_metrics(pred, ref, SPACING)
    assert m["DSC"] == pytest.approx(2 / 3)
    assert m["JAC"] == pytest.approx(0.5)
    assert m["SEN"] == pytest.approx(2 / 3) and m["PRE"] == pytest.approx(2 / 3)
    assert m["SPE"] == pytest.approx(114 / 123)
    assert m["ACC"] == pytest.approx(132 / 150)
    assert m["F1_PRE_SEN_eq5"] == pytest.approx(m["DSC"])


def test_shifted_cubes_surface_distances():
    """Per direction 16 boundary voxels at 0, one at sx = 0.5 mm, nine at sz = 2 mm (26 in all)."""
    pred, ref = cube_pair()
    m = segmentation_metrics(pred, ref, SPACING)
    assert m["ASSD"] == pytest.approx((2 * 0.5 + 18 * 2.0) / 52)
    assert m["HD95"] == pytest.approx(2.0)  # pooled sorted[48.45] lies among the eighteen 2.0s
    assert m["BF"] == pytest.approx(1.0)  # every distance <= 2 mm
    assert segmentation_metrics(pred, ref, SPACING, tolerance_mm=1.0)["BF"] == pytest.approx(17 / 26)
    assert segmentation_metrics(pred, ref, SPACING, tolerance_mm=0.4)["BF"] == pytest.approx(16 / 26)


def test_two_voxel_cubes_shifted_along_x():
    """2x2x2 cubes shifted one voxel along x (0.5 mm): distances 8 x 0 and 8 x 0.5 mm."""
    ref = np.zeros((4, 4, 5), dtype=bool)
    ref[1:3, 1:3, 1:3] = True
    pred = np.roll(ref, 1, axis=2)
    m = segmentation_metrics(pred, ref, SPACING)
    assert (m["DSC"], m["HD95"], m["ASSD"]) == pytest.approx((0.5, 0.5, 0.25))
    assert segmentation_metrics(pred, ref, SPACING, tolerance_mm=0.4)["BF"] == pytest.approx(0.5)


def test_crop_does_not_change_distances():
    """The same pair inside a larger volume, and at its very edge, gives the same distances."""
    small = segmentation_metrics(*cube_pair(), SPACING)
    big = segmentation_metrics(*cube_pair((40, 30, 30), (20, 5, 26)), SPACING)
    for key in ("DSC", "JAC", "BF", "HD95", "ASSD"):
        assert big[key] == pytest.approx(small[key])


def test_dsc_equals_eq5_on_random_masks():
    """F1 of voxel PRE and SEN (paper eq. 5) equals DSC."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        pred, ref = rng.random((2, 8, 9, 10)) < 0.3
        m = segmentation_metrics(pred, ref, (1.0, 0.7, 0.7))
        assert m["F1_PRE_SEN_eq5"] == pytest.approx(m["DSC"])


def test_both_empty():
    """Two empty masks: DSC, JAC, PRE, SEN and the surface metrics undefined (None); SPE, ACC 1.0."""
    empty = np.zeros((3, 4, 5), dtype=bool)
    m = segmentation_metrics(empty, empty, SPACING)
    assert {k for k, v in m.items() if v is None} == {"DSC", "JAC", "SEN", "PRE", "F1_PRE_SEN_eq5", "BF", "HD95",
                                                      "ASSD"}
    assert (m["SPE"], m["ACC"]) == (1.0, 1.0)
    assert reasons_for(empty, empty)["DSC"] == "both masks are empty"


def test_one_empty():
    """Empty prediction: DSC, SEN 0, PRE undefined (nothing predicted), distances undefined; and the reverse."""
    _, ref = cube_pair()
    empty = np.zeros_like(ref)
    m = segmentation_metrics(empty, ref, SPACING)
    assert (m["DSC"], m["SEN"], m["PRE"], m["BF"], m["HD95"], m["ASSD"]) == (0.0, 0.0, None, None, None, None)
    why = reasons_for(empty, ref)
    assert why["PRE"] == "nothing was predicted" and why["HD95"].startswith("the prediction is empty")
    r = segmentation_metrics(ref, empty, SPACING)
    assert (r["DSC"], r["SEN"], r["PRE"], r["HD95"]) == (0.0, None, 0.0, None)
    assert reasons_for(ref, empty)["SEN"] == "the reference is empty"


@pytest.mark.parametrize("n_pred, n_ref", [(0, 0), (0, 27), (27, 0), (27, 27)])
def test_reasons_name_exactly_the_undefined_metrics(n_pred, n_ref):
    """Every None metric has a reason and every reason a None metric."""
    pred, ref = cube_pair()
    pred, ref = (pred if n_pred else pred & False), (ref if n_ref else ref & False)
    m = segmentation_metrics(pred, ref, SPACING)
    assert {k for k, v in m.items() if v is None} == set(reasons_for(pred, ref))


def test_rejects_bad_inputs():
    """Shape mismatch, non-bool masks and bad spacing are errors naming the values."""
    a = np.zeros((2, 2, 2), dtype=bool)
    with pytest.raises(ValueError, match=r"\(2, 2, 3\)"):
        segmentation_metrics(a, np.zeros((2, 2, 3), dtype=bool), SPACING)
    with pytest.raises(ValueError, match="uint8"):
        segmentation_metrics(a.astype(np.uint8), a, SPACING)
    with pytest.raises(ValueError, match="spacing"):
        segmentation_metrics(a, a, (1.0, 0.0, 1.0))


def test_format_table():
    """Ratios print as percentages, distances in mm, an undefined metric as n/a with its reason."""
    text = format_table({"DSC": 2 / 3, "HD95": 2.0, "ASSD": None}, title="case 1",
                        reasons={"ASSD": "the prediction is empty: no surface to measure from"})
    lines = text.splitlines()
    assert lines[0] == "case 1"
    assert lines[2] == "DSC      66.67 %"
    assert lines[3] == "HD95      2.00 mm"
    assert lines[4] == "ASSD       n/a    (the prediction is empty: no surface to measure from)"
