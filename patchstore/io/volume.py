"""CT and mask I/O with geometry checks: the only module that imports SimpleITK.

Every volume is read in canonical orientation (see ``patchstore.io.geometry``: array ``[z, y, x]``,
axial slices along z, LPS) and every mask written back in its image's own orientation.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from patchstore.files import atomic_path
from patchstore.io.geometry import (
    CANONICAL,
    Geometry,
    VolumeError,
    canonical_array,
    canonical_geometry,
    same_grid_problems,
)
from patchstore.io.integrity import data_files, header_problem, nonfinite_voxels

READ_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
WRITE_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")

__all__ = ["CANONICAL", "Case", "Geometry", "Volume", "VolumeError", "binarize", "check_same_grid",
           "content_sha256", "label_values", "output_suffix", "parse_labels", "read_case", "read_header",
           "read_volume", "same_grid_problems", "write_mask", "write_oriented", "write_volume"]


@dataclass(frozen=True)
class Volume:
    """A volume in canonical orientation: ``array`` (Z, Y, X); ``source`` is the file's own geometry."""

    array: np.ndarray
    geometry: Geometry
    source: Geometry
    path: Path


# ---------------------------------------------------------------- header


def is_dicom_dir(path: Path) -> bool:
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def _dicom_files(path: Path) -> list[str]:
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    if len(ids) != 1:
        raise VolumeError(f"{path}: folder holds {len(ids)} DICOM series {list(ids)}; expected exactly 1")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), ids[0]))


def _check_suffix(path: Path) -> None:
    name = path.name.lower()
    if not any(name.endswith(s) for s in READ_SUFFIXES):
        raise VolumeError(f"{path}: unsupported file type; expected a DICOM series folder or one of "
                          f"{', '.join(READ_SUFFIXES)}")


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 2**40


def check_header(path: Path, dimension: int, components: int, size: tuple, spacing: tuple,
                 direction: tuple = ()) -> None:
    """Refuse absurd headers before any pixel is read."""
    if dimension != 3:
        raise VolumeError(f"{path}: image dimension is {dimension}; expected 3 (a 3-D volume)")
    if components != 1:
        raise VolumeError(f"{path}: {components} components per voxel; expected 1 (a scalar CT or mask)")
    bad = [s for s in spacing if not (math.isfinite(s) and s > 0)]
    if bad:
        raise VolumeError(f"{path}: spacing {tuple(spacing)}; expected three finite values > 0 mm")
    if not all(math.isfinite(d) for d in direction):
        raise VolumeError(f"{path}: direction {tuple(direction)}; expected finite direction cosines")
    if min(size) < 1:
        raise VolumeError(f"{path}: size {tuple(size)}; expected at least one voxel along each axis")
    voxels = math.prod(size)
    limit = _memory_bytes() // 16  # float32 volume plus working copies must fit with room to spare
    if voxels * 4 > limit:
        raise VolumeError(f"{path}: size {tuple(size)} is {voxels:,} voxels ({voxels * 4 / 2**30:.1f} GiB "
                          f"as float32); expected at most {limit // 4:,} voxels on this machine")


def read_header(path: str | os.PathLike) -> Geometry:
    """Geometry of a file or DICOM series in its own orientation, after the header checks."""
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")
    if path.is_dir():
        files = _dicom_files(path) if is_dicom_dir(path) else []
        if not files:
            raise VolumeError(f"{path}: folder holds no DICOM series; expected a DICOM series folder")
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        reader.ReadImageInformation()
        size = tuple(reader.GetSize()[:2]) + (len(files),)
        spacing = tuple(reader.GetSpacing())
        check_header(path, 3, reader.GetNumberOfComponents(), size, spacing)
        return Geometry(size, spacing, tuple(reader.GetOrigin()), tuple(reader.GetDirection()))
    _check_suffix(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise VolumeError(f"{path}: unreadable header ({str(e).strip().splitlines()[-1]})") from e
    check_header(path, reader.GetDimension(), reader.GetNumberOfComponents(),
                 tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetDirection()))
    problem = header_problem(path)  # what ITK reads wrongly: a zero pixdim, a cut-off file, missing data
    if problem:
        raise VolumeError(f"{path}: {problem}")
    return Geometry(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                    tuple(reader.GetDirection()))


# ---------------------------------------------------------------- reading


def _read_sitk(path: Path) -> sitk.Image:
    read_header(path)
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(_dicom_files(path))
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise VolumeError(f"{path}: unreadable ({str(e).strip().splitlines()[-1]})") from e


def read_volume(path: str | os.PathLike, dtype=np.float32) -> Volume:
    """Read a CT (HU) or a label map as ``dtype`` in canonical orientation; refuses NaN/Inf."""
    path = Path(path)
    image = _read_sitk(path)
    nonfinite = None if path.is_dir() else nonfinite_voxels(path)  # ITK reads NIfTI NaN / Inf as 0
    if nonfinite:
        (count, (x, y, z)) = nonfinite
        raise VolumeError(f"{path}: {count:,} voxels are NaN or Inf in the file's data (first at x={x}, y={y}, "
                          f"z={z} in the file's own axes); expected finite intensities")
    source = Geometry.of(image)
    array = canonical_array(sitk.GetArrayViewFromImage(image), source, path, dtype)
    del image
    if array.dtype.kind == "f" and not np.isfinite(array.sum(dtype=np.float64)):  # fast path: one pass
        finite = np.isfinite(array)
        if not finite.all():
            z, y, x = np.argwhere(~finite)[0]
            raise VolumeError(f"{path}: {int((~finite).sum()):,} voxels are NaN or Inf (first at x={x}, "
                              f"y={y}, z={z} canonical); expected finite intensities")
    return Volume(array, canonical_geometry(source, path), source, path)


