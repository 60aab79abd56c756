r"""The clinical anatomy of a phantom: solid abdominal organs, portal system, aortic plaques, bowel
loops and costal cartilage, all label 0.

``draw_organs`` draws the geometry from the generator it is given (the case's second stream, never
the spine phantom's); ``patchstore.phantom.anatomy.tissue_map`` paints it in three calls: solid
organs before the lungs (over soft tissue only), portal system, plaques and bowel after the aorta
and IVC (bowel over soft tissue only), cartilage with the ribs; bones come after all of them.

    axial slice near the kidneys (x: patient right -> left, y: anterior -> posterior)

                 .-----------------------------------.
               /   (gas)  ( )  (=)  bowel loops (fluid \
              |    liver      pancreas ====     spleen  |   or oral contrast below the gas)
              |  (portal) IVC o  (O) aorta, plaques '   |
              |     kidney     [vertebra]     kidney    |   kidney: cortex, medullary pyramids,
               \                  |                    /    sinus fat towards the spine
                 '-----------------------------------'
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from patchstore.phantom.tissue import (
    AORTA,
    BOWEL_WALL,
    CARTILAGE,
    CARTILAGE_CALC,
    FAT,
    FLUID,
    GAS,
    KIDNEY_CORTEX,
    KIDNEY_MEDULLA,
    LIVER,
    LUNG,
    ORAL_CONTRAST,
    PANCREAS,
    PLAQUE,
    PORTAL_VEIN,
    SOFT,
    SPLEEN,
    Layout,
    aorta_xy,
    paint,
    paint_ellipsoid,
    spine_xy,
    tube_segments,
    voxel_box,
)

ORAL_LOOPS = 0.6  # share of bowel loops holding positive oral contrast in a case that has it


@dataclass(frozen=True)
class Loop:
    """A bowel loop: centre line (N, 3) x, y, z mm, outer radius and wall (mm), content class, and
    the gas fraction of its lumen (0 none .. 1 all), gas filling the anterior (-y) part."""

    path: np.ndarray
    radius: float
    wall: float
    content: int
    gas: float


@dataclass(frozen=True)
class Organs:
    """The drawn clinical anatomy; ellipsoids are ((x, y, z) centre, (x, y, z) half-axes) in mm."""

    kidneys: tuple  # right, left
    pyramids: int  # medullary pyramids per kidney section
    spleen: tuple
    liver: tuple
    gallbladder: tuple
    pancreas: np.ndarray  # (4, 3) head, neck, body, tail
    pancreas_r: tuple[float, float, float]  # radius per segment
    portal: tuple[np.ndarray, ...]  # (2, 3) segments: trunk, splenic vein, then intrahepatic branches
    portal_r: tuple[float, ...]
    plaques: np.ndarray  # (M, 4) x, y, z, radius
    loops: tuple[Loop, ...]
    cartilage: np.ndarray  # (n_vertebrae, 2) int: 0 plain, 1 calcified rim, 2 calcified core


# ---------------------------------------------------------------- drawing


def _solid(extra: np.random.Generator, lay: Layout) -> dict:
    """Kidneys (right lower), spleen, liver and gallbladder: jittered ellipsoids."""
    cx, cy, a, b, fat = lay.body
    k, lv = lay.k, lay.levels
    zk = 0.5 * (lv["pelvis"] + lv["ribs"])
    sx, sy = (float(c) for c in spine_xy(lay, np.float32(zk)))

    def ellipsoid(centre: tuple, half: tuple, jitter: float = 0.1) -> tuple:
        return centre, tuple(np.array(half) * (1 + extra.uniform(-jitter, jitter, 3)))

    return {
        "kidneys": tuple(ellipsoid((sx + side * 62 * k, sy + 12 * k, zk + side * 8 * k), (26 * k, 20 * k, 50 * k))
                         for side in (-1, 1)),
        "pyramids": int(extra.integers(5, 9)),
        "spleen": ellipsoid((cx + 0.5 * a, cy + 0.25 * b, lv["lungs"] - 15 * k), (0.15 * a, 0.25 * b, 55 * k)),
        "liver": ellipsoid((cx - 0.4 * a, cy - 0.15 * b, lv["lungs"] - 10 * k), (0.45 * a, 0.6 * b, 90 * k)),
        "gallbladder": ellipsoid((cx - 0.3 * a, cy - 0.45 * b, lv["lungs"] - 75 * k), (12 * k, 15 * k, 30 * k), 0.3),
    }


def _pancreas_and_portal(extra: np.random.Generator, lay: Layout, spleen: tuple) -> dict:
    """Pancreas from head (patient right) to tail at the splenic hilum, in front of the aorta; portal
    trunk from behind its neck to the liver hilum, splenic vein behind it, three liver branches."""
    cx, cy, a, b, fat = lay.body
    k = lay.k
    zp = 0.5 * (lay.levels["pelvis"] + lay.levels["ribs"]) + 15 * k
    sx, sy = (float(c) for c in spine_xy(lay, np.float32(zp)))
    (spx, spy, _), _ = spleen
    d = extra.uniform(-5, 5, (4, 3)) * k
    pancreas = np.array([[sx - 35 * k, sy - 48 * k, zp - 12 * k], [sx - 5 * k, sy - 58 * k, zp],
                         [sx + 35 * k, sy - 50 * k, zp + 8 * k],
                         [spx - 0.12 * a, spy - 0.12 * b, zp + 15 * k]]) + d
    confluence = pancreas[1] + [0, 10 * k, 0]
    hilum = np.array([cx - 0.22 * a, cy - 0.12 * b, zp + 30 * k]) + extra.uniform(-5, 5, 3) * k
    branches = [hilum + np.array(v) * [a, b, k] for v in ((-0.4, 0.07, 35), (-0.23, 0.32, 20), (0.17, -0.28, 30))]
    veins = [np.array([confluence, hilum]), np.array([confluence, pancreas[3] + [0.06 * a, 8 * k, 0]])]
    veins += [np.array([hilum, end]) for end in branches]
    r = 6.5 * k * extra.uniform(0.85, 1.15)
    return {"pancreas": pancreas.astype(np.float32),
            "pancreas_r": tuple(np.array([13, 11, 9]) * k * extra.uniform(0.85, 1.15)),
            "portal": tuple(v.astype(np.float32) for v in veins), "portal_r": (r, 0.7 * r) + (0.6 * r,) * 3}


def _plaques(extra: np.random.Generator, lay: Layout) -> np.ndarray:
    """(M, 4) calcified plaques on the aortic wall above the bifurcation: centre x, y, z and radius."""
    n = int(extra.integers(0, 10))
    z = extra.uniform(lay.levels["bifurcation"], lay.zs[-1], n).astype(np.float32)
    angle, rp = extra.uniform(0, 2 * np.pi, n), extra.uniform(1.2, 3.0, n)
    ax, ay = aorta_xy(lay, z)
    reach = 11.5 * lay.k - 0.5 * rp  # from the axis: centred on the inner wall, half in the lumen
    return np.stack([ax + reach * np.cos(angle), ay + reach * np.sin(angle), z, rp], 1).reshape(n, 4)


def _loops(extra: np.random.Generator, lay: Layout, oral: bool) -> tuple[Loop, ...]:
    """5-10 small-bowel loops wandering in front of the retroperitoneum, ascending and descending
    colon along the flanks, between the pelvis and the pancreas."""
    cx, cy, a, b, fat = lay.body
    k, lv = lay.k, lay.levels
    sx, sy = (float(c) for c in spine_xy(lay, np.float32(lv["pelvis"])))
    lo = np.array([cx - 0.55 * a, cy - 0.75 * (b - fat), max(float(lay.zs[0]), lv["pelvis"] - 80 * k)])
    hi = np.array([cx + 0.55 * a, sy - 45 * k, 0.5 * (lv["pelvis"] + lv["ribs"]) + 5 * k])
    hi = np.maximum(hi, lo + 10)

    def content(p_oral: float) -> tuple[int, float]:
        """Content class and gas fraction: no gas, some gas or all gas; a fixed number of draws."""
        gas = [0.0, extra.uniform(0.15, 0.5), 1.0][extra.choice(3, p=(0.45, 0.4, 0.15))]
        opaque = extra.random() < p_oral
        return (ORAL_CONTRAST if oral and opaque else FLUID), gas

    loops = []
    for _ in range(int(extra.integers(5, 11))):
        p = [extra.uniform(lo, hi)]
        for _ in range(5):
            step = extra.normal(size=3) * [1, 1, 0.5]
            p.append(np.clip(p[-1] + step / np.linalg.norm(step) * extra.uniform(25, 45) * k, lo, hi))
        loops.append(Loop(np.array(p, np.float32), extra.uniform(9, 14) * k, extra.uniform(1.5, 3),
                          *content(ORAL_LOOPS)))
    for side in (-1, 1):
        x, y = cx + side * 0.62 * a, cy - 0.05 * b
        path = [[x + extra.uniform(-8, 8) * k, y + extra.uniform(-8, 8) * k, z]
                for z in np.linspace(lo[2], hi[2] + 30 * k, 3)]
        loops.append(Loop(np.array(path, np.float32), extra.uniform(16, 24) * k, extra.uniform(2, 3),
                          *content(0.5 * ORAL_LOOPS)))
    return tuple(loops)


def draw_organs(extra: np.random.Generator, lay: Layout, oral: bool) -> Organs:
    """The clinical anatomy of one case; ``oral``: some bowel loops hold positive oral contrast.
    The draws do not depend on ``lay``'s field of view, only on its body, spine and levels."""
    solid = _solid(extra, lay)
    more = _pancreas_and_portal(extra, lay, solid["spleen"])
    plaques, loops = _plaques(extra, lay), _loops(extra, lay, oral)
    p_calc = extra.uniform(0, 0.7)  # share of calcified costal cartilages (grows with age)
    n = len(lay.vertebrae)
    cartilage = np.where(extra.random((n, 2)) < p_calc, extra.integers(1, 3, (n, 2)), 0)
    return Organs(**solid, **more, plaques=plaques, loops=loops, cartilage=cartilage)


