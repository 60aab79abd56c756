"""Segmentation metrics of a predicted 3-D vertebra mask against a reference (paper section III.B.2).

Conventions (one place, used by every function below):

- A metric whose formula divides 0 by 0 is undefined: ``None`` here, ``null`` in JSON, "n/a" with
  the reason in tables (``undefined_reasons``), and left out of means. So PRE = TP / (TP + FP) is
  undefined when nothing was predicted (not 1.0: an empty prediction is no precise one), SEN
  when the reference is empty, DSC and JAC when both masks are, SPE when the reference has no
  background. ACC is always defined. nnU-Net's evaluation likewise gives DSC NaN for two empty masks.
- The paper's eq. 5, "BF-score" = 2 PRE SEN / (PRE + SEN), is the harmonic mean of the voxel PRE
  and SEN and therefore equals DSC; it is reported as ``F1_PRE_SEN_eq5`` (0.0 when PRE = SEN = 0,
  undefined when PRE or SEN is).
- ``BF`` is a true boundary F1 score (MATLAB's ``bfscore`` in 3-D with anisotropic spacing).
  The boundary of a mask is the set of its voxels that have at least one of their 6 face
  neighbours outside the mask; the space outside the array counts as outside the mask, so a mask
  touching the volume edge has boundary there. Boundary precision is the fraction of predicted
  boundary voxels whose distance (between voxel centres, in mm) to the nearest reference boundary
  voxel is <= ``tolerance_mm`` (plus 1e-6 mm for rounding); recall is the same the other way
  round; BF is their harmonic mean (0.0 when both are 0).
- Surface distances are those same boundary-to-boundary distances, both directions pooled:
  HD95 is their 95th percentile (``numpy.percentile``, linear interpolation, as MedPy's ``hd95``)
  and ASSD their mean, i.e. (sum d(a, B) + sum d(b, A)) / (|A| + |B|) over boundary voxels a, b
  (Heimann et al. 2009). BF, HD95 and ASSD are undefined when either mask is empty: there is no
  surface to measure from (where other tools print ``inf``).

Large volumes (512 x 512 x 550) are cropped to the bounding box of ``pred | ref`` plus a one-voxel
margin before any boundary or distance computation; the result is identical to the uncropped one
because every boundary voxel lies in that box and the outside counts as background.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

RATIO_KEYS = ("DSC", "JAC", "SEN", "PRE", "SPE", "ACC", "F1_PRE_SEN_eq5", "BF", "F-score")
DISTANCE_KEYS = ("HD95", "ASSD")
_ROUNDING_MM = 1e-6
_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def check_masks(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[float, float, float]:
    """Validate two (Z, Y, X) masks and a spacing; return the spacing as three positive floats."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.ndim != 3 or pred.shape != ref.shape:
        raise ValueError(f"pred {pred.shape} and ref {ref.shape} must be (Z, Y, X) of equal shape")
    for name, a in (("pred", pred), ("ref", ref)):
        if a.dtype != bool:
            raise ValueError(f"{name} must be a bool mask, not dtype {a.dtype}")
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(s > 0 and math.isfinite(s) for s in sp):
        raise ValueError(f"spacing must be three positive (sz, sy, sx) in mm, not {spacing!r}")
    return sp[0], sp[1], sp[2]


