"""Which CTs `infer volume` segments, the reference mask of each, and where each output goes.

Inputs (any number, mixed), each becoming one or more cases:

    ct.nii.gz, ct.mha, ...        one case named "ct" (a trailing _0000 channel suffix dropped)
    series/                       a DICOM series folder: one case named "series"
    imagesTr/                     a folder of volumes and DICOM sub-folders (Decathlon / nnU-Net,
                                  with or without _0000): one case per volume
    dataset/                      a folder holding imagesTr/: the same, from dataset/imagesTr/
    cases.csv                     header image[,mask][,case], paths relative to the CSV; the mask
                                  column gives each case's reference

References (``--reference``): one per single-CT input, in their order; or one folder of masks
named after the cases (<case>.nii.gz, any readable suffix; a folder holding labelsTr/ means that).

Outputs: a single CT (file or DICOM series) given alone writes the mask to ``-o`` as a file;
anything else writes a folder, one <case>.nii.gz per case (nnU-Net style), and resumes: a case
whose mask exists is not segmented again.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from patchstore.io.discover import DiscoveryError, check_case_name, strip_volume_suffix
from patchstore.io.volume import READ_SUFFIXES, is_dicom_dir

CHANNEL = "_0000"  # nnU-Net's suffix of the first (here: only) input channel
OTHER_CHANNELS = ("_0001", "_0002", "_0003")
MASK_SUFFIX = ".nii.gz"


@dataclass(frozen=True)
class Case:
    """One CT to segment: its name (the output's file name), the image, and its reference mask."""

    case_id: str
    image: Path
    reference: Path | None = None


@dataclass(frozen=True)
class CaseOutputs:
    """Where one case's files go. The mask is written last: it marks the case as done."""

    mask: Path
    probability: Path | None
    overlays: Path | None   # folder of axial slice_ZZZZ.png
    summary: Path | None    # the sagittal + coronal picture


def is_single_volume(path: Path) -> bool:
    """A CT file or a DICOM series folder (one case), not a CSV or a folder of volumes."""
    if not path.is_dir():
        return path.suffix.lower() != ".csv"
    if (path / "imagesTr").is_dir() or any(p.is_file() and strip_volume_suffix(p.name) for p in path.iterdir()):
        return False  # a folder of volumes: don't make GDCM read them all looking for DICOM
    return is_dicom_dir(path)


def case_name(path: Path) -> str:
    """Case name of a volume: the file name less its suffix and _0000; a DICOM folder's name."""
    stem = path.name if path.is_dir() else (strip_volume_suffix(path.name) or path.name)
    return stem.removesuffix(CHANNEL)


def _volume_case(path: Path) -> Case:
    if path.is_file() and strip_volume_suffix(path.name) is None:
        raise DiscoveryError(f"{path}: unsupported file type; expected a volume ({', '.join(READ_SUFFIXES)}), a "
                             f"DICOM series folder, a folder of volumes or a CSV with an 'image' column")
    name = case_name(path)
    check_case_name(name, f"{path}: case name")
    return Case(name, path)


def folder_cases(folder: Path) -> list[Case]:
    """One case per volume file or DICOM sub-folder of ``folder`` (or of ``folder``/imagesTr)."""
    images = folder / "imagesTr" if (folder / "imagesTr").is_dir() else folder
    cases = []
    for p in sorted(images.iterdir()):
        if p.name.startswith(".") or not (strip_volume_suffix(p.name) is not None or is_dicom_dir(p)):
            continue
        stem = p.name if p.is_dir() else strip_volume_suffix(p.name)
        if stem.endswith(OTHER_CHANNELS):
            raise DiscoveryError(f"{p}: a second input channel ({stem[-5:]}); expected single-channel CT "
                                 f"(<case>{CHANNEL} or <case>)")
        cases.append(_volume_case(p))
    if not cases:
        raise DiscoveryError(f"{images}: no volumes found; expected files ending in {', '.join(READ_SUFFIXES)} or "
                             f"DICOM series sub-folders")
    return cases


def csv_cases(path: Path) -> list[Case]:
    """Cases of a CSV with a header ``image[,mask][,case]``; paths are relative to the CSV."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            f.seek(0)
            header = [c.strip() for c in next(csv.reader(f), [])]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DiscoveryError(f"{path}: not a readable CSV text file ({e}); expected a header image[,mask][,case]") from e
    if "image" not in header:
        raise DiscoveryError(f"{path}: columns {header}; expected a header with 'image' (and optionally 'mask', "
                             f"'case')")
    cases = []
    for line, row in enumerate(rows, start=2):
        if None in row:  # DictReader keeps the surplus fields of a row under the key None
            raise DiscoveryError(f"{path}, line {line}: {len(header) + len(row[None])} fields; the header has "
                                 f"{len(header)}")
        row = {k.strip(): (v or "").strip() for k, v in row.items()}
        paths = {}
        for field in ("image", "mask"):
            if field == "mask" and not row.get("mask"):
                continue  # no reference for this case
            p = path.parent / row[field]
            if not row[field] or not p.exists():
                raise DiscoveryError(f"{path}, line {line}: {field} {row[field]!r} does not exist (resolved to {p}); "
                                     f"expected a path relative to the CSV")
            paths[field] = p
        name = row.get("case") or case_name(paths["image"])
        check_case_name(name, f"{path}, line {line}: case" + ("" if row.get("case") else " name (from image)"))
        cases.append(Case(name, paths["image"], paths.get("mask")))
    if not cases:
        raise DiscoveryError(f"{path}: no rows; expected one image[,mask] per line")
    return cases


def reference_in(folder: Path, case_id: str) -> Path | None:
    """The mask of ``case_id`` in a reference folder (or its labelsTr/): <case> + a volume suffix."""
    labels = folder / "labelsTr" if (folder / "labelsTr").is_dir() else folder
    for suffix in READ_SUFFIXES:
        if (labels / f"{case_id}{suffix}").is_file():
            return labels / f"{case_id}{suffix}"
    return None


def find_cases(inputs: Sequence[Path], references: Sequence[Path] = ()) -> list[Case]:
    """The cases of ``inputs`` (volumes, DICOM folders, folders of volumes, CSVs; see the module
    docstring), each with its reference: from ``references`` or a CSV's mask column."""
    inputs = [Path(p) for p in inputs]
    cases: list[Case] = []
    for p in inputs:
        if not p.exists():
            raise DiscoveryError(f"{p}: no such file or folder")
        if is_single_volume(p):
            cases.append(_volume_case(p))
        else:
            cases.extend(csv_cases(p) if p.is_file() else folder_cases(p))
    cases = _with_references(inputs, cases, [Path(r) for r in references])
    seen: dict[str, Path] = {}
    for c in cases:
        if c.case_id in seen:
            raise DiscoveryError(f"{c.image} and {seen[c.case_id]}: both are case {c.case_id!r}; expected distinct "
                                 f"case names (they name the output files)")
        seen[c.case_id] = c.image
    return cases


def _with_references(inputs: list[Path], cases: list[Case], references: list[Path]) -> list[Case]:
    if not references:
        return cases
    if any(c.reference is not None for c in cases):
        raise DiscoveryError(f"--reference {references[0]} and a CSV with a mask column; expected one source of "
                             f"reference masks")
    if len(references) == 1 and references[0].is_dir() and not is_dicom_dir(references[0]):
        found = [(c, reference_in(references[0], c.case_id)) for c in cases]
        missing = [c.case_id for c, r in found if r is None]
        if missing:
            raise DiscoveryError(f"{references[0]}: no reference mask for case(s) {', '.join(missing)}; expected "
                                 f"<case>{MASK_SUFFIX} (or another volume suffix) per case")
        return [Case(c.case_id, c.image, r) for c, r in found]
    if len(references) != len(cases) or not all(is_single_volume(p) for p in inputs):
        raise DiscoveryError(f"{len(references)} --reference for {len(cases)} case(s); expected one mask per CT file "
                             f"(in their order) or one folder of masks named after the cases")
    return [Case(c.case_id, c.image, r) for c, r in zip(cases, references)]


def writes_folder(inputs: Sequence[Path], out: Path) -> bool:
    """Does ``-o`` name a folder of masks (True) or the mask file of a single CT (False)?"""
    return len(inputs) != 1 or not is_single_volume(Path(inputs[0])) or out.is_dir()


def plan_outputs(cases: Sequence[Case], out: Path, folder: bool, probabilities: Path | None = None,
                 overlays: Path | None = None) -> list[CaseOutputs]:
    """Each case's output paths. In a folder: <case>.nii.gz, <case>_prob.nii.gz; overlays go to
    ``overlays``/<case>/ and the summary picture to ``overlays``/<case>_summary.png."""
    for option, path in (("-o", out), ("--probabilities", probabilities)):
        if folder and path is not None and strip_volume_suffix(path.name) is not None:
            raise DiscoveryError(f"{option} {path}: a file name, but {len(cases)} case(s) from folders or CSVs "
                                 f"write a folder; expected a folder such as {path.parent / 'predictions'}")
    plans = []
    for c in cases:
        mask = out / f"{c.case_id}{MASK_SUFFIX}" if folder else out
        prob = None
        if probabilities is not None:
            into = folder or probabilities.is_dir()
            prob = probabilities / f"{c.case_id}_prob{MASK_SUFFIX}" if into else probabilities
        plans.append(CaseOutputs(mask, prob, overlays / c.case_id if overlays else None,
                                 overlays / f"{c.case_id}_summary.png" if overlays else None))
    return plans


__all__ = ["Case", "CaseOutputs", "case_name", "csv_cases", "find_cases", "folder_cases",
           "is_single_volume", "plan_outputs", "reference_in", "writes_folder"]