# ---------------------------------------------------------------- painting


def _paint_kidney(tissue: np.ndarray, lay: Layout, centre, half, side: int, pyramids: int) -> None:
    """Cortex over soft tissue, medullary pyramids inside it, sinus fat on the side of the spine."""
    box = voxel_box(lay, [c - h for c, h in zip(centre[::-1], half[::-1])],
                    [c + h for c, h in zip(centre[::-1], half[::-1])])
    if box is None:
        return
    sl, z, y, x = box
    u, v, w = ((q - c) / h for q, c, h in zip((x, y, z), centre, half))
    r2 = u * u + v * v + w * w
    paint(tissue, sl, r2 < 1, KIDNEY_CORTEX, over=[SOFT])
    columns = np.minimum(np.cos(pyramids * np.arctan2(v, u)), np.cos(pyramids * np.arctan2(w, np.hypot(u, v))))
    pyramid = (r2 < 0.7) & (r2 > 0.06) & (columns > -0.5)  # cortex columns between the pyramids
    paint(tissue, sl, pyramid, KIDNEY_MEDULLA, over=[KIDNEY_CORTEX])
    sinus = ((u + side * 0.55) / 0.45) ** 2 + (v / 0.35) ** 2 + (w / 0.5) ** 2 < 1
    paint(tissue, sl, sinus, FAT, over=[KIDNEY_CORTEX, KIDNEY_MEDULLA])


