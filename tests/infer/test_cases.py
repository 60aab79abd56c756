"""infer.cases: which CTs `infer volume` segments, their references, and where the outputs go."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from infer.cases import find_cases, plan_outputs, writes_folder
from patchstore.io.discover import DiscoveryError
from patchstore.io.volume import write_volume
from tests.builders import lps_geometry, write_dicom_series


def _ct(path: Path) -> Path:
    return write_volume(path, np.zeros((2, 8, 8), np.int16), lps_geometry((2, 8, 8)))


def test_folder_of_volumes_with_and_without_channel_suffix(tmp_path):
    """imagesTr/a_0000.nii.gz and imagesTr/b.nrrd are cases a and b; a dataset folder means its imagesTr/."""
    _ct(tmp_path / "data" / "imagesTr" / "a_0000.nii.gz")
    _ct(tmp_path / "data" / "imagesTr" / "b.nrrd")
    (tmp_path / "data" / "imagesTr" / "notes.txt").write_text("not a volume")
    for given in (tmp_path / "data" / "imagesTr", tmp_path / "data"):
        assert [c.case_id for c in find_cases([given])] == ["a", "b"]


def test_single_file_and_dicom_folder_are_one_case_each(tmp_path):
    """A CT file is one case named after it (less _0000); a DICOM series folder is one case named after the folder."""
    ct = _ct(tmp_path / "ct_0000.mha")
    write_dicom_series(tmp_path / "series", np.zeros((2, 8, 8), np.int16), (0.5, 0.5, 2.0), (0.0, 0.0, 0.0))
    cases = find_cases([ct, tmp_path / "series"])
    assert [(c.case_id, c.image) for c in cases] == [("ct", ct), ("series", tmp_path / "series")]


def test_csv_with_optional_mask_and_case_columns(tmp_path):
    """A CSV's mask column becomes the references; a case column names the outputs."""
    _ct(tmp_path / "x.nii.gz")
    _ct(tmp_path / "y.nii.gz")
    (tmp_path / "only.csv").write_text("image\nx.nii.gz\n")
    (tmp_path / "full.csv").write_text("image,mask,case\nx.nii.gz,y.nii.gz,first\n")
    assert find_cases([tmp_path / "only.csv"])[0].reference is None
    case = find_cases([tmp_path / "full.csv"])[0]
    assert (case.case_id, case.reference) == ("first", tmp_path / "y.nii.gz")


def test_csv_without_image_column_names_file_and_columns(tmp_path):
    """A CSV lacking 'image' is refused naming the file, the columns found and the one expected."""
    (tmp_path / "bad.csv").write_text("ct,mask\na,b\n")
    with pytest.raises(DiscoveryError, match=r"bad\.csv: columns \['ct', 'mask'\]; expected a header with 'image'"):
        find_cases([tmp_path / "bad.csv"])


def test_reference_folder_pairs_by_case_name_and_names_the_missing(tmp_path):
    """--reference labelsTr/ gives each case labelsTr/<case>.nii.gz; a missing one is refused by name."""
    _ct(tmp_path / "imagesTr" / "a_0000.nii.gz")
    _ct(tmp_path / "imagesTr" / "b_0000.nii.gz")
    _ct(tmp_path / "labelsTr" / "a.nii.gz")
    with pytest.raises(DiscoveryError, match="no reference mask for case.s. b;"):
        find_cases([tmp_path / "imagesTr"], [tmp_path / "labelsTr"])
    _ct(tmp_path / "labelsTr" / "b.nii.gz")
    cases = find_cases([tmp_path / "imagesTr"], [tmp_path])  # a folder holding labelsTr/ means that
    assert [c.reference.name for c in cases] == ["a.nii.gz", "b.nii.gz"]


def test_reference_count_must_match_single_cts(tmp_path):
    """Two CT files with one reference file is refused with both counts."""
    cts = [_ct(tmp_path / f"c{i}.nii.gz") for i in range(2)]
    with pytest.raises(DiscoveryError, match=r"1 --reference for 2 case\(s\)"):
        find_cases(cts, [cts[0]])


def test_second_channel_and_duplicate_names_are_refused(tmp_path):
    """An _0001 channel, and two inputs with one case name, are refused naming the files."""
    _ct(tmp_path / "multi" / "a_0000.nii.gz")
    _ct(tmp_path / "multi" / "a_0001.nii.gz")
    with pytest.raises(DiscoveryError, match=r"a_0001\.nii\.gz: a second input channel"):
        find_cases([tmp_path / "multi"])
    one, two = _ct(tmp_path / "p" / "a.nii.gz"), _ct(tmp_path / "q" / "a_0000.nii.gz")
    with pytest.raises(DiscoveryError, match="both are case 'a'"):
        find_cases([one, two])


def test_outputs_are_a_file_for_one_ct_and_a_folder_otherwise(tmp_path):
    """One CT writes -o itself; a folder input writes <case>.nii.gz and <case>_prob.nii.gz into folders."""
    ct = _ct(tmp_path / "in" / "a_0000.nii.gz")
    assert not writes_folder([ct], tmp_path / "pred.nii.gz")
    assert writes_folder([tmp_path / "in"], tmp_path / "out")
    cases = find_cases([tmp_path / "in"])
    plan = plan_outputs(cases, tmp_path / "out", True, tmp_path / "prob", tmp_path / "png")[0]
    assert (plan.mask.name, plan.probability.name, plan.summary.name) == ("a.nii.gz", "a_prob.nii.gz",
                                                                         "a_summary.png")
    with pytest.raises(DiscoveryError, match="a file name, but 1 case.s. from folders or CSVs write a folder"):
        plan_outputs(cases, tmp_path / "pred.nii.gz", True)
