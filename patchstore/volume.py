"""CT and mask I/O with geometry checks: the only module that imports SimpleITK.

Every volume is reoriented to one canonical orientation, ITK's "LPS" (identity direction), so
the NumPy array is indexed ``[z, y, x]`` with

    axis 0  z: inferior -> superior   (one axial slice per index)
    axis 1  y: anterior -> posterior  (rows, patient front at the top)
    axis 2  x: right    -> left       (columns, radiological view)

whatever the file's direction matrix. Reorientation only permutes and flips axes (no
interpolation), so a mask stored with a flipped or permuted axis lines up voxel for voxel.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

CANONICAL = "LPS"
READ_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
WRITE_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")
SPACING_RTOL = 1e-4
ORIGIN_ATOL_FRACTION = 1e-2  # of the smallest spacing
DIRECTION_ATOL = 1e-4


class VolumeError(ValueError):
    """A volume or mask that can't be used: the message names the file and what is wrong."""


@dataclass(frozen=True)
class Geometry:
    """ITK geometry. ``size``/``spacing``/``origin`` in (x, y, z) order, ``direction`` row-major 3x3."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    @property
    def orientation(self) -> str:
        """Three-letter ITK orientation code, e.g. 'LPS' (canonical) or 'RAS'."""
        return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(self.direction)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return self.spacing[2], self.spacing[1], self.spacing[0]

    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction), "orientation": self.orientation}

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


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


def check_header(path: Path, dimension: int, components: int, size: tuple, spacing: tuple) -> None:
    """Refuse absurd headers before any pixel is read."""
    if dimension != 3:
        raise VolumeError(f"{path}: image dimension is {dimension}; expected 3 (a 3-D volume)")
    if components != 1:
        raise VolumeError(f"{path}: {components} components per voxel; expected 1 (a scalar CT or mask)")
    bad = [s for s in spacing if not (math.isfinite(s) and s > 0)]
    if bad:
        raise VolumeError(f"{path}: spacing {tuple(spacing)}; expected three finite values > 0 mm")
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
                 tuple(reader.GetSize()), tuple(reader.GetSpacing()))
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


def canonical_axes(geometry: Geometry, path: Path) -> tuple[list[int], list[bool]]:
    """For canonical index axis i (x, y, z): the source index axis and whether it is flipped.

    Column j of the direction matrix is the physical direction of index axis j; canonical axis i
    takes the index axis whose direction lies closest to +/- physical axis i (LPS).
    """
    d = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    perm = [int(np.argmax(np.abs(d[i]))) for i in range(3)]
    if sorted(perm) != [0, 1, 2]:
        raise VolumeError(f"{path}: direction {geometry.direction} is too oblique to tell the axial plane; "
                          f"expected each index axis near one patient axis")
    return perm, [bool(d[i, perm[i]] < 0) for i in range(3)]


def canonical_geometry(geometry: Geometry, path: Path) -> Geometry:
    """The geometry of the volume once reoriented to LPS by permuting and flipping axes."""
    perm, flip = canonical_axes(geometry, path)
    d = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    first = np.array([geometry.size[perm[i]] - 1 if flip[i] else 0 for i in range(3)], dtype=float)
    index0 = np.zeros(3)
    index0[perm] = first  # source index of the voxel that becomes canonical index (0, 0, 0)
    origin = np.asarray(geometry.origin) + d @ (np.asarray(geometry.spacing) * index0)
    direction = np.stack([d[:, perm[i]] * (-1 if flip[i] else 1) for i in range(3)], axis=1)
    return Geometry(tuple(int(geometry.size[j]) for j in perm), tuple(float(geometry.spacing[j]) for j in perm),
                    tuple(float(v) for v in origin), tuple(float(v) for v in direction.ravel()))


def canonical_array(array_zyx: np.ndarray, geometry: Geometry, path: Path, dtype=None) -> np.ndarray:
    """Reorient a (Z, Y, X) array indexed like ``geometry`` to LPS: one copy (with the dtype cast)."""
    perm, flip = canonical_axes(geometry, path)
    view = np.transpose(array_zyx, [2 - perm[2 - a] for a in range(3)])  # numpy axis a = index axis 2-a
    view = view[tuple(slice(None, None, -1) if flip[2 - a] else slice(None) for a in range(3))]
    # always a copy: the view may alias a SimpleITK buffer that dies with its image
    return np.array(view, dtype=dtype, order="C", copy=True)


def read_volume(path: str | os.PathLike, dtype=np.float32) -> Volume:
    """Read a CT (HU) or a label map as ``dtype`` in canonical orientation; refuses NaN/Inf."""
    path = Path(path)
    image = _read_sitk(path)
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


def same_grid_problems(a: Geometry, b: Geometry) -> list[tuple[str, object, object]]:
    """(field, a's value, b's value) for every geometry field that differs beyond tolerance."""
    out = []
    if a.size != b.size:
        out.append(("size", a.size, b.size))
    if not np.allclose(a.spacing, b.spacing, rtol=SPACING_RTOL, atol=0):
        out.append(("spacing", a.spacing, b.spacing))
    atol = ORIGIN_ATOL_FRACTION * min(min(a.spacing), min(b.spacing))
    if not np.allclose(a.origin, b.origin, rtol=0, atol=atol):
        out.append(("origin", a.origin, b.origin))
    if not np.allclose(a.direction, b.direction, rtol=0, atol=DIRECTION_ATOL):
        out.append(("direction", a.direction, b.direction))
    return out


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


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in sorted(WRITE_SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return s
    raise VolumeError(f"{path}: can't write this file type; expected one of {', '.join(WRITE_SUFFIXES)}")


def write_volume(path: str | os.PathLike, array_zyx: np.ndarray, geometry: Geometry) -> Path:
    """Write a (Z, Y, X) array with ``geometry`` (the array's own, not reoriented), atomically."""
    path = Path(path)
    suffix = _suffix(path)
    image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array_zyx)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        if suffix == ".mhd":  # header + raw pair: write both under temp names, rename raw first
            sitk.WriteImage(image, tmp, True)
            raw_tmp, raw = Path(tmp).with_suffix(".zraw"), path.with_suffix(".zraw")
            text = Path(tmp).read_text().replace(raw_tmp.name, raw.name)
            Path(tmp).write_text(text)
            os.replace(raw_tmp, raw)
        else:
            sitk.WriteImage(image, tmp, True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
    """SHA-256 of a file's bytes, or of a DICOM folder's files in sorted name order."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