def paint_solid_organs(tissue: np.ndarray, lay: Layout) -> None:
    """Kidneys, spleen, liver (each over soft tissue only), gallbladder in the liver, pancreas."""
    org = lay.organs
    for side, (centre, half) in zip((-1, 1), org.kidneys):
        _paint_kidney(tissue, lay, centre, half, side, org.pyramids)
    paint_ellipsoid(tissue, lay, *org.spleen, SPLEEN, over=[SOFT])
    paint_ellipsoid(tissue, lay, *org.liver, LIVER, over=[SOFT])
    paint_ellipsoid(tissue, lay, *org.gallbladder, FLUID, over=[SOFT, LIVER])
    for i, r in enumerate(org.pancreas_r):
        for sl, _, sdf in tube_segments(lay, org.pancreas[i:i + 2], r):
            paint(tissue, sl, sdf < 0, PANCREAS, over=[SOFT])


def _paint_bowel(tissue: np.ndarray, lay: Layout, loop: Loop) -> None:
    """Wall over soft tissue; lumen (over soft tissue and walls) gas above a horizontal level."""
    y0, y1 = loop.path[:, 1].min() - loop.radius, loop.path[:, 1].max() + loop.radius
    level = y0 + loop.gas * (y1 - y0)
    for sl, (z, y, x), sdf in tube_segments(lay, loop.path, loop.radius):
        paint(tissue, sl, sdf < 0, BOWEL_WALL, over=[SOFT])
        lumen = sdf < -loop.wall
        paint(tissue, sl, lumen & (y >= level), loop.content, over=[SOFT, BOWEL_WALL])
        paint(tissue, sl, lumen & (y < level), GAS, over=[SOFT, BOWEL_WALL])


