"""`patchstore check`: one line per case, every problem, non-zero exit on any."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from patchstore.cli import main
from patchstore.io.check import check_dataset, intensity_problem
from patchstore.io.volume import read_volume, write_volume
from tests.builders import lps_geometry


def test_check_reports_each_case(build_dataset):
    """Each case gets size, spacing, orientation, label values and vertebra counts; exit 0 when clean."""
    result = CliRunner().invoke(main, ["check", str(build_dataset), "--paper"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("case0: size 76x72x5, spacing 0.8x0.7x2.5 mm, LPS, labels {0,1}")
    assert "axial slices with vertebra 5/5" in lines[0]
    n = int(lines[0].split("vertebra patches ")[1].split(" at ")[0])
    assert n > 0 and "at 0.75 mm pixels (76x72), label-rule DSC (majority)" in lines[0]
    assert lines[-1].startswith("3 case(s), 0 problem(s), ")
    default = CliRunner().invoke(main, ["check", str(build_dataset)]).output.splitlines()[0]
    assert "at 1.41 mm pixels (43x36), label-rule DSC (centre) 1.000 native, 0.980 at 1.41 mm" in default


def test_check_flags_vertebrae_too_small_for_the_patch(tiny_dataset):
    """Vertebrae that never fill half a 32x32 patch are a problem that says to resample."""
    result = CliRunner().invoke(main, ["check", str(tiny_dataset), "--paper"])
    assert result.exit_code == 1
    assert "vertebra patches 0 at" in result.output.splitlines()[0]
    assert "the majority label rule finds no vertebra patch of 32x32 pixels at 0.75 mm" in result.output
    for fix in (["--patch", "16"], ["--label-rule", "centre"], ["--pixel-mm", "0.3"]):
        assert CliRunner().invoke(main, ["check", str(tiny_dataset), "--paper", *fix]).exit_code == 0


def test_check_flags_problems_and_exits_nonzero(tiny_dataset):
    """An empty mask and a mismatched grid are both reported; exit status 1."""
    img = np.zeros((6, 40, 44), np.uint8)
    write_volume(tiny_dataset / "labelsTr" / "case1.nii.gz", img, lps_geometry(img.shape))
    write_volume(tiny_dataset / "labelsTr" / "case2.nii.gz", img, lps_geometry(img.shape, spacing=(1, 1, 1)))
    result = CliRunner().invoke(main, ["check", str(tiny_dataset), "--paper"])
    assert result.exit_code == 1
    assert "case1.nii.gz: no vertebra voxels" in result.output
    assert "case2: FAILED" in result.output and "spacing is (1, 1, 1) in the mask" in result.output
    assert result.output.splitlines()[-1].startswith("3 case(s), 3 problem(s)")  # and case0's are too small


def test_check_wrong_labels_named(tiny_dataset):
    """Selecting labels that don't occur names the selection and the values found."""
    [report, *_] = check_dataset(tiny_dataset, (25, 26))
    assert report.problems and "none of the selected labels 25,26 occurs; label values found: 0,1" in report.problems[0]


def test_check_real_ct_vertebrae(tmp_path, totalseg):
    """The real 3 mm TotalSegmentator CT: few majority patches and a warning that names a pixel size
    lifting the label rule's DSC; at that pixel size the warning is gone."""
    csv = tmp_path / "real.csv"
    csv.write_text(f"image,mask\n{totalseg / 'example_ct.nii.gz'},{totalseg / 'example_seg_fast_force_split.nii.gz'}\n")
    result = CliRunner().invoke(main, ["check", str(csv), "--labels", "25-50", "--paper"])
    line = result.output.splitlines()[0]
    assert "size 122x101x112, spacing 3x3x3 mm, RAS" in line
    voxels = int(line.split("vertebra voxels ")[1].split(", axial")[0].replace(",", ""))
    assert voxels > 10_000
    assert result.exit_code == 0, result.output
    assert int(line.split("vertebra patches ")[1].split(" at")[0].replace(",", "")) < 100  # vertebrae ~13 px wide
    warning = result.output.splitlines()[1]
    assert "WARNING" in warning and "label rule reaches DSC 0.0" in warning
    pixel = warning.split("--pixel-mm ")[1].split(" ")[0]
    fine = CliRunner().invoke(main, ["check", str(csv), "--labels", "25-50", "--paper", "--pixel-mm", pixel])
    assert fine.exit_code == 0 and "0 warning(s)" in fine.output
    dsc = float(fine.output.splitlines()[0].rsplit(f"{pixel} mm pixels", 1)[0].rsplit(", ", 1)[1].split()[0])
    assert dsc >= 0.85


def test_intensity_problem_tells_hounsfield_units_from_other_scales():
    """CT in HU passes, also a crop inside the body (no air); values with the rescale intercept lost
    (air at 0, soft tissue near 1,064) a normalised image (no bone above 100) and values never below 0 do not, each
    saying what it found and what was expected."""
    rng = np.random.default_rng(0)
    body = rng.normal(40, 20, (8, 48, 48))
    body[:, 20:28, 20:28] = 700
    ct = body.copy()
    ct[:, :4] = -1000  # air above the patient
    assert intensity_problem(ct) is None
    assert intensity_problem(body - 150) is None  # a crop: fat and soft tissue, no air
    stored = ct + 1024
    found = intensity_problem(stored)
    assert found and f"intensity range [{stored.min():g}, {stored.max():g}]" in found and "rescale" in found
    unit = (ct - ct.min()) / (ct.max() - ct.min())
    assert "expected CT in Hounsfield units" in intensity_problem(unit)
    assert "rescale" in intensity_problem(np.abs(body) * 3)  # nothing below 0 (an MR-like range): not CT


def test_check_flags_a_volume_with_its_rescale_intercept_lost(tiny_dataset):
    """`patchstore check` names the image and its intensity range; exit status 1."""
    image = tiny_dataset / "imagesTr" / "case0_0000.nii.gz"
    vol = read_volume(image)
    write_volume(image, (vol.array + 1024).astype(np.int16), vol.geometry)
    result = CliRunner().invoke(main, ["check", str(tiny_dataset), "--paper"])
    assert result.exit_code == 1 and f"{image}: intensity range [" in result.output and "rescale" in result.output
