r"""Synthetic spine CT phantoms in HU with vertebra masks, deterministic from a generator.

A phantom carries what makes the real task hard: vertebrae (label 1) sit among bones of the same
HU that are *not* labelled (ribs whose heads touch the vertebrae, a sternum, iliac wings and a
sacrum), intervertebral discs split the spine into separate bones, and contrast-filled vessels
fall inside the 100..1500 HU bone window.

Everything is drawn first as a uint8 *tissue* map (one class per HU value, painted in order on
coordinate grids in mm, one bounding box per object), then turned into HU slab by slab (lookup,
partial-volume blur, noise), so a 512 x 512 x 550 case needs no full-volume float temporaries.

Coordinates (mm), matching the canonical array ``[z, y, x]`` of ``patchstore.volume``::

    x: patient right -> left, 0 at the centre of the field of view   (axis 2, columns)
    y: anterior -> posterior, 0 at the centre (posterior is +y)      (axis 1, rows)
    z: inferior -> superior, 0 at the bottom of the volume           (axis 0, slices)

              -y (anterior)
          .-------------.      axial slice: body ellipse, fat ring, ribs along the wall,
         /  lung   lung  \     vertebral body at the centre, canal and spinous process
        |      (O)        |    behind it (+y)
         \      ^        /
          '-----|-------'
              +y (posterior, spinous process)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from patchstore.volume import Geometry, write_volume

# Tissue classes (indices into the per-case HU table). Vertebra j: cortical VERTEBRA0 + 2j,
# cancellous VERTEBRA0 + 2j + 1; the mask is every class >= VERTEBRA0.
AIR, FAT, SOFT, LUNG, ORGAN, AORTA, VEIN, DISC, CANAL, BONE_CORT, BONE_CANC = range(11)
VERTEBRA0 = 16
MAX_VERTEBRAE = (256 - VERTEBRA0) // 2
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
HU_RANGE = (-1024, 3071)
SLAB = 32  # slices per rendering slab (fixed: the noise stream must not depend on it)


@dataclass(frozen=True)
class Phantom:
    """``image`` (Z, Y, X) int16 HU, ``mask`` (Z, Y, X) uint8 0/1, ``spacing``/``origin`` (x, y, z) mm."""

    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def geometry(self) -> Geometry:
        """Canonical (LPS, identity direction) geometry of ``image`` and ``mask``."""
        z, y, x = self.image.shape
        return Geometry((x, y, z), self.spacing, self.origin, IDENTITY)


@dataclass(frozen=True)
class _Vertebra:
    """One spinal segment: body from z0 to z1 (mm), in-plane scale, canal radius, process lengths."""

    z0: float
    z1: float
    scale: float
    canal: float
    spinous: float
    transverse: float
    sacral: bool


@dataclass(frozen=True)
class _Layout:
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
    vertebrae: tuple[_Vertebra, ...]
    lut: np.ndarray  # (256,) float32 HU per tissue class


# ---------------------------------------------------------------- drawing the layout


def _vertebrae(rng: np.random.Generator, extent: float, dz: float, slices: int, k: float,
               z_pel: float) -> tuple[_Vertebra, ...]:
    """Segments from below the volume to 2.5 periods above it; about 5 * sqrt(slices / 48) inside."""
    count = max(4.0, 5.0 * np.sqrt(slices / 48.0)) * rng.uniform(0.9, 1.1)
    period = extent / count
    out, z = [], -rng.uniform(1.0, 2.0) * period
    while z < extent + 2.5 * period and len(out) < MAX_VERTEBRAE:
        p = period * rng.uniform(0.94, 1.06)
        disc = max(p * rng.uniform(0.2, 0.27), 1.6 * dz)
        t = np.clip((z + p / 2) / extent, 0.0, 1.0)
        scale = k * (1.15 - 0.35 * t * min(1.0, count / 12.0)) * rng.uniform(0.96, 1.04)
        out.append(_Vertebra(z, z + p - disc, scale, 7.5 * scale * rng.uniform(0.93, 1.07),
                             24 * scale * rng.uniform(0.85, 1.15), 22 * scale * rng.uniform(0.85, 1.15),
                             sacral=z + p - disc < z_pel - 0.3 * period))
        z += p
    return tuple(out)


def _hu_table(rng: np.random.Generator, n_vertebrae: int) -> np.ndarray:
    """(256,) float32 HU per tissue class, drawn per case (vertebrae each get their own density)."""
    lut = np.zeros(256, np.float32)
    lut[[AIR, FAT, SOFT, LUNG, ORGAN, AORTA, VEIN, DISC, CANAL, BONE_CORT, BONE_CANC]] = [
        -1000, rng.uniform(-120, -80), rng.uniform(35, 50), rng.uniform(-870, -820),
        rng.uniform(45, 60), rng.uniform(220, 330), rng.uniform(130, 180), rng.uniform(70, 95),
        rng.uniform(15, 35), rng.uniform(700, 1100), rng.uniform(160, 280)]
    j = np.arange(n_vertebrae)
    lut[VERTEBRA0 + 2 * j] = rng.uniform(750, 1150, n_vertebrae)
    lut[VERTEBRA0 + 2 * j + 1] = rng.uniform(160, 280, n_vertebrae)
    return lut


def _layout(rng: np.random.Generator, size: int, slices: int) -> _Layout:
    """Spacing, body, spine curve, levels and segments of one case."""
    # A spine-centred field of view as in the CSI scans (0.31-0.45 mm at 512): OP-convNet's 32x32
    # patches need vertebrae tens of pixels wide. Smaller sizes zoom out gently (0.7-1.0 mm at 128).
    dxy = rng.uniform(0.31, 0.45) * (512 / size) ** 0.6
    dz = rng.uniform(2.0, 3.5) * min(1.0, np.sqrt(48 / slices))  # CSI-like ~0.6-1 mm at 550
    extent = slices * dz
    k = rng.uniform(0.85, 1.05)  # adult torso, about 270-340 mm wide
    a = 160.0 * k
    b = a * rng.uniform(0.62, 0.72)
    # body centre placed so the vertebral canal sits near the middle of the field of view
    cx, cy = rng.uniform(-5, 5), -0.06 * b - 22.0 * k + rng.uniform(-5, 5)
    curve = (cx, rng.uniform(2, 8) * k, rng.uniform(0.3, 0.8), rng.uniform(0, 2 * np.pi),
             cy + 0.06 * b, rng.uniform(4, 10) * k, rng.uniform(0.4, 0.9), rng.uniform(0, 2 * np.pi))
    z_pel = extent * rng.uniform(0.14, 0.22)
    z_rib = extent * rng.uniform(0.5, 0.62)
    levels = {"pelvis": z_pel, "ribs": z_rib, "lungs": z_rib + extent * rng.uniform(0.0, 0.05),
              "bifurcation": z_pel + extent * rng.uniform(0.0, 0.08)}
    verts = _vertebrae(rng, extent, dz, slices, k, z_pel)
    xy = ((np.arange(size) + 0.5 - size / 2) * dxy).astype(np.float32)  # centred in the field of view
    return _Layout(xy, xy, ((np.arange(slices) + 0.5) * dz).astype(np.float32),
                   dxy, dz, k, (cx, cy, a, b, rng.uniform(8, 20) * k), curve, levels, verts,
                   _hu_table(rng, len(verts)))


def _spine_xy(lay: _Layout, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) mm of the vertebral body at heights ``z`` (any shape, float32)."""
    x0, ax, fx, px, y0, ay, fy, py = lay.curve
    t = z / np.float32(lay.zs[-1] + lay.dz / 2)
    return ((x0 + ax * np.sin(2 * np.pi * fx * t + px)).astype(np.float32),
            (y0 + ay * np.sin(2 * np.pi * fy * t + py)).astype(np.float32))