def paint_portal_plaques_and_bowel(tissue: np.ndarray, lay: Layout) -> None:
    """Portal trunk and splenic vein (over soft tissue, pancreas, liver), liver branches (over
    liver), calcified plaques on the aortic wall, then the bowel loops."""
    org = lay.organs
    for i, (path, r) in enumerate(zip(org.portal, org.portal_r)):
        over = [SOFT, PANCREAS, LIVER] if i < 2 else [LIVER]
        for sl, _, sdf in tube_segments(lay, path, r):
            paint(tissue, sl, sdf < 0, PORTAL_VEIN, over=over)
    for x, y, z, r in org.plaques:
        paint_ellipsoid(tissue, lay, (x, y, z), (r, r, 2 * r), PLAQUE, over=[AORTA, SOFT, FAT])
    for loop in org.loops:
        _paint_bowel(tissue, lay, loop)


def paint_costal_cartilage(tissue: np.ndarray, lay: Layout, ends: list) -> None:
    """Cartilage from each rib's anterior end (j, side, (x, y, z)) up and in to the sternum's edge,
    some with a calcified rim or core; over soft tissue, fat, lung and the upper abdominal organs."""
    cx, cy, a, b, fat = lay.body
    k = lay.k
    ys = cy - (b - fat - 9 * k) - 2 * k
    z_sternum = lay.levels["ribs"] + 0.1 * (lay.zs[-1] + lay.dz)
    r = 4 * k
    for j, side, end in ends:
        target = np.array([cx + side * 17 * k, ys + 2 * k, max(end[2] + 12 * k, z_sternum)], np.float32)
        code = lay.organs.cartilage[j, (side + 1) // 2]
        for sl, _, sdf in tube_segments(lay, np.stack([end, target]), r):
            paint(tissue, sl, sdf < 0, CARTILAGE, over=[SOFT, FAT, LUNG, LIVER, SPLEEN])
            if code:
                calc = (sdf > -1.2) if code == 1 else (sdf < -0.5 * r)
                paint(tissue, sl, (sdf < 0) & calc, CARTILAGE_CALC, over=[CARTILAGE])
