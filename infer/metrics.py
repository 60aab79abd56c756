"""Segmentation metrics of a predicted 3-D vertebra mask against a reference (paper section III.B.2).

Conventions (one place, used by every function below):

- Voxel-count ratios (DSC, JAC, SEN, PRE, SPE, ACC) follow ``train.metrics``: ``0 / 0 = 1.0``.
  So two empty masks score 1.0 on every overlap metric, and an empty prediction against a
  non-empty reference scores DSC = JAC = SEN = 0.0 but PRE = 1.0 (it predicted nothing false).
- The paper's eq. 5, "BF-score" = 2 PRE SEN / (PRE + SEN), is the harmonic mean of the voxel PRE
  and SEN and therefore equals DSC; it is reported as ``F1_PRE_SEN_eq5`` (0.0 when PRE = SEN = 0).
- ``BF`` is a true boundary F1 score (MATLAB's ``bfscore`` in 3-D with anisotropic spacing).
  The boundary of a mask is the set of its voxels that have at least one of their 6 face
  neighbours outside the mask; the space outside the array counts as outside the mask, so a mask
  touching the volume edge has boundary there. Boundary precision is the fraction of predicted
  boundary voxels whose distance (between voxel centres, in mm) to the nearest reference boundary
  voxel is <= ``tolerance_mm`` (plus 1e-6 mm for rounding); recall is the same the other way
  round; BF is their harmonic mean (0.0 when both are 0; with ``0 / 0 = 1.0`` for an empty
  boundary, so both empty -> 1.0 and exactly one empty -> 0.0).
- Surface distances are those same boundary-to-boundary distances, both directions pooled:
  HD95 is their 95th percentile (``numpy.percentile``, linear interpolation, as MedPy's ``hd95``)
  and ASSD their mean, i.e. (sum d(a, B) + sum d(b, A)) / (|A| + |B|) over boundary voxels a, b
  (Heimann et al. 2009). Both masks empty -> 0.0 mm; exactly one empty -> ``inf``.

Large volumes (512 x 512 x 550) are cropped to the bounding box of ``pred | ref`` plus a one-voxel
margin before any boundary or distance computation; the result is identical to the uncropped one
because every boundary voxel lies in that box and the outside counts as background.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from train.metrics import confusion_metrics, ratio

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
    """BF, HD95 and ASSD from the two (n,) surface-distance arrays of ``surface_distances``."""
    tol = tolerance_mm + _ROUNDING_MM
    precision = ratio(int(np.count_nonzero(d_pred <= tol)), d_pred.size)
    recall = ratio(int(np.count_nonzero(d_ref <= tol)), d_ref.size)
    scores = {"BF": harmonic_mean(precision, recall)}
    if d_pred.size == 0 and d_ref.size == 0:
        scores.update(HD95=0.0, ASSD=0.0)
    elif d_pred.size == 0 or d_ref.size == 0:
        scores.update(HD95=math.inf, ASSD=math.inf)
    else:
        both = np.concatenate([d_pred, d_ref])
        scores.update(HD95=float(np.percentile(both, 95)), ASSD=float(both.mean()))
    return scores


def segmentation_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing, tolerance_mm: float = 2.0
) -> dict[str, float]:
    """All segmentation metrics of ``pred`` against ``ref``, both (Z, Y, X) bool, spacing (sz, sy, sx) mm.

    Returns floats keyed DSC, JAC, SEN, PRE, SPE, ACC, F1_PRE_SEN_eq5 (ratios in [0, 1]),
    BF (boundary F1 within ``tolerance_mm``), HD95 and ASSD (mm). See the module docstring for the
    boundary definition and the empty-mask conventions.
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
    cm = confusion_metrics(tp=tp, fp=fp, tn=tn, fn=fn)
    out = {
        "DSC": cm["F-score"],  # eq. 8 is eq. 4 on voxels
        "JAC": ratio(tp, tp + fp + fn),
        "SEN": cm["SEN"],
        "PRE": cm["PRE"],
        "SPE": cm["SPE"],
        "ACC": cm["ACC"],
        "F1_PRE_SEN_eq5": harmonic_mean(cm["PRE"], cm["SEN"]),
    }
    pb, rb = boundary(p), boundary(r)
    if pb.any() and rb.any():
        d_pred, d_ref = surface_distances(pb, rb, spacing)
    else:  # at most one boundary is non-empty: its voxels have nothing to be near
        d_pred = np.full(int(np.count_nonzero(pb)), np.inf)
        d_ref = np.full(int(np.count_nonzero(rb)), np.inf)
    out.update(boundary_scores(d_pred, d_ref, tolerance_mm))
    return out


def format_table(metrics: dict, title: str | None = None) -> str:
    """Aligned plain-text table: ratio metrics as percentages, HD95/ASSD in mm, others as numbers."""
    if not metrics:
        return title or ""
    width = max(len(str(k)) for k in metrics)
    lines = [title, "-" * max(len(title), width + 13)] if title else []
    for key, value in metrics.items():
        if key in RATIO_KEYS:
            cell = f"{100.0 * float(value):8.2f} %"
        elif key in DISTANCE_KEYS:
            cell = f"{float(value):8.2f} mm"
        elif isinstance(value, (int, np.integer)):
            cell = f"{int(value):8d}"
        else:
            cell = f"{float(value):8.4g}"
        lines.append(f"{str(key):<{width}}  {cell}")
    return "\n".join(lines)
