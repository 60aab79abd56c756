"""Dataset integrity check before anyone builds from it (like nnU-Net's verify_dataset_integrity)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from patchstore.io.discover import discover
from patchstore.io.volume import VolumeError, read_case
from patchstore.stages.patches import slice_labels


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
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        if self.size is None:
            return f"{self.case_id}: FAILED"
        sp = "x".join(f"{s:.3g}" for s in self.spacing)
        vals = _ranges(self.label_values)
        return (f"{self.case_id}: size {self.size[0]}x{self.size[1]}x{self.size[2]}, spacing {sp} mm, "
                f"{self.orientation}, labels {{{vals}}}, vertebra voxels {self.vertebra_voxels:,}, "
                f"axial slices with vertebra {self.vertebra_slices}/{self.slices}, "
                f"vertebra patches {self.vertebra_patches:,}")


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


def check_case(case_id: str, image: Path, mask: Path, labels: tuple[int, ...], patch: int = 32,
               stride: int = 12) -> CaseReport:
    """Read one case and list its problems; ``vertebra_patches`` counts the patch x patch grid
    patches (at ``stride``, original slices only) that the label rule calls vertebra."""
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
    report.vertebra_patches = int(sum(slice_labels(m, patch, stride).sum() for m in case.mask))
    if labels and not set(labels) & set(case.label_values):
        report.problems.append(f"{mask}: none of the selected labels {_ranges(labels)} occurs; "
                               f"label values found: {_ranges(case.label_values)}")
    elif report.vertebra_voxels == 0:
        report.problems.append(f"{mask}: no vertebra voxels (mask is empty)")
    elif report.vertebra_patches == 0:
        sx, sy, _ = case.source.spacing
        report.problems.append(f"{mask}: vertebrae never fill more than half of a {patch}x{patch} patch at "
                               f"{sx:.3g}x{sy:.3g} mm pixels, so a build gets no vertebra patches; expected "
                               f"finer in-plane spacing (the paper's CSI data: 0.31-0.45 mm): resample first")
    hu_lo, hu_hi = float(case.image.min()), float(case.image.max())
    if hu_hi < 100 or hu_lo > -200:
        report.problems.append(f"{image}: intensity range [{hu_lo:g}, {hu_hi:g}]; expected CT in "
                               f"Hounsfield units (air near -1000, bone above 100)")
    elif report.vertebra_voxels:
        median = float(np.median(case.image[case.mask.astype(bool)]))
        if median < 100:
            report.problems.append(f"{mask}: median HU under the vertebra mask is {median:.0f}; expected "
                                   f"bone (> 100 HU): wrong --labels or a mask of another image?")
    return report


def check_dataset(path: str | Path, labels: tuple[int, ...] = (), patch: int = 32,
                  stride: int = 12) -> Iterator[CaseReport]:
    """One report per case of the dataset at ``path`` (folder or CSV), as each case is read."""
    for c in discover(path):
        yield check_case(c.case_id, c.image, c.mask, labels, patch, stride)
