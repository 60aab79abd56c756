"""Geometry and canonical orientation, in NumPy: no file I/O here.

Every volume is reoriented to one canonical orientation, ITK's "LPS" (identity direction), so
the NumPy array is indexed ``[z, y, x]`` with

    axis 0  z: inferior -> superior   (one axial slice per index)
    axis 1  y: anterior -> posterior  (rows, patient front at the top)
    axis 2  x: right    -> left       (columns, radiological view)

whatever the file's direction matrix. Reorientation only permutes and flips axes (no
interpolation), so a mask stored with a flipped or permuted axis lines up voxel for voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CANONICAL = "LPS"
SPACING_RTOL = 1e-4
ORIGIN_ATOL_FRACTION = 1e-2  # of the smallest spacing
DIRECTION_ATOL = 1e-4
# ITK orientation letters of index axis j along physical axis i, positive / negative direction
AXIS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))


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
    def of(cls, image) -> "Geometry":
        """The geometry of a SimpleITK image (or anything with its Get* methods)."""
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    @property
    def orientation(self) -> str:
        """Three-letter ITK orientation code, e.g. 'LPS' (canonical) or 'RAS': for each index axis,
        the patient direction it runs towards (closest axis, as ITK's DICOMOrientImageFilter)."""
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        axes = np.abs(d).argmax(axis=0)
        return "".join(AXIS_LETTERS[i][int(d[i, j] < 0)] for j, i in enumerate(axes))

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return self.spacing[2], self.spacing[1], self.spacing[0]

    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction), "orientation": self.orientation}

    def apply(self, image):
        """Set this geometry on a SimpleITK image; returns it."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


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
