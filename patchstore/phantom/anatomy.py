"""Painting one phantom's anatomy: a (Z, Y, X) uint8 tissue-class map from a ``Layout``.

Soft tissue, organs and vessels first, then discs and canal, ribs, sternum and pelvis, and the
vertebrae last (labelled classes >= ``VERTEBRA0``), each over what was painted before. A clinical
layout (``lay.organs`` set) has ``patchstore.phantom.organs`` paint its abdomen, bowel, portal
system, plaques and costal cartilage in between; the spine phantom paints one ORGAN class.
"""

from __future__ import annotations

import numpy as np

from patchstore.phantom import organs
from patchstore.phantom.tissue import (
    AORTA,
    BONE_CANC,
    BONE_CORT,
    CANAL,
    DISC,
    FAT,
    LUNG,
    ORGAN,
    SOFT,
    VEIN,
    VERTEBRA0,
    Layout,
    Vertebra,
    aorta_xy,
    capsule,
    ellipse,
    paint,
    paint_bone,
    paint_ellipsoid,
    slab,
    spine_xy,
    tube_segments,
    voxel_box,
)


def tissue_map(lay: Layout) -> np.ndarray:
    """(Z, Y, X) uint8 tissue classes of one case, Z, Y, X = len(lay.zs), len(lay.ys), len(lay.xs)."""
    shell = max(1.5, 0.7 * lay.dxy)  # a cortex thinner than a voxel would vanish at coarse sizes
    tissue = np.zeros((len(lay.zs), len(lay.ys), len(lay.xs)), np.uint8)
    _paint_body(tissue, lay)
    if lay.organs is None:
        _paint_organs(tissue, lay)
    else:
        organs.paint_solid_organs(tissue, lay)
    _paint_lungs(tissue, lay)
    _paint_vessels(tissue, lay)
    if lay.organs is not None:
        organs.paint_portal_plaques_and_bowel(tissue, lay)
    _paint_discs_and_canal(tissue, lay)
    _paint_ribs_and_sternum(tissue, lay, shell)
    _paint_pelvis(tissue, lay, shell)
    _paint_vertebrae(tissue, lay, shell)
    return tissue


# ---------------------------------------------------------------- soft tissue, organs, vessels


def _paint_body(tissue: np.ndarray, lay: Layout) -> None:
    """Air outside a body ellipse with a subcutaneous fat ring around soft tissue (same every slice)."""
    cx, cy, a, b, fat = lay.body
    u, v = lay.xs[None, :] - cx, lay.ys[:, None] - cy
    tissue[:, ellipse(u, v, a, b) < 0] = FAT
    tissue[:, ellipse(u, v, a - fat, b - fat) < 0] = SOFT


def _paint_organs(tissue: np.ndarray, lay: Layout) -> None:
    """Liver (patient right, -x) under the diaphragm and two kidneys beside the lumbar spine."""
    cx, cy, a, b, fat = lay.body
    k, lv = lay.k, lay.levels
    paint_ellipsoid(tissue, lay, (cx - 0.4 * a, cy - 0.15 * b, lv["lungs"] - 10 * k),
                    (0.45 * a, 0.6 * b, 90 * k), ORGAN, over=[SOFT])
    zk = 0.5 * (lv["pelvis"] + lv["ribs"])
    sx, sy = spine_xy(lay, np.float32(zk))
    for side in (-1, 1):
        paint_ellipsoid(tissue, lay, (sx + side * 62 * k, sy + 12 * k, zk), (26 * k, 20 * k, 50 * k), ORGAN,
                        over=[SOFT])


def _paint_lungs(tissue: np.ndarray, lay: Layout) -> None:
    """Two lungs above a domed base, beside the mediastinum, over soft tissue only."""
    cx, cy, a, b, fat = lay.body
    ra, rb = a - fat - 9 * lay.k, b - fat - 9 * lay.k
    box = voxel_box(lay, (lay.levels["lungs"], cy - rb, cx - ra), (np.inf, cy + rb, cx + ra))
    if box is None:
        return
    sl, z, y, x = box
    dome = np.sqrt(np.clip((z - lay.levels["lungs"]) / (0.15 * (lay.zs[-1] + lay.dz)), 1e-4, 1))
    u = np.abs(x - cx) - 0.52 * ra
    lung = ellipse(u, y - cy - 0.05 * rb, 0.44 * ra * dome, 0.82 * rb * dome) < 0
    heart = ellipse(x - cx - 0.1 * ra, y - cy + 0.35 * rb, 0.34 * ra, 0.6 * rb) < 0
    paint(tissue, sl, lung & ~heart, LUNG, over=[SOFT])


