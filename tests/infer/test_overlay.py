"""infer.overlay: the summary picture and the axial overlays (files and sizes, not pixels)."""

from __future__ import annotations

import numpy as np
from matplotlib.image import imread

from infer.overlay import body_box, plane_centre, write_overlays, write_summary


def _volume(shape=(20, 60, 70)):
    """(CT HU with a body and a bright block, mask of the block) on (Z, Y, X)."""
    ct = np.full(shape, -1000.0, np.float32)
    ct[:, 10:50, 8:62] = 40.0  # body
    mask = np.zeros(shape, bool)
    mask[4:16, 25:40, 30:41] = True
    ct[mask] = 700.0
    return ct, mask


def test_summary_picture_is_1000_pixels_wide(tmp_path):
    """write_summary writes one PNG, 1000 px wide, taller than 300 px; with or without a reference."""
    ct, mask = _volume()
    for name, ref in (("with.png", mask), ("without.png", None)):
        path = write_summary(tmp_path / name, ct, np.roll(mask, 2, axis=2), ref, (2.5, 0.8, 0.8),
                             origin_zyx=(-100.0, -20.0, -30.0), title="case")
        height, width = imread(path).shape[:2]
        assert width == 1000 and height > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["with.png", "without.png"]


def test_axial_overlays_are_1000_pixels_wide(tmp_path):
    """Each chosen axial slice gives a 1000 px wide PNG named after its index."""
    ct, mask = _volume()
    paths = write_overlays(tmp_path / "png", ct, mask, mask, (2.5, 0.8, 0.8), n_slices=2)
    assert [p.name for p in paths] == ["slice_0004.png", "slice_0010.png"]
    assert all(imread(p).shape[1] == 1000 for p in paths)


def test_crop_holds_the_body_and_the_planes_cross_the_mask():
    """The crop is the body grown by the margin; the sagittal/coronal planes pass through the mask's centre."""
    ct, mask = _volume()
    rows, cols = body_box(ct, [mask], (0.8, 0.8), margin_mm=4.0)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (5, 55, 3, 67)
    assert plane_centre(mask, None) == (35, 32, "the prediction")
    assert plane_centre(mask & False, mask)[2] == "the reference"
