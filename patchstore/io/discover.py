"""Find image/mask pairs: a Decathlon / nnU-Net folder or a CSV with columns ``image,mask``.

    dataset/                        cases.csv
      imagesTr/case_001_0000.nii.gz   image,mask
      labelsTr/case_001.nii.gz        ct/a.nii.gz,seg/a.nii.gz   (paths relative to the CSV)

In the folder layout the ``_0000`` channel suffix is optional; each image needs a label file
with the same case name, and a DICOM series can stand in a sub-folder of either side.

A case name becomes the name of its shard file, so it must be a plain file name
(``patchstore.files.confined``): a CSV's ``case`` column of ``../x`` or ``/tmp/x`` is refused.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from patchstore.files import UnsafePathError, name_problem
from patchstore.io.volume import READ_SUFFIXES, is_dicom_dir


class DiscoveryError(ValueError):
    """The input is not a dataset this tool can read; the message says what was expected."""


@dataclass(frozen=True)
class CasePaths:
    case_id: str
    image: Path
    mask: Path


def check_case_name(case_id: str, where: str) -> None:
    """Refuse a case name that is not a plain file name: it names the case's shard file."""
    problem = name_problem(case_id)
    if problem:
        raise UnsafePathError(f"{where} is {case_id!r}, {problem}; expected a plain file name (it names "
                              f"the case's shard file)")


def strip_volume_suffix(name: str) -> str | None:
    lower = name.lower()
    for s in sorted(READ_SUFFIXES, key=len, reverse=True):
        if lower.endswith(s):
            return name[: -len(s)]
    return None


def _entries(folder: Path) -> dict[str, Path]:
    """Case name -> volume path for the volume files and DICOM sub-folders in ``folder``."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        stem = p.name if p.is_dir() and is_dicom_dir(p) else strip_volume_suffix(p.name)
        if stem is not None:
            out[stem] = p
    return out


def discover_folder(root: Path) -> list[CasePaths]:
    images, labels = root / "imagesTr", root / "labelsTr"
    for d in (images, labels):
        if not d.is_dir():
            raise DiscoveryError(f"{root}: no {d.name}/ folder; expected the Decathlon layout "
                                 f"imagesTr/ + labelsTr/ or a CSV file with columns image,mask")
    masks = _entries(labels)
    cases, missing = [], []
    for stem, image in _entries(images).items():
        case_id = stem[:-5] if stem.endswith("_0000") else stem
        if stem.endswith(("_0001", "_0002", "_0003")):
            raise DiscoveryError(f"{image}: a second input channel; expected single-channel CT (_0000)")
        if case_id not in masks:
            missing.append(case_id)
            continue
        check_case_name(case_id, f"{image}: case name")
        cases.append(CasePaths(case_id, image, masks[case_id]))
    if missing:
        raise DiscoveryError(f"{labels}: no label file for case(s) {', '.join(missing)}; expected "
                             f"labelsTr/<case>.nii.gz beside imagesTr/<case>_0000.nii.gz")
    if not cases:
        raise DiscoveryError(f"{images}: no volumes found; expected files ending in {', '.join(READ_SUFFIXES)}")
    return cases


def discover_csv(path: Path) -> list[CasePaths]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            if "image" not in fields or "mask" not in fields:
                raise DiscoveryError(f"{path}: columns {fields}; expected a header with 'image' and 'mask'")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DiscoveryError(f"{path}: not a readable CSV text file ({e}); expected a header with 'image' "
                             f"and 'mask'") from e
    for line, row in enumerate(rows, start=2):
        if None in row:  # DictReader keeps the surplus fields of a row under the key None
            raise DiscoveryError(f"{path}, line {line}: {len(fields) + len(row[None])} fields; the header "
                                 f"has {len(fields)}")
    rows = [{k.strip(): (v or "").strip() for k, v in row.items()} for row in rows]
    cases, seen = [], set()
    for line, row in enumerate(rows, start=2):
        image, mask = path.parent / row["image"], path.parent / row["mask"]
        for field, p in (("image", image), ("mask", mask)):
            if not row[field] or not p.exists():
                raise DiscoveryError(f"{path}, line {line}: {field} {row[field]!r} does not exist "
                                     f"(resolved to {p}); expected a path relative to the CSV")
        case_id = row.get("case") or strip_volume_suffix(image.name) or image.name
        where = f"{path}, line {line}: case" if row.get("case") else f"{path}, line {line}: case name (from image)"
        check_case_name(case_id, where)
        if case_id in seen:
            raise DiscoveryError(f"{path}, line {line}: case name {case_id!r} appears twice; expected "
                                 f"unique image names (or a 'case' column)")
        seen.add(case_id)
        cases.append(CasePaths(case_id, image, mask))
    if not cases:
        raise DiscoveryError(f"{path}: no rows; expected one image,mask pair per line")
    return cases


def discover(path: str | Path) -> list[CasePaths]:
    """Image/mask pairs of a dataset folder or CSV, sorted by case name."""
    path = Path(path)
    if not path.exists():
        raise DiscoveryError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix.lower() != ".csv":
        raise DiscoveryError(f"{path}: a single file; expected a dataset: a CSV file with columns image,mask "
                             f"or a folder with imagesTr/ and labelsTr/")
    cases = discover_csv(path) if path.is_file() else discover_folder(path)
    return sorted(cases, key=lambda c: c.case_id)
