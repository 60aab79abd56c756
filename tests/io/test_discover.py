"""Input discovery: Decathlon folders (with or without _0000) and image,mask CSVs."""

from __future__ import annotations

import numpy as np
import pytest

from patchstore.io.discover import DiscoveryError, discover
from patchstore.io.volume import write_volume
from tests.builders import lps_geometry


def _touch_volume(path):
    a = np.zeros((2, 3, 4), np.int16)
    return write_volume(path, a, lps_geometry(a.shape))


def test_decathlon_folder_with_and_without_channel_suffix(tmp_path):
    """imagesTr/a_0000 and imagesTr/b pair with labelsTr/a and labelsTr/b."""
    _touch_volume(tmp_path / "imagesTr" / "a_0000.nii.gz")
    _touch_volume(tmp_path / "imagesTr" / "b.mha")
    _touch_volume(tmp_path / "labelsTr" / "a.nii.gz")
    _touch_volume(tmp_path / "labelsTr" / "b.nrrd")
    cases = discover(tmp_path)
    assert [(c.case_id, c.image.name, c.mask.name) for c in cases] == [
        ("a", "a_0000.nii.gz", "a.nii.gz"), ("b", "b.mha", "b.nrrd")]


def test_missing_label_is_named(tmp_path):
    """An image without a label file is refused, naming the case."""
    _touch_volume(tmp_path / "imagesTr" / "a_0000.nii.gz")
    _touch_volume(tmp_path / "imagesTr" / "lonely_0000.nii.gz")
    _touch_volume(tmp_path / "labelsTr" / "a.nii.gz")
    with pytest.raises(DiscoveryError, match="no label file for case.*lonely"):
        discover(tmp_path)


def test_folder_without_layout_is_refused(tmp_path):
    """A folder that is neither layout says what it expected."""
    with pytest.raises(DiscoveryError, match="imagesTr/ \\+ labelsTr/ or a CSV"):
        discover(tmp_path)


def test_csv_paths_relative_to_csv(tmp_path):
    """CSV rows resolve relative to the CSV's folder; a missing file names the line and column."""
    _touch_volume(tmp_path / "ct" / "x.nii.gz")
    _touch_volume(tmp_path / "seg" / "x.nii.gz")
    csv = tmp_path / "cases.csv"
    csv.write_text("image,mask\nct/x.nii.gz,seg/x.nii.gz\n")
    [case] = discover(csv)
    assert case.case_id == "x" and case.mask == tmp_path / "seg" / "x.nii.gz"
    csv.write_text("image,mask\nct/x.nii.gz,seg/y.nii.gz\n")
    with pytest.raises(DiscoveryError, match="line 2: mask 'seg/y.nii.gz' does not exist"):
        discover(csv)
    csv.write_text("img,seg\nct/x.nii.gz,seg/x.nii.gz\n")
    with pytest.raises(DiscoveryError, match="expected a header with 'image' and 'mask'"):
        discover(csv)


def test_dicom_series_folder_as_a_case(tmp_path):
    """A DICOM series sub-folder of imagesTr/ pairs with its label file and reads on the mask's grid."""
    from patchstore.io.volume import read_case, read_volume
    from tests.builders import write_dicom_series
    a = (np.arange(5 * 6 * 7).reshape(5, 6, 7) % 300).astype(np.int16)
    (tmp_path / "imagesTr").mkdir()
    write_dicom_series(tmp_path / "imagesTr" / "ct7", a, (0.5, 0.6, 2.0), (-10.0, -20.0, 30.0))
    image = read_volume(tmp_path / "imagesTr" / "ct7")
    (tmp_path / "labelsTr").mkdir()
    write_volume(tmp_path / "labelsTr" / "ct7.nii.gz", (a > 150).astype(np.uint8), image.geometry)
    [case] = discover(tmp_path)
    assert case.case_id == "ct7" and case.image.is_dir()
    pair = read_case(case.image, case.mask)
    np.testing.assert_array_equal(pair.mask, (a > 150).astype(np.uint8))
