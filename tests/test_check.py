"""`patchstore check`: one line per case, every problem, non-zero exit on any."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from patchstore.check import check_dataset
from patchstore.cli import main
from patchstore.volume import write_volume
from tests.conftest import lps_geometry


def test_check_reports_each_case(tiny_dataset):
    """Each case gets size, spacing, orientation, label values and vertebra counts; exit 0 when clean."""
    result = CliRunner().invoke(main, ["check", str(tiny_dataset)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("case0: size 44x40x6, spacing 0.8x0.7x2.5 mm, LPS, labels {0,1}")
    assert "axial slices with vertebra 6/6" in lines[0]
    assert lines[-1] == "3 case(s), 0 problem(s)"


def test_check_flags_problems_and_exits_nonzero(tiny_dataset):
    """An empty mask and a mismatched grid are both reported; exit status 1."""
    img = np.zeros((6, 40, 44), np.uint8)
    write_volume(tiny_dataset / "labelsTr" / "case1.nii.gz", img, lps_geometry(img.shape))
    write_volume(tiny_dataset / "labelsTr" / "case2.nii.gz", img, lps_geometry(img.shape, spacing=(1, 1, 1)))
    result = CliRunner().invoke(main, ["check", str(tiny_dataset)])
    assert result.exit_code == 1
    assert "case1.nii.gz: no vertebra voxels" in result.output
    assert "case2: FAILED" in result.output and "spacing is (1, 1, 1) in the mask" in result.output
    assert result.output.splitlines()[-1] == "3 case(s), 2 problem(s)"


def test_check_wrong_labels_named(tiny_dataset):
    """Selecting labels that don't occur names the selection and the values found."""
    [report, *_] = check_dataset(tiny_dataset, (25, 26))
    assert report.problems and "none of the selected labels 25,26 occurs; label values found: 0,1" in report.problems[0]


def test_check_real_ct_vertebrae(tmp_path, totalseg):
    """On the real TotalSegmentator CT, --labels 25-50 reports its vertebrae."""
    csv = tmp_path / "real.csv"
    csv.write_text(f"image,mask\n{totalseg / 'example_ct.nii.gz'},{totalseg / 'example_seg_fast_force_split.nii.gz'}\n")
    result = CliRunner().invoke(main, ["check", str(csv), "--labels", "25-50"])
    assert result.exit_code == 0, result.output
    line = result.output.splitlines()[0]
    assert "size 122x101x112, spacing 3x3x3 mm, RAS" in line
    voxels = int(line.split("vertebra voxels ")[1].split(", axial")[0].replace(",", ""))
    assert voxels > 10_000
