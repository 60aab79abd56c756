"""Synthetic spine phantoms: determinism, HU plausibility, the anatomy that makes it hard, layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from patchstore.io.volume import read_volume
from patchstore.phantom.generate import Phantom, _render, make_phantom, write_dataset


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(np.random.default_rng(7), size=64, slices=24)


def test_same_seed_same_phantom():
    """The same generator seed gives identical arrays and spacing."""
    a = make_phantom(np.random.default_rng(3), 64, 24)
    b = make_phantom(np.random.default_rng(3), 64, 24)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.spacing == b.spacing and a.origin == b.origin


def test_different_seed_differs():
    """Different seeds give different images, masks and spacings."""
    a = make_phantom(np.random.default_rng(3), 64, 24)
    b = make_phantom(np.random.default_rng(4), 64, 24)
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.mask, b.mask)
    assert a.spacing != b.spacing


def test_shapes_and_dtypes(phantom):
    """Image (Z, Y, X) int16, mask uint8 0/1 of the same shape."""
    assert phantom.image.shape == phantom.mask.shape == (24, 64, 64)
    assert phantom.image.dtype == np.int16 and phantom.mask.dtype == np.uint8
    assert set(np.unique(phantom.mask)) == {0, 1}


def test_hu_range_with_lungs_fat_and_tissue(phantom):
    """HU lie in [-1024, 3071]; the spine-centred field of view holds lung, fat and soft tissue."""
    assert phantom.image.min() >= -1024 and phantom.image.max() <= 3071
    assert (phantom.image < -700).mean() > 0.02
    assert ((phantom.image > -150) & (phantom.image < -60)).mean() > 0.002
    assert ((phantom.image > 0) & (phantom.image < 80)).mean() > 0.2


def test_mask_lies_on_bone(phantom):
    """Mask voxels are bone: mean HU in the bone range, >= 90% inside the 100..1500 HU window."""
    hu = phantom.image[phantom.mask == 1].astype(float)
    assert 300 < hu.mean() < 1200
    assert ((hu >= 100) & (hu <= 1500)).mean() >= 0.9


def test_several_vertebrae(phantom):
    """The mask falls apart into at least three vertebrae in 3-D."""
    _, n = ndimage.label(phantom.mask)
    assert n >= 3


def test_discs_separate_vertebrae(phantom):
    """Between the first and last masked slice some slices hold no mask (discs), and they hold disc HU."""
    per_slice = phantom.mask.sum(axis=(1, 2))
    z = np.flatnonzero(per_slice)
    gaps = [g for g in range(z[0], z[-1]) if per_slice[g] == 0]
    assert gaps
    _, ys, xs = np.nonzero(phantom.mask)
    spine = phantom.image[gaps, int(np.median(ys)) - 1, int(np.median(xs))]
    assert (spine < 300).all()


def test_unlabelled_bone_near_vertebrae():
    """Bone outside the mask (ribs, sternum, pelvis) is plentiful and some of it touches the vertebrae."""
    ph = make_phantom(np.random.default_rng(11), 96, 32)
    mask = ph.mask.astype(bool)
    other = (ph.image >= 300) & ~mask
    assert other.sum() > 0.2 * mask.sum()
    near = other & ndimage.binary_dilation(mask, iterations=2)
    assert near.sum() > 20


def test_vessels_in_bone_window(phantom):
    """Contrast vessels: 150..400 HU voxels outside the mask and away from any bone."""
    bone = ndimage.binary_dilation(phantom.image >= 500, iterations=2)
    vessel = (phantom.image >= 150) & (phantom.image <= 400) & (phantom.mask == 0) & ~bone
    assert vessel.sum() > 30


def test_spacing_anisotropic(phantom):
    """In-plane spacing is square, slice spacing differs from it (2-3.5 mm at small slice counts)."""
    sx, sy, sz = phantom.spacing
    assert sx == sy and abs(sz - sx) > 0.1
    assert 2.0 <= sz <= 3.5
    assert phantom.geometry.size == (64, 64, 24) and phantom.geometry.orientation == "LPS"


def test_csi_sized_spacing_shrinks_slices():
    """Above 48 slices the slice spacing shrinks so the spine keeps a plausible length."""
    from patchstore.phantom.generate import _layout
    lay = _layout(np.random.default_rng(0), 512, 550)
    assert 0.5 < lay.dz < 1.1 and 0.31 <= lay.dxy <= 0.45  # CSI: 0.31-0.45 mm
    inside = [v for v in lay.vertebrae if v.z1 > 0 and v.z0 < 550 * lay.dz]
    assert 14 <= len(inside) <= 21


def test_render_slabs_equal_whole_volume_blur():
    """Slab-wise rendering (no noise) equals one whole-volume blur."""
    tissue = np.random.default_rng(0).integers(0, 3, (70, 12, 10), dtype=np.uint8)
    lut = np.array([-1000, 40, 900] + [0] * 253, np.float32)
    got = _render(tissue, lut, (0.4, 0.5, 0.5), 0.0, np.random.default_rng(0))
    want = np.rint(ndimage.gaussian_filter(lut[tissue], (0.4, 0.5, 0.5), mode="nearest", truncate=4.0))
    assert np.array_equal(got, want.astype(np.int16))


def test_rejects_tiny_volume():
    """A volume too small for a spine is refused with the size in the message."""
    with pytest.raises(ValueError, match="16 x 16 x 24"):
        make_phantom(np.random.default_rng(0), 16, 24)


def test_write_dataset_layout(tmp_path):
    """Decathlon layout: imagesTr/_0000 images, labelsTr labels, dataset.json listing them."""
    paths = write_dataset(tmp_path, cases=2, seed=5, size=48, slices=16)
    assert paths == [tmp_path / "imagesTr" / f"phantom_{i:03d}_0000.nii.gz" for i in range(2)]
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["tensorImageSize"] == "3D"
    assert meta["modality"] == {"0": "CT"} and meta["labels"] == {"0": "background", "1": "vertebra"}
    for entry in meta["training"]:
        assert (tmp_path / entry["image"]).is_file() and (tmp_path / entry["label"]).is_file()
    assert not list(tmp_path.glob(".*tmp*"))


def test_write_dataset_reads_back(tmp_path):
    """Written files read back through read_volume with the phantom's arrays and geometry."""
    write_dataset(tmp_path, cases=1, seed=5, size=48, slices=16)
    ph = make_phantom(np.random.default_rng([5, 0]), 48, 16)
    image = read_volume(tmp_path / "imagesTr" / "phantom_000_0000.nii.gz", dtype=None)
    label = read_volume(tmp_path / "labelsTr" / "phantom_000.nii.gz", dtype=None)
    assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
    assert np.array_equal(image.array, ph.image) and np.array_equal(label.array, ph.mask)
    assert np.allclose(image.geometry.spacing, ph.spacing) and np.allclose(image.geometry.origin, ph.origin)


def test_case_independent_of_case_count(tmp_path: Path):
    """Case i is byte-identical whether 2 or 3 cases are written."""
    write_dataset(tmp_path / "two", cases=2, seed=9, size=48, slices=16)
    write_dataset(tmp_path / "three", cases=3, seed=9, size=48, slices=16)
    for name in ("imagesTr/phantom_001_0000.nii.gz", "labelsTr/phantom_001.nii.gz"):
        a = read_volume(tmp_path / "two" / name, dtype=None).array
        b = read_volume(tmp_path / "three" / name, dtype=None).array
        assert np.array_equal(a, b)
