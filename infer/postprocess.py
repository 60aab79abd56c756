"""Morphological clean-up of the predicted mask, the paper's last step (section II.E, ref. [50]).

Patch classification over-segments (the paper notes "a higher rate of false positives"), so the
binary prediction is cleaned in three steps, each its own function:

1. ``open_slices``: binary opening in every axial slice with a disk of ``opening_radius`` pixels
   (radius 1 is the 3x3 cross), removing spurs and specks thinner than the disk.
2. ``fill_slice_holes``: fill holes (background not connected to the slice edge) in every slice.
3. ``keep_large_components``: 3-D connected components with 26-connectivity; keep every component
   of at least ``min_component_fraction`` of the largest one's volume and at least
   ``min_component_mm3``. Several components are kept on purpose: vertebrae separated by discs
   are separate components, so "keep the largest" would delete most of the spine.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from infer.metrics import bounding_box

_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
_IN_SLICE_CROSS = ndimage.generate_binary_structure(2, 1)[None]  # (1, 3, 3): no z-neighbours


def disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) bool disk ``y**2 + x**2 <= r**2``; radius 1 is the 3x3 cross."""
    r = int(radius)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (y * y + x * x) <= r * r


def open_slices(mask: np.ndarray, radius: int) -> np.ndarray:
    """(Z, Y, X) bool -> (Z, Y, X) bool: per-slice binary opening with ``disk(radius)``; 0 disables."""
    if radius < 0:
        raise ValueError(f"opening_radius must be >= 0 pixels, not {radius}")
    if radius == 0:
        return mask.copy()
    # a (1, k, k) structure acts within each axial slice only; the array edge counts as background
    return ndimage.binary_opening(mask, structure=disk(radius)[None], border_value=0)


def fill_slice_holes(mask: np.ndarray) -> np.ndarray:
    """(Z, Y, X) bool -> (Z, Y, X) bool with the holes of every axial slice filled.

    A hole is background not 4-connected, within its slice, to the slice edge.
    """
    return ndimage.binary_fill_holes(mask, structure=_IN_SLICE_CROSS)


def keep_large_components(
    mask: np.ndarray, spacing, min_fraction: float = 0.1, min_mm3: float = 0.0
) -> np.ndarray:
    """(Z, Y, X) bool -> (Z, Y, X) bool keeping 26-connected components that are large enough.

    A component is kept when its voxel count is >= ``min_fraction`` x the largest component's
    and its volume (voxels x sz x sy x sx, spacing in mm) is >= ``min_mm3``.
    """
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_component_fraction must be in [0, 1], not {min_fraction}")
    out = np.zeros_like(mask, dtype=bool)
    box = bounding_box(mask, mask, margin=0)
    if box is None:
        return out
    # label only inside the box: a full 512x512x550 int32 label map would take 577 MB
    labels, n = ndimage.label(mask[box], structure=_CONNECTIVITY_26)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    voxel_mm3 = float(np.prod([float(s) for s in spacing]))
    keep = (sizes >= min_fraction * sizes.max()) & (sizes * voxel_mm3 >= min_mm3)
    keep[0] = False
    out[box] = keep[labels]
    return out


def postprocess(
    mask: np.ndarray,
    spacing,
    *,
    opening_radius: int = 1,
    fill_holes: bool = True,
    min_component_fraction: float = 0.1,
    min_component_mm3: float = 0.0,
) -> np.ndarray:
    """(Z, Y, X) bool prediction -> (Z, Y, X) bool cleaned mask; spacing (sz, sy, sx) in mm.

    Defaults: opening with the 3x3 cross (radius 1 pixel, 0 disables), per-slice hole filling on,
    keep components of >= 10 % of the largest component's volume, no absolute volume floor.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3 or mask.dtype != bool:
        raise ValueError(f"mask must be a (Z, Y, X) bool array, not {mask.shape} {mask.dtype}")
    if len(tuple(spacing)) != 3:
        raise ValueError(f"spacing must be (sz, sy, sx) in mm, not {spacing!r}")
    out = np.zeros_like(mask)
    # Work inside the mask's bounding box: exact, as long as the margin exceeds the opening radius
    # (nothing grows further than that) and leaves a background ring for the hole filling.
    box = bounding_box(mask, mask, margin=max(opening_radius, 0) + 1)
    if box is None:
        return out
    crop = open_slices(mask[box], opening_radius)
    if fill_holes:
        crop = fill_slice_holes(crop)
    out[box] = keep_large_components(crop, spacing, min_component_fraction, min_component_mm3)
    return out