def _tube_z(tissue, lay, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, value: int) -> None:
    """A vertical tube: centre (cx, cy) and radius r given per slice, (Z,) each; r <= 0 = absent."""
    on = np.flatnonzero(r > 0)
    if on.size == 0:
        return
    i0, i1 = on[0], on[-1] + 1
    rmax = r.max()
    box = voxel_box(lay, (lay.zs[i0], cy[on].min() - rmax, cx[on].min() - rmax),
                    (lay.zs[i1 - 1], cy[on].max() + rmax, cx[on].max() + rmax))
    if box is None:
        return
    sl, z, y, x = box
    cz, cyz, rz = (a[sl[0]][:, None, None] for a in (cx, cy, r))
    paint(tissue, sl, np.hypot(x - cz, y - cyz) < rz, value)


def _paint_vessels(tissue: np.ndarray, lay: Layout) -> None:
    """Aorta (left of the spine, anterior in the abdomen) splitting into iliac arteries; IVC on the right."""
    k, lv = lay.k, lay.levels
    sx, sy = spine_xy(lay, lay.zs)
    ax, ay = aorta_xy(lay, lay.zs)
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


def _dims(v: Vertebra) -> tuple[float, float, float]:
    """Body half-width, half-depth and canal centre offset (posterior of the body centre), mm."""
    return 19 * v.scale, 14.5 * v.scale, 14.5 * v.scale + 1.5 * v.scale + v.canal


def _paint_discs_and_canal(tissue: np.ndarray, lay: Layout) -> None:
    """Discs (80 HU) in the gaps between bodies; spinal canal (CSF) along the whole spine."""
    verts = lay.vertebrae
    for lower, upper in zip(verts[:-1], verts[1:]):
        av, bv, _ = _dims(lower)
        z0, z1 = lower.z1 - 0.5, upper.z0 + 0.5
        box = voxel_box(lay, (z0, -np.inf, -np.inf), (z1, np.inf, np.inf))
        if box is not None:
            sl, z, y, x = box
            sx, sy = spine_xy(lay, z)
            paint(tissue, sl, ellipse(x - sx, y - sy, 1.03 * av, 1.03 * bv) < 0, DISC)
    zc = np.array([0.5 * (v.z0 + v.z1) for v in verts])
    canal = np.interp(lay.zs, zc, [v.canal for v in verts]).astype(np.float32)
    offset = np.interp(lay.zs, zc, [_dims(v)[2] for v in verts]).astype(np.float32)
    sx, sy = spine_xy(lay, lay.zs)
    _tube_z(tissue, lay, sx, sy + offset, canal, CANAL)


def _vertebra_sdf(x, y, z, sx, sy, v: Vertebra, thin: float) -> np.ndarray:
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
        core = np.minimum(np.minimum(ellipse(u, w, 1.5 * av, bv), arch),
                          capsule(au, w, (av, 0), (2.4 * av, 0.9 * bv), 7 * s))
        return np.maximum(core, slab(z, v.z0, v.z1))
    pedicle = capsule(au, w, (0.55 * av, 0.6 * bv), (rc + 2.5 * s, yc - 0.2 * rc), max(3.5 * s, thin))
    core = np.maximum(np.minimum(np.minimum(ellipse(u, w, av, bv), pedicle), arch), slab(z, v.z0, v.z1))
    tip = (rc + 3 * s + v.transverse * 0.9, yc - 0.1 * rc + v.transverse * 0.42)
    tp = np.maximum(capsule(au, w, (rc + 3 * s, yc - 0.1 * rc), tip, max(3.5 * s, thin)),
                    slab(z, zc - 0.2 * h, zc + 0.4 * h))
    sp = np.maximum(capsule(u, w, (0, yc + rc + 3 * s), (0, yc + rc + v.spinous), max(3 * s, thin)),
                    slab(z, zc - 0.45 * h, zc + 0.25 * h))
    return np.minimum(np.minimum(core, tp), sp)


