"""Synthetic spine phantoms: determinism, HU plausibility, the anatomy that makes it hard, layout,
contrast phases and the body field of view."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage

from patchstore.cli import main
from patchstore.io.volume import read_volume
from patchstore.phantom.anatomy import tissue_map
from patchstore.phantom.contrast import CANCELLOUS_HU, CONTRASTS, CORTEX_HU, FOVS, HU_RANGES, PHASES
from patchstore.phantom.generate import Phantom, _case, _render, make_phantom, write_dataset
from patchstore.phantom.tissue import (
    AORTA,
    FLUID,
    GAS,
    KIDNEY_CORTEX,
    KIDNEY_MEDULLA,
    LIVER,
    ORAL_CONTRAST,
    PANCREAS,
    PORTAL_VEIN,
    SPLEEN,
    VERTEBRA0,
    VEIN,
)


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


# ---------------------------------------------------------------- contrast phases, field of view


def _clinical(seed: int, contrast: str, fov: str = "body", size: int = 128, slices: int = 24):
    """(tissue map, HU table, noise SD, phantom) of case (seed, 0) with its second generator."""
    lay, noise, _ = _case(np.random.default_rng([seed, 0]), size, slices, contrast, fov,
                          np.random.default_rng([seed, 0, 1]))
    ph = make_phantom(np.random.default_rng([seed, 0]), size, slices, contrast, fov,
                      extra=np.random.default_rng([seed, 0, 1]))
    return tissue_map(lay), lay.lut, noise, ph


def _core_median(tissue: np.ndarray, image: np.ndarray, cls: int) -> tuple[float, int]:
    """Median HU of the voxels of ``cls`` one voxel inside its boundary (no partial volume), count."""
    core = ndimage.binary_erosion(tissue == cls)
    n = int(core.sum())
    return (float(np.median(image[core])) if n else float("nan")), n


def test_spine_phantom_pins_pre_contrast_output():
    """Defaults (none, spine) pin the pre-contrast output: SHA-256s taken before contrast phases existed."""
    ph = make_phantom(np.random.default_rng([0, 0]), 96, 24, contrast="none", fov="spine")
    assert hashlib.sha256(ph.image.tobytes()).hexdigest() == \
        "122a224cd3ca0cedc6bd39529f84ca7a55861f11054cf8d825043410039a8626"
    assert hashlib.sha256(ph.mask.tobytes()).hexdigest() == \
        "e35170d18fee80194b336f2b6f6eb2d549700cb118c8ddc6a0e6afafd224fa33"


def test_contrast_changes_only_the_background():
    """A contrast phase in the spine field of view keeps the spine phantom's mask, spacing and origin."""
    spine = make_phantom(np.random.default_rng([4, 0]), 64, 24)
    arterial = make_phantom(np.random.default_rng([4, 0]), 64, 24, contrast="arterial",
                            extra=np.random.default_rng([4, 0, 1]))
    assert np.array_equal(spine.mask, arterial.mask) and not np.array_equal(spine.image, arterial.image)
    assert spine.spacing == arterial.spacing and spine.origin == arterial.origin
    assert arterial.phase == "arterial"


@pytest.mark.parametrize("phase", PHASES)
def test_phase_hu_in_documented_range(phase):
    """Every phase class is drawn in its documented range; the image median of each class lies in it."""
    measured = set()
    for seed in (0, 1):
        tissue, lut, noise, ph = _clinical(seed, phase)
        for cls, ranges in HU_RANGES.items():
            lo, hi = ranges[PHASES.index(phase)]
            assert lo <= lut[cls] <= hi, (cls, lut[cls])
            median, n = _core_median(tissue, ph.image, cls)
            if n >= 30:
                slack = 3 * 1.25 * noise / np.sqrt(n)  # three standard errors of a median
                assert lo - slack <= median <= hi + slack, (cls, median, n)
                measured.add(cls)
    assert {LIVER, SPLEEN, KIDNEY_CORTEX, KIDNEY_MEDULLA, PANCREAS, AORTA, PORTAL_VEIN, VEIN, FLUID, GAS} <= measured


def test_aorta_and_liver_enhance_in_phase_order():
    """Aorta: arterial > venous > non-contrast; liver: venous > non-contrast (image medians)."""
    hu = {p: {c: _core_median(t, ph.image, c)[0] for c in (AORTA, LIVER)}
          for p in PHASES for t, _, _, ph in [_clinical(2, p)]}
    assert hu["arterial"][AORTA] > hu["venous"][AORTA] > hu["none"][AORTA]
    assert hu["venous"][LIVER] > hu["none"][LIVER]