# ---------------------------------------------------------------- geometry primitives


def _box(lay: _Layout, lo: tuple, hi: tuple):
    """Voxels with centres in [lo, hi] (z, y, x mm): (slices, z, y, x broadcastable) or None."""
    sl = []
    for axis, a, b in zip((lay.zs, lay.ys, lay.xs), lo, hi):
        i0, i1 = np.searchsorted(axis, a, "left"), np.searchsorted(axis, b, "right")
        if i1 <= i0:
            return None
        sl.append(slice(int(i0), int(i1)))
    return (tuple(sl), lay.zs[sl[0]][:, None, None], lay.ys[sl[1]][None, :, None],
            lay.xs[sl[2]][None, None, :])


def _ellipse(u, v, a, b) -> np.ndarray:
    """Approximate signed distance (mm, < 0 inside) to an ellipse with half-axes a, b at the origin."""
    return (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1) * np.minimum(a, b)


def _capsule(u, v, p0, p1, r) -> np.ndarray:
    """Signed distance to the 2-D segment p0-p1 thickened by radius r."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((u - p0[0]) * dx + (v - p0[1]) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
    return np.hypot(u - p0[0] - t * dx, v - p0[1] - t * dy) - r


def _segment3(x, y, z, p0: np.ndarray, p1: np.ndarray, r: float) -> np.ndarray:
    """Signed distance to the 3-D segment p0-p1 (x, y, z mm) thickened by radius r."""
    d = p1 - p0
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / (d @ d + 1e-9), 0, 1)
    return np.sqrt((x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2
                   + (z - p0[2] - t * d[2]) ** 2) - r


def _slab(z, z0, z1) -> np.ndarray:
    """Signed distance to the slab z0 <= z <= z1."""
    return np.maximum(z0 - z, z - z1)


def _paint(tissue: np.ndarray, sl: tuple, inside: np.ndarray, value: int, over=None) -> None:
    """Set ``tissue[sl]`` to ``value`` where ``inside`` (and the current class is in ``over``)."""
    region = tissue[sl]
    inside = np.broadcast_to(inside, region.shape)
    region[inside & np.isin(region, over) if over is not None else inside] = value


def _paint_bone(tissue: np.ndarray, sl: tuple, sdf: np.ndarray, cort: int, canc: int, shell: float) -> None:
    """Cortical shell ``shell`` mm thick around a cancellous core; unions of calls stay shell-free."""
    region = tissue[sl]
    sdf = np.broadcast_to(sdf, region.shape)
    region[(sdf < 0) & (region != canc)] = cort
    region[sdf < -shell] = canc


# ---------------------------------------------------------------- soft tissue, organs, vessels


def _paint_body(tissue: np.ndarray, lay: _Layout) -> None:
    """Air outside a body ellipse with a subcutaneous fat ring around soft tissue (same every slice)."""
    cx, cy, a, b, fat = lay.body
    u, v = lay.xs[None, :] - cx, lay.ys[:, None] - cy
    tissue[:, _ellipse(u, v, a, b) < 0] = FAT
    tissue[:, _ellipse(u, v, a - fat, b - fat) < 0] = SOFT


def _paint_ellipsoid(tissue, lay, centre, half, value) -> None:
    """An ellipsoid organ (centre, half-axes in x, y, z mm) painted over soft tissue only."""
    box = _box(lay, [c - h for c, h in zip(centre[::-1], half[::-1])],
               [c + h for c, h in zip(centre[::-1], half[::-1])])
    if box is not None:
        sl, z, y, x = box
        r = sum(((c - m) / h) ** 2 for c, m, h in zip((x, y, z), centre, half))
        _paint(tissue, sl, r < 1, value, over=[SOFT])


def _paint_organs(tissue: np.ndarray, lay: _Layout) -> None:
    """Liver (patient right, -x) under the diaphragm and two kidneys beside the lumbar spine."""
    cx, cy, a, b, fat = lay.body
    k, lv = lay.k, lay.levels
    _paint_ellipsoid(tissue, lay, (cx - 0.4 * a, cy - 0.15 * b, lv["lungs"] - 10 * k),
                     (0.45 * a, 0.6 * b, 90 * k), ORGAN)
    zk = 0.5 * (lv["pelvis"] + lv["ribs"])
    sx, sy = _spine_xy(lay, np.float32(zk))
    for side in (-1, 1):
        _paint_ellipsoid(tissue, lay, (sx + side * 62 * k, sy + 12 * k, zk), (26 * k, 20 * k, 50 * k), ORGAN)


def _paint_lungs(tissue: np.ndarray, lay: _Layout) -> None:
    """Two lungs above a domed base, beside the mediastinum, over soft tissue only."""
    cx, cy, a, b, fat = lay.body
    ra, rb = a - fat - 9 * lay.k, b - fat - 9 * lay.k
    box = _box(lay, (lay.levels["lungs"], cy - rb, cx - ra), (np.inf, cy + rb, cx + ra))
    if box is None:
        return
    sl, z, y, x = box
    dome = np.sqrt(np.clip((z - lay.levels["lungs"]) / (0.15 * (lay.zs[-1] + lay.dz)), 1e-4, 1))
    u = np.abs(x - cx) - 0.52 * ra
    lung = _ellipse(u, y - cy - 0.05 * rb, 0.44 * ra * dome, 0.82 * rb * dome) < 0
    heart = _ellipse(x - cx - 0.1 * ra, y - cy + 0.35 * rb, 0.34 * ra, 0.6 * rb) < 0
    _paint(tissue, sl, lung & ~heart, LUNG, over=[SOFT])


def _tube_z(tissue, lay, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, value: int) -> None:
    """A vertical tube: centre (cx, cy) and radius r given per slice, (Z,) each; r <= 0 = absent."""
    on = np.flatnonzero(r > 0)
    if on.size == 0:
        return
    i0, i1 = on[0], on[-1] + 1
    rmax = r.max()
    box = _box(lay, (lay.zs[i0], cy[on].min() - rmax, cx[on].min() - rmax),
               (lay.zs[i1 - 1], cy[on].max() + rmax, cx[on].max() + rmax))
    if box is None:
        return
    sl, z, y, x = box
    cz, cyz, rz = (a[sl[0]][:, None, None] for a in (cx, cy, r))
    _paint(tissue, sl, np.hypot(x - cz, y - cyz) < rz, value)


def _paint_vessels(tissue: np.ndarray, lay: _Layout) -> None:
    """Aorta (left of the spine, anterior in the abdomen) splitting into iliac arteries; IVC on the right."""
    k, lv = lay.k, lay.levels
    sx, sy = _spine_xy(lay, lay.zs)
    w = np.clip((lay.zs - lv["ribs"] + 20 * k) / (40 * k), 0, 1)  # 0 abdomen .. 1 thorax
    ax = sx + (10 + 12 * w) * k
    ay = sy - (28 - 20 * w) * k
    r = np.float32(lay.k * 11.5)
    drop = np.clip(lv["bifurcation"] - lay.zs, 0, None)
    trunk = np.where(drop > 0, 0, r).astype(np.float32)
    _tube_z(tissue, lay, ax, ay, trunk, AORTA)
    iliac = np.where(drop > 0, 0.6 * r, 0).astype(np.float32)
    for side in (-1, 1):
        _tube_z(tissue, lay, ax + side * (0.4 * r + 0.5 * drop), ay + 0.1 * drop, iliac, AORTA)
    vein = np.where(lay.zs < lv["ribs"] + 10 * k, 11 * k, 0).astype(np.float32)
    _tube_z(tissue, lay, sx - 24 * k, sy - 22 * k, vein, VEIN)


# ---------------------------------------------------------------- spine and other bones


def _dims(v: _Vertebra) -> tuple[float, float, float]:
    """Body half-width, half-depth and canal centre offset (posterior of the body centre), mm."""
    return 19 * v.scale, 14.5 * v.scale, 14.5 * v.scale + 1.5 * v.scale + v.canal


def _paint_discs_and_canal(tissue: np.ndarray, lay: _Layout) -> None:
    """Discs (80 HU) in the gaps between bodies; spinal canal (CSF) along the whole spine."""
    verts = lay.vertebrae
    for lower, upper in zip(verts[:-1], verts[1:]):
        av, bv, _ = _dims(lower)
        z0, z1 = lower.z1 - 0.5, upper.z0 + 0.5
        box = _box(lay, (z0, -np.inf, -np.inf), (z1, np.inf, np.inf))
        if box is not None:
            sl, z, y, x = box
            sx, sy = _spine_xy(lay, z)
            _paint(tissue, sl, _ellipse(x - sx, y - sy, 1.03 * av, 1.03 * bv) < 0, DISC)
    zc = np.array([0.5 * (v.z0 + v.z1) for v in verts])
    canal = np.interp(lay.zs, zc, [v.canal for v in verts]).astype(np.float32)
    offset = np.interp(lay.zs, zc, [_dims(v)[2] for v in verts]).astype(np.float32)
    sx, sy = _spine_xy(lay, lay.zs)
    _tube_z(tissue, lay, sx, sy + offset, canal, CANAL)


def _vertebra_sdf(x, y, z, sx, sy, v: _Vertebra, thin: float) -> np.ndarray:
    """Signed distance (mm) to one vertebra: body, pedicles, arch, spinous and transverse processes.

    A sacral segment is a wide body with alae reaching the iliac wings and an arch, no processes.
    Processes are at least ``thin`` mm in radius so that coarse grids don't break them apart.
    """
    s, h, zc = v.scale, v.z1 - v.z0, 0.5 * (v.z0 + v.z1)
    av, bv, yc = _dims(v)
    u, w = x - sx, y - sy
    au, rc = np.abs(u), v.canal  # |u|: both sides at once (the vertebra is left-right symmetric)
    half = max(2.5 * s, thin)
    arch = np.maximum(np.abs(np.hypot(u, w - yc) - (rc + 1 * s + half)) - half, (yc - 0.2 * rc) - w)
    if v.sacral:
        core = np.minimum(np.minimum(_ellipse(u, w, 1.5 * av, bv), arch),
                          _capsule(au, w, (av, 0), (2.4 * av, 0.9 * bv), 7 * s))
        return np.maximum(core, _slab(z, v.z0, v.z1))
    pedicle = _capsule(au, w, (0.55 * av, 0.6 * bv), (rc + 2.5 * s, yc - 0.2 * rc), max(3.5 * s, thin))
    core = np.maximum(np.minimum(np.minimum(_ellipse(u, w, av, bv), pedicle), arch), _slab(z, v.z0, v.z1))
    tip = (rc + 3 * s + v.transverse * 0.9, yc - 0.1 * rc + v.transverse * 0.42)
    tp = np.maximum(_capsule(au, w, (rc + 3 * s, yc - 0.1 * rc), tip, max(3.5 * s, thin)),
                    _slab(z, zc - 0.2 * h, zc + 0.4 * h))
    sp = np.maximum(_capsule(u, w, (0, yc + rc + 3 * s), (0, yc + rc + v.spinous), max(3 * s, thin)),
                    _slab(z, zc - 0.45 * h, zc + 0.25 * h))
    return np.minimum(np.minimum(core, tp), sp)


def _paint_vertebrae(tissue: np.ndarray, lay: _Layout, shell: float) -> None:
    """Every segment in its own bounding box: label classes for vertebrae, plain bone for the sacrum."""
    for j, v in enumerate(lay.vertebrae):
        av, bv, yc = _dims(v)
        sx, sy = _spine_xy(lay, np.linspace(v.z0, v.z1, 16, dtype=np.float32))
        reach = 2.4 * av + 8 * v.scale
        box = _box(lay, (v.z0, sy.min() - bv - 2, sx.min() - reach),
                   (v.z1, sy.max() + yc + v.canal + v.spinous + 4 * v.scale, sx.max() + reach))
        if box is None:
            continue
        sl, z, y, x = box
        sdf = _vertebra_sdf(x, y, z, *_spine_xy(lay, z), v, 0.6 * lay.dxy)
        cort, canc = (BONE_CORT, BONE_CANC) if v.sacral else (VERTEBRA0 + 2 * j, VERTEBRA0 + 2 * j + 1)
        _paint_bone(tissue, sl, sdf, cort, canc, shell)


def _rib_path(lay: _Layout, v: _Vertebra, side: int) -> np.ndarray:
    """(N, 3) polyline (x, y, z mm): head at the body side, tubercle at the transverse process,
    then along the chest wall to the front, sloping down by 1.2-2 segment heights."""
    cx, cy, a, b, fat = lay.body
    k, h, zc = lay.k, v.z1 - v.z0, 0.5 * (v.z0 + v.z1)
    av, bv, yc = _dims(v)
    zh = zc + 0.25 * h
    sx, sy = (float(c) for c in _spine_xy(lay, np.float32(zh)))
    rc, s = v.canal, v.scale
    tx, ty = rc + 3 * s + v.transverse * 0.9, yc - 0.1 * rc + v.transverse * 0.42
    head = (sx + side * 0.8 * av, sy + 0.35 * bv, zh)
    tubercle = (sx + side * 0.95 * tx, sy + ty - 6.5 * s, zc + 0.1 * h)
    ra, rb = a - fat - 9 * k, b - fat - 9 * k
    t0 = np.arcsin(np.clip((abs(sx + side * tx - cx) + 12 * k) / ra, 0, 0.95))
    t1 = np.pi - np.arcsin(np.clip(40 * k / ra, 0, 0.95))
    theta = np.linspace(t0, t1, 24)
    f = ((theta - t0) / (t1 - t0)) ** 1.2
    drop = 1.6 * (v.z1 - v.z0) * 1.25
    wall = np.stack([cx + side * ra * np.sin(theta), cy + rb * np.cos(theta),
                     tubercle[2] - 3 * k - drop * f], 1)
    return np.vstack([head, tubercle, wall]).astype(np.float32)


def _paint_tube(tissue: np.ndarray, lay: _Layout, path: np.ndarray, r: float, shell: float) -> None:
    """A bony tube of radius r along a 3-D polyline, one bounding box per segment."""
    for p0, p1 in zip(path[:-1], path[1:]):
        lo, hi = np.minimum(p0, p1) - r, np.maximum(p0, p1) + r
        box = _box(lay, lo[::-1], hi[::-1])
        if box is not None:
            sl, z, y, x = box
            _paint_bone(tissue, sl, _segment3(x, y, z, p0, p1, r), BONE_CORT, BONE_CANC, shell)


def _paint_ribs_and_sternum(tissue: np.ndarray, lay: _Layout, shell: float) -> None:
    """A rib pair for every segment above the rib level; a sternum in front of the upper chest."""
    for v in lay.vertebrae:
        if 0.5 * (v.z0 + v.z1) >= lay.levels["ribs"] and not v.sacral:
            for side in (-1, 1):
                _paint_tube(tissue, lay, _rib_path(lay, v, side), 5 * lay.k, shell)
    cx, cy, a, b, fat = lay.body
    k = lay.k
    ys = cy - (b - fat - 9 * k) - 2 * k
    top = lay.zs[-1] + lay.dz
    box = _box(lay, (lay.levels["ribs"] + 0.1 * top, ys - 6 * k, cx - 22 * k),
               (np.inf, ys + 6 * k, cx + 22 * k))
    if box is not None:
        sl, z, y, x = box
        sternum = _capsule(x, y, (cx - 14 * k, ys), (cx + 14 * k, ys), 5 * k)
        _paint_bone(tissue, sl, sternum, BONE_CORT, BONE_CANC, shell)


def _paint_pelvis(tissue: np.ndarray, lay: _Layout, shell: float) -> None:
    """Iliac wings below the pelvis level: curved plates from the sacrum round to the front,
    thickening downwards (sacral segments are painted with the vertebrae, also unlabelled)."""
    cx, cy, a, b, fat = lay.body
    k, z_pel = lay.k, lay.levels["pelvis"]
    ra, rb = a - fat - 9 * k, b - fat - 9 * k
    sx, sy = (float(c) for c in _spine_xy(lay, np.float32(z_pel)))
    s = 1.15 * k
    t = np.linspace(0, 1, 10)[:, None]
    for side in (-1, 1):
        m = np.array([sx + side * 2.4 * 19 * s, sy + 0.9 * 14.5 * s])
        c = np.array([cx + side * 0.8 * ra, cy + 0.4 * rb])
        e = np.array([cx + side * 0.62 * ra, cy - 0.3 * rb])
        pts = (1 - t) ** 2 * m + 2 * t * (1 - t) * c + t ** 2 * e
        lo, hi = pts.min(0) - 12 * k, pts.max(0) + 12 * k
        box = _box(lay, (-np.inf, lo[1], lo[0]), (z_pel, hi[1], hi[0]))
        if box is None:
            continue
        sl, z, y, x = box
        d2 = np.min([_capsule(x[0], y[0], p0, p1, 0) for p0, p1 in zip(pts[:-1], pts[1:])], axis=0)
        r = np.minimum(3.5 * k + 0.12 * (z_pel - z), 11 * k)
        _paint_bone(tissue, sl, np.maximum(d2[None] - r, z - z_pel), BONE_CORT, BONE_CANC, shell)


# ---------------------------------------------------------------- HU rendering and public API


def _render(tissue: np.ndarray, lut: np.ndarray, sigma: tuple, noise: float,
            rng: np.random.Generator) -> np.ndarray:
    """(Z, Y, X) uint8 tissue -> (Z, Y, X) int16 HU: lookup, Gaussian blur (voxels), noise, clip.

    Slab by slab with a halo of the blur radius, so it equals a whole-volume blur.
    """
    out = np.empty(tissue.shape, np.int16)
    n, halo = tissue.shape[0], int(4.0 * sigma[0] + 0.5) + 1
    for z0 in range(0, n, SLAB):
        z1 = min(n, z0 + SLAB)
        a, b = max(0, z0 - halo), min(n, z1 + halo)
        hu = ndimage.gaussian_filter(lut[tissue[a:b]], sigma, mode="nearest", truncate=4.0)[z0 - a: z1 - a]
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise)
        out[z0:z1] = np.clip(np.rint(hu), *HU_RANGE)
    return out


def make_phantom(rng: np.random.Generator, size: int = 128, slices: int = 48) -> Phantom:
    """One synthetic spine CT: (slices, size, size) int16 HU image and uint8 vertebra mask.

    About 5 vertebrae at 48 slices (5 * sqrt(slices / 48), at least 4; 17 at 550); in-plane spacing
    0.6-0.9 mm x 512 / size, slice spacing 2-3.5 mm (x sqrt(48 / slices) above 48 slices).
    """
    if size < 32 or slices < 8:
        raise ValueError(f"Phantom size {size} x {size} x {slices} is too small; expected size >= 32 "
                         f"and slices >= 8")
    lay = _layout(rng, size, slices)
    shell = max(1.5, 0.7 * lay.dxy)  # a cortex thinner than a voxel would vanish at coarse sizes
    tissue = np.zeros((slices, size, size), np.uint8)
    _paint_body(tissue, lay)
    _paint_organs(tissue, lay)
    _paint_lungs(tissue, lay)
    _paint_vessels(tissue, lay)
    _paint_discs_and_canal(tissue, lay)
    _paint_ribs_and_sternum(tissue, lay, shell)
    _paint_pelvis(tissue, lay, shell)
    _paint_vertebrae(tissue, lay, shell)
    mask = (tissue >= VERTEBRA0).view(np.uint8)
    image = _render(tissue, lay.lut, (0.4, 0.5, 0.5), rng.uniform(10, 20), rng)
    origin = (float(lay.xs[0] + rng.uniform(-20, 20)), float(lay.ys[0] + rng.uniform(-20, 20)),
              float(rng.uniform(-700, -300)))
    return Phantom(image, mask, (lay.dxy, lay.dxy, lay.dz), origin)


def _write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a temp file in the same folder, then os.replace."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the dataset is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_dataset(out_dir: str | os.PathLike, cases: int, seed: int, size: int = 128,
                  slices: int = 48) -> list[Path]:
    """Write ``cases`` phantoms in the Decathlon / nnU-Net layout; returns the image paths.

    ``imagesTr/phantom_{i:03d}_0000.nii.gz`` (int16 HU), ``labelsTr/phantom_{i:03d}.nii.gz`` (uint8)
    and ``dataset.json``. Case i uses ``default_rng([seed, i])``: the same whatever ``cases`` is.
    """
    if cases < 1:
        raise ValueError(f"Number of cases {cases} must be at least 1")
    out = Path(out_dir)
    images, training = [], []
    for i in range(cases):
        ph = make_phantom(np.random.default_rng([seed, i]), size, slices)
        image = write_volume(out / "imagesTr" / f"phantom_{i:03d}_0000.nii.gz", ph.image, ph.geometry)
        label = write_volume(out / "labelsTr" / f"phantom_{i:03d}.nii.gz", ph.mask, ph.geometry)
        images.append(image)
        training.append({"image": image.relative_to(out).as_posix(),
                         "label": label.relative_to(out).as_posix()})
    _write_json(out / "dataset.json", {
        "name": "phantom", "description": f"Synthetic spine CT phantoms (patchstore.phantom, seed {seed})",
        "tensorImageSize": "3D", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "vertebra"},
        "numTraining": cases, "numTest": 0, "file_ending": ".nii.gz", "training": training, "test": []})
    return images
