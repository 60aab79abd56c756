"""One case of `infer volume` at a time: segment, write its files, score it against its reference.

    segment_case:   read CT (+ reference) -> infer.predict.segment -> probability map, overlays,
                    summary picture -> mask, written last (its presence marks the case done)
    score_existing: a case done by an earlier run (resume): its mask read back and scored
    score:          the metrics, why any is undefined, and the label-rule DSC

Each returns the case's report entry, a dict ready for JSON (``infer.report`` gathers them).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from infer.cases import Case, CaseOutputs
from infer.metrics import reasons_for, segmentation_metrics
from infer.overlay import write_overlays, write_summary
from infer.postprocess import MIDLINE_MM, Z_SIGMA_MM
from infer.predict import pixel_warning, read_reference, segment
from patchstore.config import BuildConfig
from patchstore.io.check import intensity_problem
from patchstore.io.volume import read_volume, write_mask, write_oriented
from patchstore.stages.patches import rule_dsc
from patchstore.stages.resample import plane_grid


def score(mask: np.ndarray, ref: np.ndarray, spacing_zyx, cfg: BuildConfig, tolerance_mm: float) -> dict:
    """Metrics of a (Z, Y, X) bool ``mask`` against ``ref``, the reasons of the undefined ones, and
    the DSC of the ideal classifier of the checkpoint's training labels (None: empty reference)."""
    grid = plane_grid(ref.shape[1:], spacing_zyx[1:], cfg.pixel_mm)
    return {"metrics": segmentation_metrics(mask, ref, spacing_zyx, tolerance_mm),
            "undefined": reasons_for(mask, ref),
            "label_rule_DSC": rule_dsc(ref, cfg.patch, cfg.label_rule, grid) if ref.any() else None,
            "label_rule_pixel_mm": round(grid.spacing[1], 4)}


def segment_case(case: Case, outputs: CaseOutputs, model, cfg: BuildConfig, *, labels: tuple[int, ...],
                 tolerance_mm: float, trained_at: tuple[float, float] | None, warn: Callable[[str], None],
                 progress: Callable[[int, int], None] | None = None, postprocess_method: str = "spine",
                 threshold: float = 0.5, refine: str | float | None = "window", midline_mm: float | None = MIDLINE_MM,
                 z_sigma_mm: float | None = Z_SIGMA_MM, **engine_options) -> dict:
    """Segment ``case`` with ``model`` (``engine_options`` as ``infer.predict.segment`` takes them),
    write ``outputs`` and return the report entry; ``progress(done, total)`` counts axial slices."""
    vol = read_volume(case.image)
    done = 0

    def step(slices: int) -> None:
        nonlocal done
        done += slices
        if progress:
            progress(done, vol.array.shape[0])

    ref = read_reference(case.reference, vol, labels) if case.reference else None
    for warning in (intensity_problem(vol.array), pixel_warning(cfg, trained_at, vol.geometry.spacing_zyx[1:])):
        if warning:
            warn(f"{case.image}: {warning}")
    pred = segment(model, cfg, vol, postprocess_method=postprocess_method, threshold=threshold,
                   refine=refine, midline_mm=midline_mm, z_sigma_mm=z_sigma_mm, progress=step, **engine_options)
    if not pred.mask.any():
        warn(f"{case.image}: the predicted mask is empty (no pixel classified vertebra"
             + (" after post-processing" if pred.raw.any() else "") + ")")
    if outputs.probability:
        write_oriented(outputs.probability, pred.probability, vol.geometry, vol.source)
    if outputs.overlays:
        write_overlays(outputs.overlays, vol.array, pred.mask, ref, vol.geometry.spacing_zyx,
                       origin_zyx=vol.geometry.origin[::-1])
    if outputs.summary:
        write_summary(outputs.summary, vol.array, pred.mask, ref, vol.geometry.spacing_zyx,
                      origin_zyx=vol.geometry.origin[::-1], title=case.case_id)
    write_mask(outputs.mask, pred.mask, vol.geometry, vol.source)
    entry = {"case": case.case_id, "image": str(case.image), "output": str(outputs.mask), "skipped": False,
             "seconds": round(pred.seconds, 3), "pixels_per_s": round(vol.array.size / pred.seconds),
             "skipped_fraction": round(pred.skipped_fraction, 4), "predicted_voxels": int(np.count_nonzero(pred.mask))}
    if ref is not None:
        entry["reference"] = str(case.reference)
        entry.update(score(pred.mask, ref, vol.geometry.spacing_zyx, cfg, tolerance_mm))
        if postprocess_method != "none":
            entry["metrics_raw"] = segmentation_metrics(pred.raw, ref, vol.geometry.spacing_zyx, tolerance_mm)
    return entry


def score_existing(case: Case, outputs: CaseOutputs, cfg: BuildConfig, *, labels: tuple[int, ...],
                   tolerance_mm: float) -> dict:
    """The report entry of a case whose mask an earlier run wrote: not segmented again, but scored
    when it has a reference (so the summary covers every case)."""
    entry = {"case": case.case_id, "image": str(case.image), "output": str(outputs.mask), "skipped": True}
    if case.reference:
        mask = read_volume(outputs.mask, dtype=None)
        ref = read_reference(case.reference, mask, labels)
        entry["reference"] = str(case.reference)
        entry["predicted_voxels"] = int(np.count_nonzero(mask.array))
        entry.update(score(mask.array != 0, ref, mask.geometry.spacing_zyx, cfg, tolerance_mm))
    return entry
