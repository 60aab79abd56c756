"""Dataset integrity check before anyone builds from it (like nnU-Net's verify_dataset_integrity)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from patchstore.io.discover import discover
from patchstore.io.volume import VolumeError, read_case
from patchstore.stages.patches import rule_dsc, slice_labels
from patchstore.stages.resample import PlaneGrid, plane_grid, to_grid_mask

RULE_DSC_WARN = 0.80  # below this, the label rule at this pixel size caps what a network can learn
RULE_DSC_GOAL = 0.85  # the pixel size suggested lifts it to at least this
SUGGESTED_PIXELS = (0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2)  # mm, coarsest first


def intensity_problem(hu: np.ndarray) -> str | None:
    """Why ``hu`` does not look like CT in Hounsfield units (None: it does).

    No bone (maximum below 100: a normalised or windowed image); or no air and either a median
    above 500 or nothing below 0 (fat is about -100 HU): stored values whose rescale slope and
    intercept were lost (air then reads 0 and soft tissue about 1,064), or not CT at all. A crop
    inside the body (no air, but fat, and a median near soft tissue's 40 HU) passes.
    """
    lo, hi = float(hu.min()), float(hu.max())
    expected = f"intensity range [{lo:g}, {hi:g}]; expected CT in Hounsfield units (air near -1000, bone above 100)"
    if hi < 100:
        return expected
    median = float(np.median(hu[::4, ::4, ::4]))
    if lo > -200 and (median > 500 or lo >= 0):
        return (f"{expected}, fat below 0, soft tissue near 40; the median is {median:.0f}: a lost rescale "
                f"slope / intercept, or not CT?")
    return None


@dataclass
class CaseReport:
    case_id: str
    image: Path
    mask: Path
    size: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    orientation: str | None = None
    label_values: tuple[int, ...] = ()
    vertebra_voxels: int = 0
    vertebra_slices: int = 0
    slices: int = 0
    vertebra_patches: int = 0
    working_shape: tuple[int, int] | None = None
    working_pixel: float | None = None
    rule: str = "majority"
    rule_dsc_native: float | None = None
    rule_dsc: float | None = None
    native_shape: tuple[int, int] | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        if self.size is None:
            return f"{self.case_id}: FAILED"
        sp = "x".join(f"{s:.3g}" for s in self.spacing)
        vals = _ranges(self.label_values)
        line = (f"{self.case_id}: size {self.size[0]}x{self.size[1]}x{self.size[2]}, spacing {sp} mm, "
                f"{self.orientation}, labels {{{vals}}}, vertebra voxels {self.vertebra_voxels:,}, "
                f"axial slices with vertebra {self.vertebra_slices}/{self.slices}")
        if self.working_shape is None:
            return line
        h, w = self.working_shape
        at = f"at {self.working_pixel:.3g} mm pixels ({w}x{h})"
        dsc = f"label-rule DSC ({self.rule}) {self.rule_dsc_native:.3f} native"
        if self.rule_dsc != self.rule_dsc_native or self.working_shape != self.native_shape:
            dsc += f", {self.rule_dsc:.3f} {at}"
        return f"{line}, vertebra patches {self.vertebra_patches:,} {at}, {dsc}"


def _ranges(values: tuple[int, ...]) -> str:
    """(0, 25, 26, 27, 30) -> '0,25-27,30'."""
    out, run = [], []
    for v in values:
        if run and v != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run)))
            run = []
        run.append(v)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run)))
    return ",".join(out)


def suggest_pixel(ref: np.ndarray, spacing_yx: tuple[float, float], patch: int) -> tuple[float, float] | None:
    """(pixel mm, its majority-rule DSC): the coarsest of SUGGESTED_PIXELS finer than the scan
    that lifts the rule's DSC to RULE_DSC_GOAL, judged on up to 24 slices holding vertebra."""
    z = np.flatnonzero(ref.any(axis=(1, 2)))
    sample = ref[z[:: max(1, len(z) // 24)]]
    for p in SUGGESTED_PIXELS:
        if p < min(spacing_yx):
            dsc = rule_dsc(sample, patch, "majority", plane_grid(ref.shape[1:], spacing_yx, p))
            if dsc >= RULE_DSC_GOAL:
                return p, dsc
    return None


def rule_report(report: CaseReport, mask: np.ndarray, spacing_yx: tuple[float, float], grid: PlaneGrid,
                patch: int, stride: int, rule: str) -> None:
    """Fill the label-rule fields of ``report`` and warn when the rule caps the case below RULE_DSC_WARN."""
    report.native_shape, report.working_shape = grid.native, grid.shape
    report.working_pixel, report.rule = float(np.mean(grid.spacing)), rule
    report.vertebra_patches = int(sum(slice_labels(m, patch, stride, rule).sum()
                                      for z0 in range(0, len(mask), 16) for m in to_grid_mask(grid, mask[z0:z0 + 16])))
    report.rule_dsc_native = rule_dsc(mask, patch, rule)
    report.rule_dsc = report.rule_dsc_native if grid.identity else rule_dsc(mask, patch, rule, grid)
    if report.vertebra_voxels and report.rule_dsc < RULE_DSC_WARN:
        found = suggest_pixel(mask, spacing_yx, patch)
        lift = (f"--pixel-mm {found[0]:g} lifts it to about {found[1]:.2f}" if found else
                f"no pixel size down to {SUGGESTED_PIXELS[-1]} mm lifts it to {RULE_DSC_GOAL}")
        report.warnings.append(f"{report.mask}: the {rule} label rule reaches DSC {report.rule_dsc:.3f} at "
                               f"{report.working_pixel:.3g} mm pixels (below {RULE_DSC_WARN}): {lift}, "
                               f"or --label-rule centre reaches 1.0")


def check_case(case_id: str, image: Path, mask: Path, labels: tuple[int, ...], patch: int = 32,
               stride: int = 12, pixel_mm: float | None = None, rule: str = "majority") -> CaseReport:
    """Read one case and list its problems and warnings; ``vertebra_patches`` counts the patch x
    patch grid patches (at ``stride``, original slices, at ``pixel_mm``) that ``rule`` calls vertebra,
    ``rule_dsc`` what an ideal classifier of those labels scores (``stages.patches.rule_dsc``)."""
    report = CaseReport(case_id, image, mask)
    try:
        case = read_case(image, mask, labels)
    except VolumeError as e:
        report.problems.append(str(e))
        return report
    report.size = case.source.size
    report.spacing = case.source.spacing
    report.orientation = case.source.orientation
    report.label_values = case.label_values
    report.vertebra_voxels = int(case.mask.sum())
    report.vertebra_slices = int(case.mask.any(axis=(1, 2)).sum())
    report.slices = case.mask.shape[0]
    spacing_yx = case.geometry.spacing_zyx[1:]
    rule_report(report, case.mask, spacing_yx, plane_grid(case.mask.shape[1:], spacing_yx, pixel_mm),
                patch, stride, rule)
    h, w = report.working_shape
    if patch > min(h, w):
        report.problems.append(f"{image}: patch {patch} is larger than the axial slice ({w}x{h} pixels at "
                               f"{report.working_pixel:.3g} mm); expected a patch of at most {min(h, w)} pixels")
    elif labels and not set(labels) & set(case.label_values):
        report.problems.append(f"{mask}: none of the selected labels {_ranges(labels)} occurs; "
                               f"label values found: {_ranges(case.label_values)}")
    elif report.vertebra_voxels == 0:
        report.problems.append(f"{mask}: no vertebra voxels (mask is empty)")
    elif report.vertebra_patches == 0:
        report.problems.append(f"{mask}: the {rule} label rule finds no vertebra patch of {patch}x{patch} "
                               f"pixels at {report.working_pixel:.3g} mm, so a build gets none; expected finer "
                               f"pixels (--pixel-mm, the paper's CSI data: 0.31-0.45 mm) or --label-rule centre")
    not_hu = intensity_problem(case.image)
    if not_hu:
        report.problems.append(f"{image}: {not_hu}")
    elif report.vertebra_voxels:
        median = float(np.median(case.image[case.mask.astype(bool)]))
        if median < 100:
            report.problems.append(f"{mask}: median HU under the vertebra mask is {median:.0f}; expected "
                                   f"bone (> 100 HU): wrong --labels or a mask of another image?")
    return report


def check_dataset(path: str | Path, labels: tuple[int, ...] = (), patch: int = 32, stride: int = 12,
                  pixel_mm: float | None = None, rule: str = "majority") -> Iterator[CaseReport]:
    """One report per case of the dataset at ``path`` (folder or CSV), as each case is read."""
    for c in discover(path):
        yield check_case(c.case_id, c.image, c.mask, labels, patch, stride, pixel_mm, rule)
