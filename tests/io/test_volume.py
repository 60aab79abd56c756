"""Volume I/O: canonical orientation, geometry checks, bad headers, DICOM, writing back."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from patchstore.io.volume import (
    Geometry,
    VolumeError,
    binarize,
    parse_labels,
    read_case,
    read_header,
    read_volume,
    write_mask,
    write_volume,
)
from tests.builders import LPS, RAS, lps_geometry, write_dicom_series


def _sitk_image(array_zyx: np.ndarray, spacing, origin, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def _write_sitk(path: Path, array_zyx: np.ndarray, spacing, origin, direction) -> Path:
    sitk.WriteImage(_sitk_image(array_zyx, spacing, origin, direction), str(path))
    return path


def _ramp(shape=(4, 5, 6)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.int16).reshape(shape)


def test_ras_file_reads_canonical_and_writes_back_exactly(tmp_path):
    """A RAS volume reads as LPS (x and y flipped) and a mask written back matches the file's own grid."""
    a = _ramp()
    src = _write_sitk(tmp_path / "ct.nii.gz", a, (0.7, 0.8, 2.5), (10.0, 20.0, -30.0), RAS)
    vol = read_volume(src)
    assert vol.geometry.direction == pytest.approx(LPS)
    assert vol.source.orientation == "RAS" and vol.geometry.orientation == "LPS"
    np.testing.assert_array_equal(vol.array, a[:, ::-1, ::-1])
    out = write_mask(tmp_path / "pred.nii.gz", (vol.array % 2).astype(np.uint8), vol.geometry, vol.source)
    back = sitk.ReadImage(str(out))
    assert back.GetDirection() == pytest.approx(RAS)
    assert back.GetOrigin() == pytest.approx((10.0, 20.0, -30.0))
    assert back.GetSpacing() == pytest.approx((0.7, 0.8, 2.5))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), a % 2)


@pytest.mark.parametrize("suffix", [".nii", ".mha", ".mhd", ".nrrd"])
def test_formats_round_trip(tmp_path, suffix):
    """Every supported file type round-trips array and geometry through write_volume/read_volume."""
    a = _ramp()
    g = lps_geometry(a.shape)
    vol = read_volume(write_volume(tmp_path / f"v{suffix}", a, g), dtype=None)
    np.testing.assert_array_equal(vol.array, a)
    assert vol.geometry.spacing == pytest.approx(g.spacing) and vol.geometry.origin == pytest.approx(g.origin)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_flipped_mask_lines_up(tmp_path):
    """A mask stored with its x axis flipped (same physical grid) lines up voxel for voxel."""
    a = _ramp()
    mask = (a % 7 == 0).astype(np.uint8)
    sp, org = (0.7, 0.8, 2.5), (10.0, 20.0, -30.0)
    img = _write_sitk(tmp_path / "ct.nii.gz", a, sp, org, LPS)
    nx = a.shape[2]
    flipped_origin = (org[0] + (nx - 1) * sp[0], org[1], org[2])
    m = _write_sitk(tmp_path / "m.nii.gz", mask[:, :, ::-1].copy(), sp, flipped_origin, (-1, 0, 0, 0, 1, 0, 0, 0, 1))
    case = read_case(img, m)
    np.testing.assert_array_equal(case.mask, mask)


def test_permuted_mask_lines_up(tmp_path):
    """A mask stored with x and y swapped (direction permuted accordingly) lines up voxel for voxel."""
    a = _ramp((4, 5, 6))
    mask = (a % 5 == 1).astype(np.uint8)
    sp, org = (0.7, 0.8, 2.5), (1.0, 2.0, 3.0)
    img = _write_sitk(tmp_path / "ct.nii.gz", a, sp, org, LPS)
    m = _write_sitk(tmp_path / "m.nii.gz", np.ascontiguousarray(mask.transpose(0, 2, 1)), (sp[1], sp[0], sp[2]),
                    org, (0, 1, 0, 1, 0, 0, 0, 0, 1))
    case = read_case(img, m)
    np.testing.assert_array_equal(case.mask, mask)


