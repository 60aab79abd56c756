r"""Synthetic spine CT phantoms in HU with vertebra masks, deterministic from a generator.

A phantom carries what makes the real task hard: vertebrae (label 1) sit among bones of the same
HU that are *not* labelled (ribs whose heads touch the vertebrae, a sternum, iliac wings and a
sacrum), intervertebral discs split the spine into separate bones, and contrast-filled vessels
fall inside the 100..1500 HU bone window.

Two kinds of case. The *spine phantom* (``contrast="none"``, ``fov="spine"``, the default, byte
for byte what this module made before contrast phases existed): a spine-centred field of view,
liver and kidneys as one organ class, aorta and IVC at fixed contrast-like HU. A *clinical* case
(any contrast phase, or ``fov="body"``): the same spine and body, plus liver, spleen, kidneys
(cortex, medulla), pancreas, portal system, bowel loops (fluid, gas, oral contrast), aortic
plaques and costal cartilage, their HU drawn for the phase (``patchstore.phantom.contrast``), with
low-dose noise, and with ``fov="body"`` the whole torso in view. Everything a clinical case adds is
drawn from a second generator, so its spine, mask (``fov="spine"``) and noise field equal the
spine phantom's.

Everything is drawn first as a uint8 *tissue* map (one class per HU value, painted in order on
coordinate grids in mm, one bounding box per object), then turned into HU slab by slab (lookup,
partial-volume blur, noise), so a 512 x 512 x 550 case needs no full-volume float temporaries.
This module draws the layout from the generator and renders HU; ``patchstore.phantom.anatomy`` paints the
tissue map with the classes and primitives of ``patchstore.phantom.tissue`` (clinical organs:
``patchstore.phantom.organs``).

Coordinates (mm), matching the canonical array ``[z, y, x]`` of ``patchstore.io.volume``::

    x: patient right -> left, 0 at the centre of the spine-centred field of view  (axis 2, columns)
    y: anterior -> posterior, 0 at that centre (posterior is +y)                 (axis 1, rows)
    (the body field of view is centred, give or take a few mm, on the body instead)
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

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from patchstore.files import write_json_atomic
from patchstore.io.volume import Geometry, write_volume
from patchstore.phantom.anatomy import tissue_map
from patchstore.phantom.contrast import CONTRASTS, FOVS, Scan, check_choice, clinical_bone, draw_scan, phase_lut
from patchstore.phantom.organs import draw_organs
from patchstore.phantom.tissue import (
    AIR,
    AORTA,
    BONE_CANC,
    BONE_CORT,
    CANAL,
    DISC,
    FAT,
    LUNG,
    MAX_VERTEBRAE,
    ORGAN,
    SOFT,
    VEIN,
    VERTEBRA0,
    Layout,
    Vertebra,
)

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
HU_RANGE = (-1024, 3071)
SLAB = 32  # slices per rendering slab (fixed: the noise stream must not depend on it)


@dataclass(frozen=True)
class Phantom:
    """``image`` (Z, Y, X) int16 HU, ``mask`` (Z, Y, X) uint8 0/1, ``spacing``/``origin`` (x, y, z) mm,
    ``phase`` the contrast phase drawn (none, arterial, venous; none for the spine phantom too)."""

    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    phase: str = "none"

    @property
    def geometry(self) -> Geometry:
        """Canonical (LPS, identity direction) geometry of ``image`` and ``mask``."""
        z, y, x = self.image.shape
        return Geometry((x, y, z), self.spacing, self.origin, IDENTITY)



# ---------------------------------------------------------------- drawing the layout


def _vertebrae(rng: np.random.Generator, extent: float, dz: float, slices: int, k: float,
               z_pel: float) -> tuple[Vertebra, ...]:
    """Segments from below the volume to 2.5 periods above it; about 5 * sqrt(slices / 48) inside."""
    count = max(4.0, 5.0 * np.sqrt(slices / 48.0)) * rng.uniform(0.9, 1.1)
    period = extent / count
    out, z = [], -rng.uniform(1.0, 2.0) * period
    while z < extent + 2.5 * period and len(out) < MAX_VERTEBRAE:
        p = period * rng.uniform(0.94, 1.06)
        disc = max(p * rng.uniform(0.2, 0.27), 1.6 * dz)
        t = np.clip((z + p / 2) / extent, 0.0, 1.0)
        scale = k * (1.15 - 0.35 * t * min(1.0, count / 12.0)) * rng.uniform(0.96, 1.04)
        out.append(Vertebra(z, z + p - disc, scale, 7.5 * scale * rng.uniform(0.93, 1.07),
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


def _layout(rng: np.random.Generator, size: int, slices: int) -> Layout:
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
    return Layout(xy, xy, ((np.arange(slices) + 0.5) * dz).astype(np.float32),
                  dxy, dz, k, (cx, cy, a, b, rng.uniform(8, 20) * k), curve, levels, verts,
                  _hu_table(rng, len(verts)))


def _clinical(lay: Layout, scan: Scan, extra: np.random.Generator) -> Layout:
    """``lay`` with the phase's HU table, the drawn organs and, for a body field of view, a grid
    centred on the body (near-centred: ``scan.offset``) that holds the whole torso."""
    lay = replace(lay, lut=phase_lut(extra, scan.phase, lay.lut), organs=draw_organs(extra, lay, scan.oral))
    lay = replace(lay, lut=clinical_bone(extra, lay.lut, len(lay.vertebrae)))  # drawn last: the rest stays
    if scan.fov_mm is None:
        return lay
    cx, cy = lay.body[:2]
    size = len(lay.xs)
    dxy = scan.fov_mm / size
    grid = (np.arange(size) + 0.5 - size / 2) * dxy
    return replace(lay, xs=(cx + scan.offset[0] + grid).astype(np.float32),
                   ys=(cy + scan.offset[1] + grid).astype(np.float32), dxy=dxy)


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


def _case(rng: np.random.Generator, size: int, slices: int, contrast: str, fov: str,
          extra: np.random.Generator | None) -> tuple[Layout, float, str]:
    """Layout, noise SD (HU) and phase of one case: every draw made before rendering."""
    lay = _layout(rng, size, slices)
    noise = rng.uniform(10, 20)  # drawn in every case, so that rng's stream stays the spine phantom's
    if contrast == "none" and fov == "spine":
        return lay, noise, "none"
    extra = rng.spawn(1)[0] if extra is None else extra
    scan = draw_scan(extra, contrast, fov, 2 * lay.body[2])
    return _clinical(lay, scan, extra), scan.noise, scan.phase


def make_phantom(rng: np.random.Generator, size: int = 128, slices: int = 48, contrast: str = "none",
                 fov: str = "spine", extra: np.random.Generator | None = None) -> Phantom:
    """One synthetic spine CT: (slices, size, size) int16 HU image and uint8 vertebra mask.

    About 5 vertebrae at 48 slices (5 * sqrt(slices / 48), at least 4; 17 at 550); in-plane spacing
    0.31-0.45 mm x (512 / size)^0.6 (``fov="spine"``) or 1.1-1.3 x the body width / size
    (``fov="body"``, 0.6-0.85 mm at 512), slice spacing 2-3.5 mm (x sqrt(48 / slices) above 48).
    ``contrast``: none, arterial, venous, or mixed (one of the three per case, drawn from ``extra``).
    ``extra`` draws everything a clinical case adds (default: spawned from ``rng``, which it does
    not advance); the spine phantom (none, spine) draws nothing from it.
    """
    if size < 32 or slices < 8:
        raise ValueError(f"Phantom size {size} x {size} x {slices} is too small; expected size >= 32 "
                         f"and slices >= 8")
    check_choice("Contrast", contrast, CONTRASTS)
    check_choice("Field of view", fov, FOVS)
    lay, noise, phase = _case(rng, size, slices, contrast, fov, extra)
    tissue = tissue_map(lay)
    mask = (tissue >= VERTEBRA0).view(np.uint8)
    image = _render(tissue, lay.lut, (0.4, 0.5, 0.5), noise, rng)
    origin = (float(lay.xs[0] + rng.uniform(-20, 20)), float(lay.ys[0] + rng.uniform(-20, 20)),
              float(rng.uniform(-700, -300)))
    return Phantom(image, mask, (lay.dxy, lay.dxy, lay.dz), origin, phase)


def write_dataset(out_dir: str | os.PathLike, cases: int, seed: int, size: int = 128,
                  slices: int = 48, contrast: str = "none", fov: str = "spine") -> list[Path]:
    """Write ``cases`` phantoms in the Decathlon / nnU-Net layout; returns the image paths.

    ``imagesTr/phantom_{i:03d}_0000.nii.gz`` (int16 HU), ``labelsTr/phantom_{i:03d}.nii.gz`` (uint8)
    and ``dataset.json`` (clinical cases: with each case's ``phase``). Case i uses
    ``default_rng([seed, i])`` and ``default_rng([seed, i, 1])`` (what a clinical case adds): the
    same whatever ``cases`` is.
    """
    if cases < 1:
        raise ValueError(f"Number of cases {cases} must be at least 1")
    check_choice("Contrast", contrast, CONTRASTS)
    check_choice("Field of view", fov, FOVS)
    clinical = contrast != "none" or fov != "spine"
    out = Path(out_dir)
    images, training = [], []
    for i in range(cases):
        ph = make_phantom(np.random.default_rng([seed, i]), size, slices, contrast, fov,
                          extra=np.random.default_rng([seed, i, 1]))
        image = write_volume(out / "imagesTr" / f"phantom_{i:03d}_0000.nii.gz", ph.image, ph.geometry)
        label = write_volume(out / "labelsTr" / f"phantom_{i:03d}.nii.gz", ph.mask, ph.geometry)
        images.append(image)
        training.append({"image": image.relative_to(out).as_posix(), "label": label.relative_to(out).as_posix()}
                        | ({"phase": ph.phase} if clinical else {}))
    kind = f", contrast {contrast}, field of view {fov}" if clinical else ""
    write_json_atomic(out / "dataset.json", {
        "name": "phantom", "description": f"Synthetic spine CT phantoms (patchstore phantom, seed {seed}{kind})",
        "tensorImageSize": "3D", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "vertebra"},
        "numTraining": cases, "numTest": 0, "file_ending": ".nii.gz", "training": training, "test": []})
    return images