@pytest.mark.parametrize("contrast", ["none", "venous"])
def test_clinical_vertebrae_have_clinical_bone_density(contrast):
    """Clinical cases draw each vertebra's cortex and cancellous core from CORTEX_HU and
    CANCELLOUS_HU (partial-volume cortex, low-density cores); the spine phantom keeps its denser
    table. The cores' image medians lie in the range too."""
    tissue, lut, noise, ph = _clinical(5, contrast, slices=48)
    _, spine_lut, _, _ = _clinical(5, "none", fov="spine", slices=48)
    n = int(tissue.max()) - VERTEBRA0 + 1
    cortex, core = lut[VERTEBRA0 : VERTEBRA0 + n : 2], lut[VERTEBRA0 + 1 : VERTEBRA0 + n : 2]
    assert ((CORTEX_HU[0] <= cortex) & (cortex <= CORTEX_HU[1])).all()
    assert ((CANCELLOUS_HU[0] <= core) & (core <= CANCELLOUS_HU[1])).all()
    assert (spine_lut[VERTEBRA0 : VERTEBRA0 + n : 2] >= 750).all()  # the spine phantom's, unchanged
    measured = 0
    for cls in range(VERTEBRA0 + 1, VERTEBRA0 + n, 2):
        median, count = _core_median(tissue, ph.image, cls)
        if count >= 30:
            slack = 3 * 1.25 * noise / np.sqrt(count)
            assert CANCELLOUS_HU[0] - slack <= median <= CANCELLOUS_HU[1] + slack, (cls, median, count)
            measured += 1
    assert measured >= 2


def test_clinical_case_is_deterministic():
    """The same seeds give the same bytes, spacing and phase for a mixed, body-view case."""
    a, b = (make_phantom(np.random.default_rng([3, 1]), 64, 16, "mixed", "body",
                         extra=np.random.default_rng([3, 1, 1])) for _ in range(2))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.spacing == b.spacing and a.origin == b.origin and a.phase == b.phase


def test_mixed_picks_phases_per_case():
    """mixed draws the phase per case, and a mixed case equals the case made with its phase."""
    def case(i: int, contrast: str) -> Phantom:
        return make_phantom(np.random.default_rng([0, i]), 48, 16, contrast, extra=np.random.default_rng([0, i, 1]))
    mixed = [case(i, "mixed") for i in range(6)]
    assert len({ph.phase for ph in mixed}) >= 2
    assert all(np.array_equal(ph.image, case(i, ph.phase).image) for i, ph in enumerate(mixed[:2]))


def test_oral_contrast_in_some_cases_only():
    """Positive oral contrast fills bowel loops in some cases and not in others."""
    oral = [any(loop.content == ORAL_CONTRAST for loop in _case(
        np.random.default_rng([s, 0]), 64, 16, "venous", "body", np.random.default_rng([s, 0, 1]))[0].organs.loops)
        for s in range(12)]
    assert 0 < sum(oral) < len(oral)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_body_fov_holds_the_torso_with_air_around(seed):
    """fov body: the whole torso in view, 1.1-1.3 x its width, air on every side; the mask lies on bone."""
    ph = make_phantom(np.random.default_rng([seed, 0]), 96, 16, "none", "body",
                      extra=np.random.default_rng([seed, 0, 1]))
    body = (ph.image > -500).any(axis=0)
    rows, cols = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
    assert rows[0] >= 3 and cols[0] >= 3 and rows[-1] <= 92 and cols[-1] <= 92
    assert 1.05 <= 96 / (cols[-1] - cols[0] + 1) <= 1.35
    assert 300 < ph.image[ph.mask == 1].mean() < 1200


def test_body_fov_pixel_size_at_512():
    """At 512 pixels the body field of view gives clinical pixels, 0.55-0.9 mm."""
    for s in range(8):
        lay, _, _ = _case(np.random.default_rng([s, 0]), 512, 8, "none", "body", np.random.default_rng([s, 0, 1]))
        assert 0.55 <= lay.dxy <= 0.9


def test_rejects_unknown_contrast_and_fov():
    """Unknown contrast or field of view values are refused, naming the value and the choices."""
    with pytest.raises(ValueError, match="Contrast 'portal' is not one of none, arterial, venous, mixed"):
        make_phantom(np.random.default_rng(0), 48, 16, contrast="portal")
    with pytest.raises(ValueError, match="Field of view 'chest' is not one of spine, body"):
        write_dataset("unused", cases=1, seed=0, fov="chest")


def test_cli_phantom_contrast_and_fov(tmp_path):
    """`patchstore phantom --contrast mixed --fov body` writes the cases with their phases."""
    res = CliRunner().invoke(main, ["phantom", str(tmp_path), "--cases", "2", "--size", "48", "--slices", "16",
                                    "--contrast", "mixed", "--fov", "body"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert [e["phase"] in PHASES for e in meta["training"]] == [True, True]
    options = {p.name: p.type.choices for p in main.commands["phantom"].params if p.name in ("contrast", "fov")}
    assert tuple(options["contrast"]) == CONTRASTS and tuple(options["fov"]) == FOVS


def test_cli_phantom_rejects_bad_contrast(tmp_path):
    """A bad --contrast value is click's usage error (exit 2), and nothing is written."""
    res = CliRunner().invoke(main, ["phantom", str(tmp_path / "x"), "--contrast", "portal"])
    assert res.exit_code == 2 and "Invalid value for '--contrast'" in res.output
    assert not (tmp_path / "x").exists()