def parse_labels(spec: str | None) -> tuple[int, ...]:
    """'25-50' or '1,2,3' or '1-3,7' -> sorted label values; '' or None -> () meaning nonzero."""
    if not spec:
        return ()
    values: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(lo) > int(hi)):
            raise ValueError(f"Label selection {spec!r}: part {part!r} is not a label value or a range "
                             f"'a-b' with 0 <= a <= b; expected e.g. '25-50' or '1,2,3'")
        values.update(range(int(lo), int(hi or lo) + 1))
    return tuple(sorted(values))


def binarize(labels_zyx: np.ndarray, labels: tuple[int, ...]) -> np.ndarray:
    """Label map -> (Z, Y, X) uint8 0/1: nonzero, or the selected label values."""
    if labels:
        return np.isin(labels_zyx, np.asarray(labels)).astype(np.uint8)
    return (labels_zyx != 0).astype(np.uint8)


def _fmt(v) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) + ")"
    return str(v)


def check_same_grid(image: Volume, mask: Volume) -> None:
    problems = same_grid_problems(image.geometry, mask.geometry)
    if problems:
        field, a, b = problems[0]
        more = f" (also differing: {', '.join(p[0] for p in problems[1:])})" if len(problems) > 1 else ""
        raise VolumeError(f"Mask {mask.path} does not cover the grid of image {image.path}: {field} is "
                          f"{_fmt(b)} in the mask and {_fmt(a)} in the image, after reorienting both to "
                          f"{CANONICAL}{more}")


@dataclass(frozen=True)
class Case:
    """An image/mask pair in canonical orientation: ``image`` float32 HU, ``mask`` uint8 0/1."""

    image: np.ndarray
    mask: np.ndarray
    geometry: Geometry
    source: Geometry
    label_values: tuple[int, ...]


def read_case(image_path: str | os.PathLike, mask_path: str | os.PathLike,
              labels: tuple[int, ...] = ()) -> Case:
    """Read, reorient and check an image/mask pair; select ``labels`` (default: nonzero)."""
    image = read_volume(image_path)
    mask = read_volume(mask_path, dtype=None)
    check_same_grid(image, mask)
    if mask.array.dtype.kind == "f":
        raise VolumeError(f"{mask.path}: pixel type {mask.array.dtype}; expected an integer label map")
    return Case(image.array, binarize(mask.array, labels), image.geometry, image.source, label_values(mask.array))


def label_values(labels_zyx: np.ndarray) -> tuple[int, ...]:
    """Sorted distinct values of an integer label map (bincount: ~5x faster than np.unique here)."""
    lo, hi = int(labels_zyx.min()), int(labels_zyx.max())
    if lo >= 0 and hi < 1 << 16:
        return tuple(int(v) for v in np.flatnonzero(np.bincount(labels_zyx.ravel(), minlength=hi + 1)))
    return tuple(int(v) for v in np.unique(labels_zyx))


# ---------------------------------------------------------------- writing


def output_suffix(path: Path) -> str:
    """The format suffix of an output path; refuses a type no writer here knows (``x.txt``)."""
    name = path.name.lower()
    for s in sorted(WRITE_SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return s
    raise VolumeError(f"{path}: can't write this file type; expected one of {', '.join(WRITE_SUFFIXES)}")


def write_volume(path: str | os.PathLike, array_zyx: np.ndarray, geometry: Geometry) -> Path:
    """Write a (Z, Y, X) array with ``geometry`` (the array's own, not reoriented), atomically."""
    path = Path(path)
    suffix = output_suffix(path)
    image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array_zyx)))
    with atomic_path(path, suffix) as tmp:  # the suffix tells ITK the format
        sitk.WriteImage(image, str(tmp), True)
        if suffix == ".mhd":  # header + raw pair: the header names the raw file; rename raw first
            raw_tmp, raw = tmp.with_suffix(".zraw"), path.with_suffix(".zraw")
            try:
                tmp.write_text(tmp.read_text(encoding="utf-8").replace(raw_tmp.name, raw.name), encoding="utf-8")
                os.replace(raw_tmp, raw)
            finally:
                raw_tmp.unlink(missing_ok=True)
    return path


def write_oriented(path: str | os.PathLike, array_zyx: np.ndarray, canonical: Geometry,
                   source: Geometry) -> Path:
    """Write a canonical (Z, Y, X) array back in the orientation and exact geometry of ``source``.

    ``canonical`` and ``source`` are the ``geometry`` and ``source`` of the image it belongs to.
    """
    image = canonical.apply(sitk.GetImageFromArray(np.ascontiguousarray(array_zyx)))
    oriented = sitk.DICOMOrient(image, source.orientation)
    problems = same_grid_problems(Geometry.of(oriented), source)
    assert not problems, f"reorientation did not restore the source grid: {problems}"
    return write_volume(path, sitk.GetArrayFromImage(oriented), source)


def write_mask(path: str | os.PathLike, mask_zyx: np.ndarray, canonical: Geometry, source: Geometry) -> Path:
    """Write a canonical 0/1 mask as uint8 in the orientation and exact geometry of ``source``."""
    return write_oriented(path, mask_zyx.astype(np.uint8), canonical, source)


# ---------------------------------------------------------------- identity


def content_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of every byte a volume depends on: a file's bytes, then those of the data files its
    header names (.mhd + .raw/.zraw, .nhdr + data), or a DICOM folder's files in sorted name order."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path, *data_files(path)]
    h = hashlib.sha256()
    for f in files:
        if not f.is_file():
            raise VolumeError(f"{path}: data file {f} named in the header does not exist")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