def bounding_box(pred: np.ndarray, ref: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Slices of the bounding box of ``pred | ref`` ((Z, Y, X) bool) grown by ``margin``; None if empty."""
    box: list[slice] = []
    views = [pred, ref]
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = np.any(views[0], axis=others) | np.any(views[1], axis=others)
        idx = np.flatnonzero(hit)
        if idx.size == 0:
            return None
        lo, hi = max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, hit.size)
        box.append(slice(lo, hi))
        # shrink the arrays as we go so later axes scan less memory
        sl = tuple(box[a] if a == axis else slice(None) for a in range(3))
        views = [v[sl] for v in views]
    return tuple(box)


def boundary(mask: np.ndarray) -> np.ndarray:
    """(Z, Y, X) bool -> (Z, Y, X) bool: mask voxels with a 6-neighbour outside the mask (or array)."""
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE_NEIGHBOURS, border_value=0)


def surface_distances(
    pred_boundary: np.ndarray, ref_boundary: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm, (n_pred,) and (n_ref,) float64, from each boundary voxel to the other boundary.

    Both boundaries are (Z, Y, X) bool and must be non-empty. The first array holds, for each
    predicted boundary voxel (C order), the distance to the nearest reference boundary voxel.
    """
    to_ref = ndimage.distance_transform_edt(~ref_boundary, sampling=spacing)
    d_pred = to_ref[pred_boundary]
    del to_ref  # keep only one full-size float64 map alive on big crops
    to_pred = ndimage.distance_transform_edt(~pred_boundary, sampling=spacing)
    return d_pred, to_pred[ref_boundary]


def harmonic_mean(a: float, b: float) -> float:
    """2ab / (a + b), with 0.0 when a + b == 0 (a pair of zero scores is a zero score)."""
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


def boundary_scores(
    d_pred: np.ndarray, d_ref: np.ndarray, tolerance_mm: float
) -> dict[str, float]:
    """BF, HD95 and ASSD from the two non-empty (n,) surface-distance arrays of ``surface_distances``."""
    if d_pred.size == 0 or d_ref.size == 0:
        raise ValueError(f"surface distances of {d_pred.size} and {d_ref.size} boundary voxels; expected both "
                         f"non-empty (BF, HD95 and ASSD are undefined for an empty mask)")
    tol = tolerance_mm + _ROUNDING_MM
    precision = np.count_nonzero(d_pred <= tol) / d_pred.size
    recall = np.count_nonzero(d_ref <= tol) / d_ref.size
    both = np.concatenate([d_pred, d_ref])
    return {"BF": harmonic_mean(precision, recall), "HD95": float(np.percentile(both, 95)), "ASSD": float(both.mean())}


def undefined_reasons(n_pred: int, n_ref: int, n_voxels: int) -> dict[str, str]:
    """Metric name -> why ``segmentation_metrics`` leaves it undefined, for masks of ``n_pred`` and
    ``n_ref`` voxels in a volume of ``n_voxels``; empty when every metric is defined."""
    reasons = {}
    if n_pred == 0 and n_ref == 0:
        reasons.update(DSC="both masks are empty", JAC="both masks are empty")
    if n_pred == 0:
        reasons["PRE"] = "nothing was predicted"
    if n_ref == 0:
        reasons["SEN"] = "the reference is empty"
    if n_ref == n_voxels:
        reasons["SPE"] = "the reference has no background"
    for key in ("PRE", "SEN"):
        if key in reasons:
            reasons.setdefault("F1_PRE_SEN_eq5", f"{key} is undefined: {reasons[key]}")
    if n_pred == 0 or n_ref == 0:
        empty = ("both masks are empty" if n_pred == n_ref == 0
                 else "the prediction is empty" if n_pred == 0 else "the reference is empty")
        for key in ("BF", "HD95", "ASSD"):
            reasons[key] = f"{empty}: no surface to measure from"
    return reasons


def reasons_for(pred: np.ndarray, ref: np.ndarray) -> dict[str, str]:
    """``undefined_reasons`` of two (Z, Y, X) bool masks."""
    return undefined_reasons(int(np.count_nonzero(pred)), int(np.count_nonzero(ref)), int(np.asarray(pred).size))


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def segmentation_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing, tolerance_mm: float = 2.0
) -> dict[str, float | None]:
    """All segmentation metrics of ``pred`` against ``ref``, both (Z, Y, X) bool, spacing (sz, sy, sx) mm.

    Returns floats keyed DSC, JAC, SEN, PRE, SPE, ACC, F1_PRE_SEN_eq5 (ratios in [0, 1]),
    BF (boundary F1 within ``tolerance_mm``), HD95 and ASSD (mm); ``None`` for a metric that is
    undefined for these masks (``undefined_reasons`` says why). See the module docstring.
    """
    spacing = check_masks(pred, ref, spacing)
    if not tolerance_mm >= 0:
        raise ValueError(f"tolerance_mm must be >= 0, not {tolerance_mm!r}")
    box = bounding_box(pred, ref)
    if box is None:
        p = r = np.zeros((1, 1, 1), dtype=bool)
    else:
        p, r = pred[box], ref[box]
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(r)) - tp
    tn = pred.size - tp - fp - fn
    pre, sen = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    out = {
        "DSC": _ratio(2 * tp, 2 * tp + fp + fn),  # eq. 8 is eq. 4 on voxels
        "JAC": _ratio(tp, tp + fp + fn),
        "SEN": sen,
        "PRE": pre,
        "SPE": _ratio(tn, tn + fp),
        "ACC": (tp + tn) / pred.size,
        "F1_PRE_SEN_eq5": None if pre is None or sen is None else harmonic_mean(pre, sen),
        "BF": None, "HD95": None, "ASSD": None,
    }
    if tp + fp and tp + fn:  # both masks non-empty: so are their boundaries
        out.update(boundary_scores(*surface_distances(boundary(p), boundary(r), spacing), tolerance_mm))
    return out


def _cell(key: str, value) -> str:
    if key in RATIO_KEYS:
        return f"{100.0 * float(value):8.2f} %"
    if key in DISTANCE_KEYS:
        return f"{float(value):8.2f} mm"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):8d}"
    return f"{float(value):8.4g}"


def format_table(metrics: dict, title: str | None = None, reasons: dict[str, str] | None = None) -> str:
    """Aligned plain-text table: ratio metrics as percentages, HD95/ASSD in mm, others as numbers;
    an undefined (None) metric as "n/a" and its reason from ``reasons``."""
    if not metrics:
        return title or ""
    reasons = reasons or {}
    width = max(len(str(k)) for k in metrics)
    lines = [title, "-" * max(len(title), width + 13)] if title else []
    for key, value in metrics.items():
        if value is None:
            cell = f"{'n/a':>8}" + (f"    ({reasons[key]})" if key in reasons else "")
        else:
            cell = _cell(key, value)
        lines.append(f"{str(key):<{width}}  {cell}")
    return "\n".join(lines)