def _paint_vertebrae(tissue: np.ndarray, lay: Layout, shell: float) -> None:
    """Every segment in its own bounding box: label classes for vertebrae, plain bone for the sacrum."""
    for j, v in enumerate(lay.vertebrae):
        av, bv, yc = _dims(v)
        sx, sy = spine_xy(lay, np.linspace(v.z0, v.z1, 16, dtype=np.float32))
        reach = 2.4 * av + 8 * v.scale
        box = voxel_box(lay, (v.z0, sy.min() - bv - 2, sx.min() - reach),
                        (v.z1, sy.max() + yc + v.canal + v.spinous + 4 * v.scale, sx.max() + reach))
        if box is None:
            continue
        sl, z, y, x = box
        sdf = _vertebra_sdf(x, y, z, *spine_xy(lay, z), v, 0.6 * lay.dxy)
        cort, canc = (BONE_CORT, BONE_CANC) if v.sacral else (VERTEBRA0 + 2 * j, VERTEBRA0 + 2 * j + 1)
        paint_bone(tissue, sl, sdf, cort, canc, shell)


def rib_path(lay: Layout, v: Vertebra, side: int) -> np.ndarray:
    """(N, 3) polyline (x, y, z mm): head at the body side, tubercle at the transverse process,
    then along the chest wall to the front, sloping down by 1.2-2 segment heights."""
    cx, cy, a, b, fat = lay.body
    k, h, zc = lay.k, v.z1 - v.z0, 0.5 * (v.z0 + v.z1)
    av, bv, yc = _dims(v)
    zh = zc + 0.25 * h
    sx, sy = (float(c) for c in spine_xy(lay, np.float32(zh)))
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


def _paint_tube(tissue: np.ndarray, lay: Layout, path: np.ndarray, r: float, shell: float) -> None:
    """A bony tube of radius r along a 3-D polyline, one bounding box per segment."""
    for sl, _, sdf in tube_segments(lay, path, r):
        paint_bone(tissue, sl, sdf, BONE_CORT, BONE_CANC, shell)


def _paint_ribs_and_sternum(tissue: np.ndarray, lay: Layout, shell: float) -> None:
    """A rib pair for every segment above the rib level; a sternum in front of the upper chest;
    costal cartilage from the rib ends to the sternum in a clinical layout."""
    ends = []
    for j, v in enumerate(lay.vertebrae):
        if 0.5 * (v.z0 + v.z1) >= lay.levels["ribs"] and not v.sacral:
            for side in (-1, 1):
                path = rib_path(lay, v, side)
                _paint_tube(tissue, lay, path, 5 * lay.k, shell)
                ends.append((j, side, path[-1]))
    if lay.organs is not None:
        organs.paint_costal_cartilage(tissue, lay, ends)
    cx, cy, a, b, fat = lay.body
    k = lay.k
    ys = cy - (b - fat - 9 * k) - 2 * k
    top = lay.zs[-1] + lay.dz
    box = voxel_box(lay, (lay.levels["ribs"] + 0.1 * top, ys - 6 * k, cx - 22 * k),
                    (np.inf, ys + 6 * k, cx + 22 * k))
    if box is not None:
        sl, z, y, x = box
        sternum = capsule(x, y, (cx - 14 * k, ys), (cx + 14 * k, ys), 5 * k)
        paint_bone(tissue, sl, sternum, BONE_CORT, BONE_CANC, shell)


def _paint_pelvis(tissue: np.ndarray, lay: Layout, shell: float) -> None:
    """Iliac wings below the pelvis level: curved plates from the sacrum round to the front,
    thickening downwards (sacral segments are painted with the vertebrae, also unlabelled)."""
    cx, cy, a, b, fat = lay.body
    k, z_pel = lay.k, lay.levels["pelvis"]
    ra, rb = a - fat - 9 * k, b - fat - 9 * k
    sx, sy = (float(c) for c in spine_xy(lay, np.float32(z_pel)))
    s = 1.15 * k
    t = np.linspace(0, 1, 10)[:, None]
    for side in (-1, 1):
        m = np.array([sx + side * 2.4 * 19 * s, sy + 0.9 * 14.5 * s])
        c = np.array([cx + side * 0.8 * ra, cy + 0.4 * rb])
        e = np.array([cx + side * 0.62 * ra, cy - 0.3 * rb])
        pts = (1 - t) ** 2 * m + 2 * t * (1 - t) * c + t ** 2 * e
        lo, hi = pts.min(0) - 12 * k, pts.max(0) + 12 * k
        box = voxel_box(lay, (-np.inf, lo[1], lo[0]), (z_pel, hi[1], hi[0]))
        if box is None:
            continue
        sl, z, y, x = box
        d2 = np.min([capsule(x[0], y[0], p0, p1, 0) for p0, p1 in zip(pts[:-1], pts[1:])], axis=0)
        r = np.minimum(3.5 * k + 0.12 * (z_pel - z), 11 * k)
        paint_bone(tissue, sl, np.maximum(d2[None] - r, z - z_pel), BONE_CORT, BONE_CANC, shell)