@pytest.mark.parametrize("field,kwargs", [
    ("size", {"shape": (4, 5, 7)}),
    ("spacing", {"spacing": (0.7, 0.9, 2.5)}),
    ("origin", {"origin": (1.0, 2.5, 3.0)}),
])
def test_mismatched_mask_names_both_files_and_field(tmp_path, field, kwargs):
    """A mask on another grid is refused naming both files, the field and both values."""
    a = _ramp()
    img = _write_sitk(tmp_path / "ct.nii.gz", a, (0.7, 0.8, 2.5), (1.0, 2.0, 3.0), LPS)
    shape = kwargs.get("shape", a.shape)
    m = _write_sitk(tmp_path / "m.nii.gz", np.zeros(shape, np.uint8), kwargs.get("spacing", (0.7, 0.8, 2.5)),
                    kwargs.get("origin", (1.0, 2.0, 3.0)), LPS)
    with pytest.raises(VolumeError) as e:
        read_case(img, m)
    msg = str(e.value)
    assert "ct.nii.gz" in msg and "m.nii.gz" in msg and f"{field} is" in msg


def test_mismatched_direction_refused(tmp_path):
    """A mask whose direction is rotated relative to the image is refused, naming 'direction'."""
    a = _ramp()
    img = _write_sitk(tmp_path / "ct.nii.gz", a, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), LPS)
    c, s = np.cos(0.2), np.sin(0.2)
    m = _write_sitk(tmp_path / "m.nii.gz", np.zeros_like(a, np.uint8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                    (c, -s, 0, s, c, 0, 0, 0, 1))
    with pytest.raises(VolumeError, match="direction is"):
        read_case(img, m)


def _mha_header(path: Path, **fields) -> Path:
    base = {"ObjectType": "Image", "NDims": "3", "DimSize": "4 4 4", "ElementSpacing": "1 1 1",
            "ElementType": "MET_SHORT"}
    base.update(fields)
    base["ElementDataFile"] = "missing.raw"  # MetaIO reads fields up to this one
    path.write_text("".join(f"{k} = {v}\n" for k, v in base.items()))
    return path


@pytest.mark.parametrize("fields,match", [
    ({"NDims": "2", "DimSize": "4 4", "ElementSpacing": "1 1"}, "dimension is 2; expected 3"),
    ({"ElementNumberOfChannels": "3"}, "3 components per voxel; expected 1"),
    ({"ElementSpacing": "1 0 1"}, r"spacing \(1, 0, 1\)|spacing .*expected three finite values"),
    ({"ElementSpacing": "1 -2 1"}, "expected three finite values > 0"),
    ({"DimSize": "200000 200000 200000"}, "voxels on this machine"),
])
def test_absurd_headers_refused_before_pixels(tmp_path, fields, match):
    """Headers that can't be a CT volume are refused from the header alone (the pixel file is absent)."""
    path = _mha_header(tmp_path / "bad.mhd", **fields)
    with pytest.raises(VolumeError, match=match) as e:
        read_header(path)
    assert "bad.mhd" in str(e.value)


def test_nan_intensities_refused(tmp_path):
    """A float CT with NaN voxels is refused, naming the file and the count."""
    a = np.zeros((3, 4, 5), np.float32)
    a[1, 2, 3] = np.nan
    a[2, 0, 0] = np.inf
    path = write_volume(tmp_path / "nan.mha", a, lps_geometry(a.shape))  # ITK reads NIfTI NaN as 0
    with pytest.raises(VolumeError, match=r"nan.mha: 2 voxels are NaN or Inf"):
        read_volume(path)


def test_missing_and_unsupported_files(tmp_path):
    """A missing path and an unknown suffix get their own messages."""
    with pytest.raises(VolumeError, match="no such file"):
        read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(VolumeError, match="unsupported file type"):
        read_volume(tmp_path / "x.txt")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(VolumeError, match="broken.nii.gz: unreadable"):
        read_volume(tmp_path / "broken.nii.gz")


def test_float_mask_refused(tmp_path):
    """A mask stored as floats is refused: a label map must be integer."""
    a = _ramp()
    g = lps_geometry(a.shape)
    img = write_volume(tmp_path / "ct.nii.gz", a, g)
    m = write_volume(tmp_path / "m.nii.gz", np.zeros(a.shape, np.float32), g)
    with pytest.raises(VolumeError, match="expected an integer label map"):
        read_case(img, m)


def test_dicom_series_reads(tmp_path):
    """A DICOM series folder written in the fixture reads with its pixels, spacing and origin."""
    a = (_ramp((5, 6, 7)) - 20).astype(np.int16)
    write_dicom_series(tmp_path / "series", a, (0.5, 0.6, 2.0), (-10.0, -20.0, 30.0))
    vol = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(vol.array, a)
    assert vol.geometry.spacing == pytest.approx((0.5, 0.6, 2.0))
    assert vol.geometry.origin == pytest.approx((-10.0, -20.0, 30.0))


def test_labels_parse_and_select():
    """Label specs expand to values; binarize keeps only those (default: nonzero)."""
    assert parse_labels("25-27,30") == (25, 26, 27, 30)
    assert parse_labels(None) == ()
    with pytest.raises(ValueError, match="'7-3'"):
        parse_labels("1,7-3")
    m = np.array([[0, 1, 25, 26, 51]])
    np.testing.assert_array_equal(binarize(m, ()), [[0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(binarize(m, parse_labels("25-50")), [[0, 0, 1, 1, 0]])


def test_real_totalsegmentator_ct_reads(totalseg):
    """The shared real CT reads canonically with its TotalSegmentator vertebrae (labels 25-50)."""
    case = read_case(totalseg / "example_ct.nii.gz", totalseg / "example_seg_fast_force_split.nii.gz",
                     parse_labels("25-50"))
    assert case.source.orientation == "RAS" and case.geometry.orientation == "LPS"
    assert case.image.shape == (112, 101, 122)
    assert 10_000 < case.mask.sum() < 50_000
    assert np.median(case.image[case.mask.astype(bool)]) > 150  # vertebrae are bone
    assert isinstance(case.geometry, Geometry)


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("signs", list(itertools.product([1, -1], repeat=3)))
def test_canonical_reorientation_equals_itk_dicomorient(perm, signs):
    """Our one-copy NumPy reorientation and orientation codes equal ITK's for all 48 axis orders and flips."""
    from patchstore.io.geometry import canonical_array, canonical_geometry
    d = np.zeros((3, 3))
    for j, i in enumerate(perm):
        d[i, j] = signs[j]
    c, s = np.cos(0.05), np.sin(0.05)
    d = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ d  # slightly oblique
    a = np.arange(120, dtype=np.int16).reshape(4, 5, 6)
    image = _sitk_image(a, (0.5, 0.7, 2.0), (1.0, 2.0, 3.0), tuple(d.ravel()))
    ref = sitk.DICOMOrient(image, "LPS")
    g = canonical_geometry(Geometry.of(image), Path("x"))
    np.testing.assert_array_equal(canonical_array(sitk.GetArrayViewFromImage(image), Geometry.of(image), Path("x")),
                                  sitk.GetArrayFromImage(ref))
    assert g.size == ref.GetSize() and g.spacing == pytest.approx(ref.GetSpacing())
    assert g.origin == pytest.approx(ref.GetOrigin()) and g.direction == pytest.approx(ref.GetDirection())
    itk_code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    assert Geometry.of(image).orientation == itk_code and g.orientation == "LPS"
