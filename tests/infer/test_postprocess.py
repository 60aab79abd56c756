"""Tests for infer.postprocess (morphological clean-up) and infer.overlay (PNG overlays)."""

from __future__ import annotations

import numpy as np
import pytest

from infer.overlay import choose_slices, slice_dsc, write_overlays
from infer.postprocess import (
    body_mask,
    keep_spine,
    spine_track,
    disk,
    fill_slice_holes,
    keep_large_components,
    open_slices,
    opening_pixels,
    postprocess,
    refine_to_bone,
    smooth_along_z,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def three_cubes_and_speck() -> np.ndarray:
    """(9, 12, 16) mask: three separate 3x3x3 cubes (like vertebrae) and one isolated voxel."""
    m = np.zeros((9, 12, 16), dtype=bool)
    for x0 in (1, 6, 11):
        m[1:4, 2:5, x0 : x0 + 3] = True
    m[7, 9, 8] = True
    return m


def test_disk_radius_one_is_cross():
    """Radius 1 is the 3x3 cross; radius 2 the 13-pixel diamond-like disk."""
    np.testing.assert_array_equal(disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    assert disk(2).sum() == 13 and disk(0).sum() == 1


def test_opening_removes_spur():
    """A 3-pixel spur on a 5x5 square goes (but its root, re-grown from the square); corners go."""
    m = np.zeros((1, 9, 12), dtype=bool)
    m[0, 2:7, 2:7] = True
    m[0, 4, 7:10] = True  # spur to the right of the middle row
    expected = np.zeros_like(m)
    expected[0, 2:7, 2:7] = True
    expected[0, [2, 2, 6, 6], [2, 6, 2, 6]] = False  # the cross cannot reach square corners
    expected[0, 4, 7] = True  # (4, 6) survives erosion (its right neighbour is the spur root)
    np.testing.assert_array_equal(open_slices(m, 1), expected)
    np.testing.assert_array_equal(open_slices(m, 0), m)


def test_opening_is_per_slice():
    """A one-slice-thick plate survives: the opening never looks along z."""
    m = np.zeros((3, 7, 7), dtype=bool)
    m[1, 1:6, 1:6] = True
    m[1, [1, 1, 5, 5], [1, 5, 1, 5]] = False  # a shape the cross opening leaves unchanged
    np.testing.assert_array_equal(open_slices(m, 1), m)


def test_fill_holes_per_slice_including_first_slice():
    """A ring is filled in every slice, also slice 0, and an open tube along z is filled too."""
    m = np.zeros((4, 7, 7), dtype=bool)
    m[:, 1:6, 1:6] = True
    m[:, 3, 3] = False  # a tube: in 3-D the hole reaches the array's z faces
    filled = fill_slice_holes(m)
    assert filled[:, 3, 3].all()
    assert filled.sum() == 4 * 25


def test_fill_holes_keeps_notch_open_to_edge():
    """Background 4-connected to the slice edge is not a hole."""
    m = np.zeros((1, 5, 5), dtype=bool)
    m[0, 1:4, 1:4] = True
    m[0, 1:3, 2] = False  # notch from the top side to the centre
    np.testing.assert_array_equal(fill_slice_holes(m), m)


def test_keeps_equal_components_removes_speck():
    """Three 27-voxel cubes stay (not only the largest); the 1-voxel speck (< 2.7) goes."""
    m = three_cubes_and_speck()
    out = keep_large_components(m, (1.0, 1.0, 1.0), min_fraction=0.1)
    assert out.sum() == 81 and not out[7, 9, 8]


def test_diagonal_touch_is_one_component():
    """A voxel touching a cube only at a corner belongs to it with 26-connectivity."""
    m = three_cubes_and_speck()
    m[4, 5, 4] = True  # corner neighbour of cube voxel (3, 4, 3)
    out = keep_large_components(m, (1.0, 1.0, 1.0), min_fraction=0.5)
    assert out[4, 5, 4] and out.sum() == 82


def test_min_component_mm3():
    """With 2 mm3 voxels a cube is 54 mm3: a 50 mm3 floor keeps the cubes, 60 mm3 drops all."""
    m = three_cubes_and_speck()
    assert keep_large_components(m, (2.0, 1.0, 1.0), 0.0, min_mm3=50.0).sum() == 81
    assert not keep_large_components(m, (2.0, 1.0, 1.0), 0.0, min_mm3=60.0).any()


def test_postprocess_pipeline():
    """Defaults: each cube loses its 4 edge columns along z (12 voxels); the speck goes."""
    m = three_cubes_and_speck()
    out = postprocess(m, (1.0, 1.0, 1.0))
    assert out.dtype == bool and out.shape == m.shape
    assert out.sum() == 3 * (27 - 12) and not out[7, 9, 8]
    m[2, 3, 2] = False  # a hole in the first cube's middle slice; without opening it is filled
    np.testing.assert_array_equal(
        postprocess(m, (1.0, 1.0, 1.0), opening_radius=0, min_component_fraction=0.0),
        fill_slice_holes(m),
    )


def test_postprocess_rejects_non_bool():
    """A non-bool mask is an error naming the dtype."""
    with pytest.raises(ValueError, match="uint8"):
        postprocess(np.zeros((2, 3, 3), dtype=np.uint8), (1.0, 1.0, 1.0))


def test_choose_slices_hand_case():
    """Areas [0,3,5,1,0,0,4,2], 2 slices: stretches z 1-3 and 4-7, fullest z = 2 and 6."""
    ref = np.zeros((8, 3, 3), dtype=bool)
    for z, n in enumerate([0, 3, 5, 1, 0, 0, 4, 2]):
        ref[z].flat[:n] = True
    assert choose_slices(np.zeros_like(ref), ref, 2) == [2, 6]
    assert choose_slices(np.zeros_like(ref), None, 3) == [0, 4, 7]


def test_slice_dsc():
    """2 overlapping of 3 + 3 pixels gives DSC 4/6; two empty slices give 1.0."""
    a = np.array([[1, 1, 1, 0]], dtype=bool)
    b = np.array([[0, 1, 1, 1]], dtype=bool)
    assert slice_dsc(a, b) == pytest.approx(4 / 6)
    assert slice_dsc(a & False, b & False) == 1.0


def test_write_overlays_png(tmp_path):
    """Overlays are valid PNG files, one per chosen slice, with no temporary files left."""
    rng = np.random.default_rng(0)
    ct = rng.normal(0.0, 300.0, size=(10, 24, 32)).astype(np.float32)
    ref = np.zeros(ct.shape, dtype=bool)
    ref[2:8, 8:16, 10:20] = True
    pred = np.roll(ref, 2, axis=2)
    paths = write_overlays(tmp_path / "png", ct, pred, ref, (2.0, 0.8, 0.4), n_slices=3)
    assert len(paths) == 3
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert sorted(x.name for x in (tmp_path / "png").iterdir()) == sorted(p.name for p in paths)
    no_ref = write_overlays(tmp_path / "noref", ct, pred, None, (2.0, 0.8, 0.4), n_slices=1)
    assert no_ref[0].read_bytes()[:8] == PNG_MAGIC


def test_postprocess_crop_matches_whole_array():
    """Working in the bounding box gives exactly the three steps applied to the whole array."""
    rng = np.random.default_rng(1)
    m = np.zeros((12, 30, 30), dtype=bool)
    m[0:10, 5:25, 4:30] = rng.random((10, 20, 26)) < 0.7  # touches the z and x edges
    for radius in (0, 1, 2):
        whole = keep_large_components(fill_slice_holes(open_slices(m, radius)), (1.0, 1.0, 1.0))
        np.testing.assert_array_equal(postprocess(m, (1.0, 1.0, 1.0), opening_radius=radius), whole)


def _torso(z=30, n=160, mm=1.0):
    """(hu, spine, others): a body ellipse; vertebrae (12 mm discs 5 slices high, gaps between) at the
    posterior midline; an aorta tube in front of them and a plate-like 'scapula' at the side."""
    yy, xx = (np.indices((n, n)) + 0.5) * mm - n * mm / 2
    hu = np.full((z, n, n), -1000, np.int16)
    hu[:, (xx / 70) ** 2 + (yy / 50) ** 2 < 1] = 40
    spine = np.zeros((z, n, n), bool)
    body_centre = (yy - 25) ** 2 + xx ** 2 < 12 ** 2
    for z0 in range(0, z, 6):
        spine[z0:z0 + 5, body_centre] = True
    aorta = np.zeros_like(spine)
    aorta[:, (yy - 0) ** 2 + (xx - 15) ** 2 < 9 ** 2] = True
    scapula = np.zeros_like(spine)
    scapula[:, (np.abs(xx + 55) < 4) & (np.abs(yy - 20) < 20)] = True
    return hu, spine, aorta | scapula


def test_spine_track_follows_the_column_not_the_bigger_false_positives():
    hu, spine, others = _torso()
    track = spine_track(spine | others, body_mask(hu), (2.0, 1.0, 1.0))
    assert np.all(np.abs(track[:, 0] - (80 + 25 - 0.5)) <= 4) and np.all(np.abs(track[:, 1] - 79.5) <= 4)


def test_spine_method_drops_what_is_not_spine_where_the_paper_keeps_it():
    """A long aorta tube and a plate at the side survive the paper's component rule; the spine
    filter keeps the vertebrae only."""
    hu, spine, others = _torso()
    pred = spine | others
    paper = postprocess(pred, (2.0, 1.0, 1.0))
    assert paper[others].mean() > 0.9
    kept = postprocess(pred, (2.0, 1.0, 1.0), method="spine", hu=hu)
    assert not kept[others & ~spine].any() and kept[spine].mean() > 0.95
    with pytest.raises(ValueError, match="the spine filter needs the CT in HU"):
        postprocess(pred, (2.0, 1.0, 1.0), method="spine")


def test_spine_filter_keeps_nothing_where_the_track_lies_far_to_the_side():
    """Below the spine, a hip-like false positive 50-68 mm to the side fills 12 slices (longer
    than the track's median window): without the midline band the track follows it there and it
    is kept; with the default band (50 mm) those slices get no track and nothing of it stays,
    while the spine is kept as before."""
    hu, spine, _ = _torso()
    yy, xx = (np.indices(spine.shape[1:]) + 0.5) - 80
    spine[:12] = False
    hip = np.zeros_like(spine)
    hip[:12, (xx > 50) & (xx < 68) & (np.abs(yy - 5) < 15)] = True
    pred = spine | hip
    loose = postprocess(pred, (2.0, 1.0, 1.0), method="spine", hu=hu, midline_mm=None)
    assert loose[hip].mean() > 0.3
    kept = postprocess(pred, (2.0, 1.0, 1.0), method="spine", hu=hu)
    assert not kept[hip].any() and kept[spine].mean() > 0.95
    track = spine_track(pred, body_mask(hu), (2.0, 1.0, 1.0))
    assert np.isnan(track[:12]).all() and np.all(np.abs(track[13:, 1] - 79.5) <= 4)  # 12: the median mixes
    np.testing.assert_array_equal(postprocess(spine, (2.0, 1.0, 1.0), method="spine", hu=hu),
                                  postprocess(spine, (2.0, 1.0, 1.0), method="spine", hu=hu, midline_mm=None))


def test_keep_spine_clips_long_arms_attached_to_the_spine():
    """A rib joined to a vertebra in its slice is cut at clip_mm from the spine."""
    hu, spine, _ = _torso()
    rib = np.zeros_like(spine)
    rib[:, 105, 80:160] = True  # from the vertebral body out to the side, 80 mm long
    kept = keep_spine(spine | rib, body_mask(hu), (2.0, 1.0, 1.0), touch_mm=15, clip_mm=40)
    cols = np.flatnonzero(kept[0, 105])
    assert cols.max() <= 80 + 40 and cols.min() >= 80 - 12


def test_keep_spine_keeps_a_vertebra_drawn_in_pieces_where_its_neighbours_hold_it():
    """In one slice the network drew only the tip of a spinous process, 16-24 mm behind the
    track: no part of it comes within touch_mm, so the per-slice rule alone (rounds=0) drops it.
    It overlaps the process kept in the slices above and below and lies within reach_mm, so it
    is kept; the aorta, whose edge is 20 mm from the track too, was never kept and stays out."""
    hu, spine, others = _torso()
    yy, xx = (np.indices(spine.shape[1:]) + 0.5) - 80
    process = (np.abs(xx) < 3) & (yy > 25) & (yy < 50)  # from the body's centre to 25 mm behind it
    pred = spine | others
    pred[0:5, process] = True
    pred[2] = False
    tip = process & (yy > 41)
    pred[2, tip] = True
    body = body_mask(hu)
    alone = keep_spine(pred, body, (2.0, 1.0, 1.0), rounds=0)
    assert not alone[2].any()
    kept = keep_spine(pred, body, (2.0, 1.0, 1.0))
    np.testing.assert_array_equal(kept[2], tip)
    assert not kept[others & ~spine].any()
    far = keep_spine(pred, body, (2.0, 1.0, 1.0), reach_mm=15.0)
    assert not far[2].any()


def _vertebra_in_soft_tissue(z=4, n=48):
    """(hu, bone, rim): a ring of cortex (700 HU) around marrow darker than the window (60 HU), in
    soft tissue (40 HU); ``rim``: a 3-pixel band of soft tissue around the ring, as a patch
    classifier draws it."""
    yy, xx = np.indices((n, n)) - n / 2 + 0.5
    r = np.hypot(yy, xx)
    hu = np.full((z, n, n), 40, np.int16)
    hu[:, r < 10] = 700
    hu[:, r < 8] = 60
    bone = np.broadcast_to(r < 10, (z, n, n)).copy()
    rim = np.broadcast_to((r >= 10) & (r < 13), (z, n, n)).copy()
    return hu, bone, rim


def test_refinement_trims_the_soft_tissue_rim_and_keeps_the_dark_marrow():
    """The mask drawn 3 pixels too wide: the refinement at the window's floor gives the bone back,
    marrow below the floor included (a hole of the cortex); with a one-pixel gap in the cortex
    the closing still fills the marrow."""
    hu, bone, rim = _vertebra_in_soft_tissue()
    drawn = bone | rim
    np.testing.assert_array_equal(refine_to_bone(drawn, hu, 100.0), bone)
    gap = hu.copy()
    gap[:, 24, 33:39] = 60  # a one-pixel-wide crack through the cortex on the right
    np.testing.assert_array_equal(refine_to_bone(drawn, gap, 100.0), bone)
    # the paper's steps keep the rim; the refinement after them removes it
    kept = postprocess(drawn, (2.0, 1.0, 1.0), method="paper")
    assert kept[rim].all()
    np.testing.assert_array_equal(postprocess(drawn, (2.0, 1.0, 1.0), method="paper", hu=hu, refine_hu=100.0), bone)
    with pytest.raises(ValueError, match="the refinement needs the CT in HU"):
        postprocess(drawn, (2.0, 1.0, 1.0), refine_hu=100.0)


def test_refinement_leaves_the_spinal_canal_out_and_keeps_the_marrow():
    """A vertebra drawn whole, canal included: the refinement keeps the body's dark marrow (a hole
    of median 60 HU) and leaves out the canal (a hole of cerebrospinal fluid, 10 HU) and the cord
    in it (35 HU); filling every hole (hole_min_hu=None) puts the canal back."""
    z, n = 3, 60
    yy, xx = np.indices((n, n))
    hu = np.full((z, n, n), 40, np.int16)
    body = np.hypot(yy - 20, xx - 30) < 10
    canal = np.hypot(yy - 38, xx - 30) < 6
    arch = np.hypot(yy - 38, xx - 30) < 9
    hu[:, body | arch] = 700
    marrow = np.hypot(yy - 20, xx - 30) < 8
    hu[:, marrow] = 60  # below the floor
    hu[:, canal] = 10
    hu[:, np.hypot(yy - 38, xx - 30) < 2] = 35  # the cord
    drawn = np.broadcast_to(body | arch, (z, n, n)).copy()
    out = refine_to_bone(drawn, hu, 100.0)
    np.testing.assert_array_equal(out, np.broadcast_to((body | arch) & ~canal, (z, n, n)))
    np.testing.assert_array_equal(refine_to_bone(drawn, hu, 100.0, hole_min_hu=None), drawn)
    after_paper = postprocess(drawn, (2.0, 1.0, 1.0), method="paper", hu=hu, refine_hu=100.0)
    assert after_paper[:, marrow].all() and not after_paper[:, canal].any()


def test_refinement_never_adds_a_pixel(rng):
    """Random masks over random HU: the refinement's output is a subset of its input, and a floor
    above every HU value empties it."""
    for _ in range(5):
        mask = rng.random((3, 40, 40)) < 0.4
        hu = rng.normal(100, 200, mask.shape)
        out = refine_to_bone(mask, hu, 100.0)
        assert not (out & ~mask).any() and out[mask & (hu >= 100)].all()
        assert not refine_to_bone(mask, hu, hu.max() + 1).any()
    assert not refine_to_bone(np.zeros((2, 5, 5), bool), np.zeros((2, 5, 5)), 0.0).any()


def test_z_smoothing_is_a_gaussian_in_mm_along_z_only():
    """smooth_along_z: each pixel's probability becomes the Gaussian-weighted mean of its own
    column over the slices (sigma in mm over the slice spacing, end slices repeated)."""
    p = np.random.default_rng(0).random((7, 3, 4)).astype(np.float32)
    got = smooth_along_z(p, 2.0, 3.0)  # sigma 1.5 slices
    sigma = 1.5
    r = int(4 * sigma + 0.5)  # 4 sigmas, as scipy truncates
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.concatenate([np.repeat(p[:1], r, 0), p, np.repeat(p[-1:], r, 0)])
    np.testing.assert_allclose(got, sum(k[i] * padded[i : i + 7] for i in range(2 * r + 1)), atol=1e-6)
    np.testing.assert_array_equal(smooth_along_z(p, 1.0, 1.5), got)  # the same sigma in slices
    for off in (None, 0.0):
        kept = smooth_along_z(p, 2.0, off)
        np.testing.assert_array_equal(kept, p)
        assert kept is not p
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match=f"sigma is {bad!r} mm"):
            smooth_along_z(p, 2.0, bad)


def test_z_smoothing_drops_a_one_slice_blip_fills_a_one_slice_gap_and_keeps_a_thin_disc():
    """At the default 2 mm on 2.5 mm slices: a false positive in one slice falls below 0.5, a
    vertebra missed in one slice of nine rises above it; on 1 mm slices a 3 mm disc between two
    vertebrae stays background (at 3 mm it would not)."""
    p = np.zeros((9, 1, 2), np.float32)
    p[4, 0, 0] = 0.9
    p[:, 0, 1] = 0.95
    p[4, 0, 1] = 0.2
    got = smooth_along_z(p, 2.5) > 0.5
    assert not got[:, 0, 0].any() and got[:, 0, 1].all()
    spine = np.ones((23, 1, 1), np.float32)
    spine[10:13] = 0.0  # the disc: slices 10, 11, 12 of 1 mm
    assert smooth_along_z(spine, 1.0)[11, 0, 0] < 0.5 < smooth_along_z(spine, 1.0, 3.0)[11, 0, 0]


def test_spine_method_opens_by_a_millimetre_and_the_paper_by_a_pixel():
    """opening_pixels: whole pixels within 1 mm of the larger in-plane side. At 3 mm pixels the
    spine method does not open, so a process one pixel (3 mm) thick stays; the paper's 3x3 cross
    (its default) removes it."""
    assert [opening_pixels(s) for s in ((2.5, 0.7, 0.7), (3.0, 3.0, 3.0), (1.0, 0.4, 0.4), (2.0, 0.7, 1.4),
                                        (1.0, 1.0, 1.0))] == [1, 0, 2, 0, 1]
    hu, spine, _ = _torso(n=60, mm=3.0)
    process = np.zeros_like(spine)
    process[:, 38:46, 30] = True  # a spinous process, 3 mm wide, reaching 12 mm behind each vertebra
    pred = spine | (process & spine.any((1, 2))[:, None, None])
    assert (pred & process & ~spine).sum((1, 2)).max() >= 4
    spacing = (2.0, 3.0, 3.0)
    kept = postprocess(pred, spacing, method="spine", hu=hu)
    assert kept[pred & process].all() and kept[spine].mean() > 0.95
    beyond = pred & process
    beyond[:, :43] = False  # more than a pixel off the vertebra: the cross's dilation does not reach back
    assert beyond.sum() >= 3 * spine.any((1, 2)).sum()
    assert not postprocess(pred, spacing, method="spine", hu=hu, opening_radius=1)[beyond].any()
    assert not postprocess(pred, spacing)[beyond].any()
