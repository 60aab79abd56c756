"""Tissue classes, the layout of a phantom case, and the primitives that paint a tissue map.

The tissue map is a (Z, Y, X) uint8 array, one class per voxel, in the mm coordinates described in
``patchstore.phantom.generate``; each object is painted as a signed distance (mm, < 0 inside) evaluated only
on the voxels of its own bounding box (``voxel_box``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from patchstore.phantom.organs import Organs

# Tissue classes (indices into the per-case HU table). Vertebra j: cortical VERTEBRA0 + 2j,
# cancellous VERTEBRA0 + 2j + 1; the mask is every class >= VERTEBRA0. ORGAN is the spine
# phantom's liver and kidneys; the clinical classes from LIVER on are painted only with a contrast
# phase or a body field of view (``patchstore.phantom.organs``), VEIN being the IVC there.
AIR, FAT, SOFT, LUNG, ORGAN, AORTA, VEIN, DISC, CANAL, BONE_CORT, BONE_CANC = range(11)
(LIVER, SPLEEN, KIDNEY_CORTEX, KIDNEY_MEDULLA, PANCREAS, PORTAL_VEIN, BOWEL_WALL, FLUID,
 ORAL_CONTRAST, GAS, PLAQUE, CARTILAGE, CARTILAGE_CALC) = range(11, 24)
VERTEBRA0 = 32
MAX_VERTEBRAE = (256 - VERTEBRA0) // 2


@dataclass(frozen=True)
class Vertebra:
    """One spinal segment: body from z0 to z1 (mm), in-plane scale, canal radius, process lengths."""

    z0: float
    z1: float
    scale: float
    canal: float
    spinous: float
    transverse: float
    sacral: bool


@dataclass(frozen=True)
class Layout:
    """Everything drawn from the generator before painting (mm unless noted)."""

    xs: np.ndarray  # (X,) float32 voxel centres
    ys: np.ndarray  # (Y,) float32
    zs: np.ndarray  # (Z,) float32
    dxy: float
    dz: float
    k: float  # patient in-plane scale (1 = adult, 32 cm wide)
    body: tuple[float, float, float, float, float]  # cx, cy, half-width a, half-depth b, fat
    curve: tuple[float, ...]  # spine x0, ax, fx, phx, y0, ay, fy, phy
    levels: dict  # z of pelvis top, rib start, lung base, aortic bifurcation
    vertebrae: tuple[Vertebra, ...]
    lut: np.ndarray  # (256,) float32 HU per tissue class
    organs: Organs | None = None  # the clinical anatomy; None: the spine phantom's


def spine_xy(lay: Layout, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) mm of the vertebral body at heights ``z`` (any shape, float32)."""
    x0, ax, fx, px, y0, ay, fy, py = lay.curve
    t = z / np.float32(lay.zs[-1] + lay.dz / 2)
    return ((x0 + ax * np.sin(2 * np.pi * fx * t + px)).astype(np.float32),
            (y0 + ay * np.sin(2 * np.pi * fy * t + py)).astype(np.float32))


def aorta_xy(lay: Layout, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) mm of the aorta at heights ``z`` (float32): left of the spine and anterior in
    the abdomen, closer to the spine in the thorax."""
    sx, sy = spine_xy(lay, z)
    w = np.clip((z - lay.levels["ribs"] + 20 * lay.k) / (40 * lay.k), 0, 1)  # 0 abdomen .. 1 thorax
    return sx + (10 + 12 * w) * lay.k, sy - (28 - 20 * w) * lay.k


# ---------------------------------------------------------------- geometry primitives


def voxel_box(lay: Layout, lo: tuple, hi: tuple):
    """Voxels with centres in [lo, hi] (z, y, x mm): (slices, z, y, x broadcastable) or None."""
    sl = []
    for axis, a, b in zip((lay.zs, lay.ys, lay.xs), lo, hi):
        i0, i1 = np.searchsorted(axis, a, "left"), np.searchsorted(axis, b, "right")
        if i1 <= i0:
            return None
        sl.append(slice(int(i0), int(i1)))
    return (tuple(sl), lay.zs[sl[0]][:, None, None], lay.ys[sl[1]][None, :, None],
            lay.xs[sl[2]][None, None, :])


def ellipse(u, v, a, b) -> np.ndarray:
    """Approximate signed distance (mm, < 0 inside) to an ellipse with half-axes a, b at the origin."""
    return (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1) * np.minimum(a, b)


def capsule(u, v, p0, p1, r) -> np.ndarray:
    """Signed distance to the 2-D segment p0-p1 thickened by radius r."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((u - p0[0]) * dx + (v - p0[1]) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
    return np.hypot(u - p0[0] - t * dx, v - p0[1] - t * dy) - r


def segment3(x, y, z, p0: np.ndarray, p1: np.ndarray, r: float) -> np.ndarray:
    """Signed distance to the 3-D segment p0-p1 (x, y, z mm) thickened by radius r."""
    d = p1 - p0
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / (d @ d + 1e-9), 0, 1)
    return np.sqrt((x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2
                   + (z - p0[2] - t * d[2]) ** 2) - r


def slab(z, z0, z1) -> np.ndarray:
    """Signed distance to the slab z0 <= z <= z1."""
    return np.maximum(z0 - z, z - z1)


def paint(tissue: np.ndarray, sl: tuple, inside: np.ndarray, value: int, over=None) -> None:
    """Set ``tissue[sl]`` to ``value`` where ``inside`` (and the current class is in ``over``)."""
    region = tissue[sl]
    inside = np.broadcast_to(inside, region.shape)
    region[inside & np.isin(region, over) if over is not None else inside] = value


def paint_bone(tissue: np.ndarray, sl: tuple, sdf: np.ndarray, cort: int, canc: int, shell: float) -> None:
    """Cortical shell ``shell`` mm thick around a cancellous core; unions of calls stay shell-free."""
    region = tissue[sl]
    sdf = np.broadcast_to(sdf, region.shape)
    region[(sdf < 0) & (region != canc)] = cort
    region[sdf < -shell] = canc


def paint_ellipsoid(tissue: np.ndarray, lay: Layout, centre, half, value: int, over=None) -> None:
    """An ellipsoid (centre, half-axes in x, y, z mm), painted over the classes in ``over``."""
    box = voxel_box(lay, [c - h for c, h in zip(centre[::-1], half[::-1])],
                    [c + h for c, h in zip(centre[::-1], half[::-1])])
    if box is not None:
        sl, z, y, x = box
        r = sum(((c - m) / h) ** 2 for c, m, h in zip((x, y, z), centre, half))
        paint(tissue, sl, r < 1, value, over=over)


def tube_segments(lay: Layout, path: np.ndarray, r: float):
    """For each segment of a 3-D polyline (N, 3) (x, y, z mm) thickened by radius r, the voxels of
    its bounding box: yields (slices, (z, y, x) broadcastable mm, signed distance mm)."""
    for p0, p1 in zip(path[:-1], path[1:]):
        lo, hi = np.minimum(p0, p1) - r, np.maximum(p0, p1) + r
        box = voxel_box(lay, lo[::-1], hi[::-1])
        if box is not None:
            sl, z, y, x = box
            yield sl, (z, y, x), segment3(x, y, z, p0, p1, r)
