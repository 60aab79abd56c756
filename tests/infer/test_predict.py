"""`infer volume` / `infer evaluate`: preprocessing from the checkpoint, geometry, engines, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from click.testing import CliRunner

from infer.cli import main
from infer.predict import body_mask, load_model, vertebra_probability
from patchstore.config import BuildConfig
from patchstore.io.volume import Geometry, read_volume, write_volume
from tests.builders import RAS, lps_geometry, write_dicom_series
from train.checkpoint import save_checkpoint
from train.model import OPConvNet

BUILD = BuildConfig.paper(angles=(), translations=0)


def _save_random_model(path: Path, build: BuildConfig, background_bias: float = 0.0) -> Path:
    """A checkpoint of a randomly initialised network with a bias towards 'vertebra' on bright input
    (``background_bias`` added to the background logit)."""
    torch.manual_seed(0)
    model = OPConvNet()
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight)
    with torch.no_grad():
        model.fc3.bias[0] += background_bias
    save_checkpoint(path, {"model": model.state_dict(), "epoch": 1, "config": {}, "build": build.to_dict(),
                           "pixel_mm_range": [0.6, 0.9]})
    return path


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return _save_random_model(tmp_path / "model.pt", BUILD)


@pytest.fixture(params=["native", "0.35 mm"])
def any_checkpoint(request, tmp_path) -> Path:
    """The network at native pixels, and the same network classifying at 0.35 mm pixels."""
    build = BUILD if request.param == "native" else BuildConfig.paper(angles=(), translations=0, pixel_mm=0.35)
    return _save_random_model(tmp_path / "model.pt", build)


def _ct(rng, shape=(3, 30, 26)) -> np.ndarray:
    hu = rng.normal(40, 30, shape).astype(np.int16)
    hu[:, 8:20, 6:18] = 800
    return hu


def _ras_geometry(shape_zyx) -> Geometry:
    z, y, x = shape_zyx
    return Geometry((x, y, z), (0.7, 0.8, 2.0), (12.0, -30.0, 4.0), RAS)


def test_mask_keeps_the_input_geometry_and_orientation(tmp_path, checkpoint, rng):
    """A RAS input gives a RAS mask with identical size, spacing, origin and direction."""
    ct = write_volume(tmp_path / "ct.nii.gz", _ct(rng), _ras_geometry((3, 30, 26)))
    res = CliRunner().invoke(main, ["volume", str(ct), "-m", str(checkpoint), "-o", str(tmp_path / "pred.mha"),
                                    "--postprocess", "none", "--quiet"])
    assert res.exit_code == 0, res.output
    src, out = sitk.ReadImage(str(ct)), sitk.ReadImage(str(tmp_path / "pred.mha"))
    assert out.GetSize() == src.GetSize() and out.GetDirection() == pytest.approx(src.GetDirection())
    assert out.GetOrigin() == pytest.approx(src.GetOrigin()) and out.GetSpacing() == pytest.approx(src.GetSpacing())
    assert out.GetPixelID() == sitk.sitkUInt8


def test_flipped_input_gives_the_flipped_mask(tmp_path, any_checkpoint, rng):
    """The same anatomy stored LPS or RAS segments identically once both masks are read canonically."""
    hu = _ct(rng)
    lps = write_volume(tmp_path / "lps.nii.gz", hu, lps_geometry(hu.shape))
    canonical = read_volume(lps)
    ras_geom = Geometry(canonical.geometry.size, canonical.geometry.spacing,
                        tuple(np.array(canonical.geometry.origin)
                              + np.array([(canonical.geometry.size[0] - 1) * canonical.geometry.spacing[0],
                                          (canonical.geometry.size[1] - 1) * canonical.geometry.spacing[1], 0])),
                        RAS)
    write_volume(tmp_path / "ras.nii.gz", hu[:, ::-1, ::-1].copy(), ras_geom)
    r = CliRunner()
    for name in ("lps", "ras"):
        res = r.invoke(main, ["volume", str(tmp_path / f"{name}.nii.gz"), "-m", str(any_checkpoint),
                              "-o", str(tmp_path / f"{name}_pred.nii.gz"), "--postprocess", "none", "--quiet"])
        assert res.exit_code == 0, res.output
    a = read_volume(tmp_path / "lps_pred.nii.gz", dtype=None).array
    b = read_volume(tmp_path / "ras_pred.nii.gz", dtype=None).array
    np.testing.assert_array_equal(a, b)


def test_dicom_series_input(tmp_path, any_checkpoint, rng):
    """A DICOM series folder segments to a mask on its grid."""
    hu = _ct(rng, (3, 20, 24))
    write_dicom_series(tmp_path / "series", hu, (0.5, 0.6, 2.0), (-10.0, -20.0, 30.0))
    res = CliRunner().invoke(main, ["volume", str(tmp_path / "series"), "-m", str(any_checkpoint),
                                    "-o", str(tmp_path / "pred.nii.gz"), "--quiet"])
    assert res.exit_code == 0, res.output
    out = read_volume(tmp_path / "pred.nii.gz", dtype=None)
    assert out.array.shape == hu.shape and out.geometry.origin == pytest.approx((-10.0, -20.0, 30.0))


def test_engines_agree_and_skip_is_exact(checkpoint, rng):
    """Dense and patch engines, with and without the zero skip, give the same probabilities."""
    model, cfg = load_model(checkpoint, torch.device("cpu"))
    hu = np.zeros((2, 22, 60), np.int16)  # soft tissue: zero after windowing
    hu[:, :, :3] = 500  # a bone band: windows within 16 columns of it are nonzero
    hu[1, 5:15, 40:52] = 900
    ref, _ = vertebra_probability(model, cfg, hu, engine="patches", skip_zero=False)
    for engine in ("dense", "patches"):
        for skip in (True, False):
            p, skipped = vertebra_probability(model, cfg, hu, engine=engine, skip_zero=skip)
            np.testing.assert_allclose(p, ref, atol=1e-5)
            assert (skipped > 0) == skip


def test_metrics_against_reference_and_evaluate(tmp_path, checkpoint, rng):
    """--reference prints the metric table; `infer evaluate` reproduces the same DSC from the files."""
    hu = _ct(rng)
    g = lps_geometry(hu.shape)
    ct = write_volume(tmp_path / "ct.nii.gz", hu, g)
    ref = np.zeros(hu.shape, np.uint8)
    ref[:, 8:20, 6:18] = 30  # label value 30, selected with --labels 25-50
    ref_path = write_volume(tmp_path / "ref.nii.gz", ref, g)
    r = CliRunner()
    res = r.invoke(main, ["volume", str(ct), "-m", str(checkpoint), "-o", str(tmp_path / "pred.nii.gz"),
                          "--reference", str(ref_path), "--labels", "25-50", "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)[str(ct)]
    assert set(report["metrics"]) >= {"DSC", "JAC", "SEN", "PRE", "SPE", "ACC", "BF", "HD95", "ASSD", "F1_PRE_SEN_eq5"}
    assert report["label_rule_DSC"] == 0.0  # a 12x12 block never fills half a 32x32 patch
    ev = r.invoke(main, ["evaluate", str(tmp_path / "pred.nii.gz"), str(ref_path), "--labels", "25-50", "--json"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.output)["DSC"] == pytest.approx(report["metrics"]["DSC"])


def test_reference_on_another_grid_is_refused(tmp_path, checkpoint, rng):
    """A reference mask on another grid is refused naming both files and the field."""
    hu = _ct(rng)
    ct = write_volume(tmp_path / "ct.nii.gz", hu, lps_geometry(hu.shape))
    ref = write_volume(tmp_path / "ref.nii.gz", np.zeros(hu.shape, np.uint8), lps_geometry(hu.shape, spacing=(1, 1, 1)))
    res = CliRunner().invoke(main, ["volume", str(ct), "-m", str(checkpoint), "-o", str(tmp_path / "p.nii.gz"),
                                    "--reference", str(ref), "--quiet"])
    assert res.exit_code != 0 and "ref.nii.gz" in res.output and "spacing is" in res.output


def test_several_inputs_write_a_folder(tmp_path, checkpoint, rng):
    """Several CTs write <case>.nii.gz files (and probabilities) into the output folder."""
    paths = [write_volume(tmp_path / f"c{i}.nrrd", _ct(rng), lps_geometry((3, 30, 26))) for i in range(2)]
    res = CliRunner().invoke(main, ["volume", *map(str, paths), "-m", str(checkpoint), "-o", str(tmp_path / "out"),
                                    "--probabilities", str(tmp_path / "prob"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["c0.nii.gz", "c1.nii.gz"]
    prob = read_volume(tmp_path / "prob" / "c0_prob.nii.gz").array
    assert prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1


def test_checkpoint_without_build_refused(tmp_path):
    """A checkpoint lacking the build parameters is refused with the file named."""
    path = tmp_path / "bare.pt"
    torch.save({"model": OPConvNet().state_dict(), "epoch": 0, "config": {}}, path)
    with pytest.raises(ValueError, match="bare.pt"):
        load_model(path, torch.device("cpu"))


def test_body_mask_fills_the_body_and_drops_the_table():
    """The body mask is the largest component with its air holes filled; a thin table and noise go."""
    hu = np.full((2, 60, 60), -1000, np.int16)
    yy, xx = np.mgrid[:60, :60]
    disk = (yy - 28) ** 2 + (xx - 30) ** 2 < 20**2
    hu[:, disk] = 40
    hu[:, (yy - 28) ** 2 + (xx - 30) ** 2 < 6**2] = -900  # lung-like air inside
    hu[:, 55, 5:55] = 200  # table: one row thick, removed by the opening
    hu[1, 3, 3] = 1000  # a lone bright voxel
    m = body_mask(hu)
    assert np.array_equal(m[0], disk) and np.array_equal(m[1], disk)


def test_body_mask_option_skips_more_and_keeps_the_body(checkpoint):
    """body=True skips the pixels outside the body too; inside it, probabilities are unchanged."""
    model, cfg = load_model(checkpoint, torch.device("cpu"))
    hu = np.full((1, 40, 70), -1000, np.int16)
    hu[0, 5:35, 5:40] = 40
    hu[0, 10:20, 10:20] = 800  # bone inside the body
    hu[0, 15:18, 60:63] = 900  # a bright object outside it
    p0, s0 = vertebra_probability(model, cfg, hu, engine="dense")
    p1, s1 = vertebra_probability(model, cfg, hu, engine="dense", body=True)
    inside = body_mask(hu)
    assert s1 > s0
    np.testing.assert_allclose(p1[inside], p0[inside], atol=1e-5)
    assert not np.allclose(p1[~inside], p0[~inside], atol=1e-5)


def test_cli_body_mask_option(tmp_path, checkpoint):
    """`infer volume --body-mask` skips the air around the body, which the zero-skip alone can't."""
    hu = np.full((2, 40, 70), -1000, np.int16)
    hu[:, 5:35, 5:40] = 40
    hu[:, 10:20, 10:20] = 800
    hu[:, 15:18, 60:63] = 900  # outside the body: its patches are not all zero
    ct = write_volume(tmp_path / "ct.nii.gz", hu, lps_geometry(hu.shape))
    skipped = []
    for extra in ([], ["--body-mask"]):
        res = CliRunner().invoke(main, ["volume", str(ct), "-m", str(checkpoint), "-o", str(tmp_path / "p.nii.gz"),
                                        "--json", "--quiet", *extra])
        assert res.exit_code == 0, res.output
        skipped.append(json.loads(res.output)[str(ct)]["skipped_fraction"])
    assert skipped[1] > skipped[0]


def test_permuted_input_gives_the_permuted_mask(tmp_path, any_checkpoint, rng):
    """A volume stored with x and y swapped (and its anisotropic pixels swapped with them) segments
    to the same canonical mask."""
    hu = _ct(rng, (3, 30, 26))
    g = lps_geometry(hu.shape, spacing=(0.6, 0.8, 2.0))
    write_volume(tmp_path / "a.nii.gz", hu, g)
    swapped = Geometry((30, 26, 3), (0.8, 0.6, 2.0), g.origin, (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    write_volume(tmp_path / "b.nii.gz", hu.transpose(0, 2, 1).copy(), swapped)
    for name in ("a", "b"):
        res = CliRunner().invoke(main, ["volume", str(tmp_path / f"{name}.nii.gz"), "-m", str(any_checkpoint),
                                        "-o", str(tmp_path / f"{name}_pred.nii.gz"), "--postprocess", "none", "--quiet"])
        assert res.exit_code == 0, res.output
    a = read_volume(tmp_path / "a_pred.nii.gz", dtype=None).array
    b = read_volume(tmp_path / "b_pred.nii.gz", dtype=None).array
    np.testing.assert_array_equal(a, b)


def test_checkpoint_at_the_scans_own_pixel_size_is_bit_identical(tmp_path, checkpoint, rng):
    """pixel_mm equal to the scan's spacing classifies the native slices: the very same probabilities."""
    native_model, native_cfg = load_model(checkpoint, torch.device("cpu"))
    same = _save_random_model(tmp_path / "same.pt", BuildConfig.paper(angles=(), translations=0, pixel_mm=0.7))
    model, cfg = load_model(same, torch.device("cpu"))
    hu = _ct(rng)
    a, _ = vertebra_probability(native_model, native_cfg, hu, spacing_yx=(0.7, 0.7))
    b, _ = vertebra_probability(model, cfg, hu, spacing_yx=(0.7, 0.7))
    assert a.tobytes() == b.tobytes()


def test_resampling_checkpoint_classifies_on_its_grid_and_maps_back(tmp_path, rng):
    """At 0.35 mm the probability is the working grid's classification brought back bilinearly."""
    from patchstore.stages.preprocess import preprocess, to_unit
    from patchstore.stages.resample import plane_grid, to_grid_image, to_native
    fine = _save_random_model(tmp_path / "fine.pt", BuildConfig.paper(angles=(), translations=0, pixel_mm=0.35))
    model, cfg = load_model(fine, torch.device("cpu"))
    hu = _ct(rng)
    got, _ = vertebra_probability(model, cfg, hu, spacing_yx=(0.7, 0.7), engine="patches", skip_zero=False)
    grid = plane_grid(hu.shape[1:], (0.7, 0.7), 0.35)
    x = torch.from_numpy(to_unit(preprocess(to_grid_image(grid, hu.astype(np.float32)), cfg)))
    from infer.patch_engine import patch_logits
    with torch.no_grad():
        p = torch.softmax(patch_logits(model, x), dim=1)[:, 1].numpy()
    np.testing.assert_allclose(got, to_native(grid, p), atol=1e-5)
    with pytest.raises(ValueError, match="0.35 mm pixels; pass the slices' spacing_yx"):
        vertebra_probability(model, cfg, hu)


def _disc_phantom(pixel_mm: float, fov_mm: float = 40.0) -> np.ndarray:
    """(2, n, n) HU of the same anatomy at ``pixel_mm``: a bone ring around a soft core, blurred edges."""
    n = int(round(fov_mm / pixel_mm))
    c = (np.arange(n) + 0.5) * pixel_mm - fov_mm / 2
    r = np.hypot(*np.meshgrid(c, c, indexing="ij"))
    ring = 1 / (1 + np.exp((r - 9) / 0.6)) - 1 / (1 + np.exp((r - 5) / 0.6))
    return np.repeat((40 + 800 * ring)[None], 2, axis=0).astype(np.float32)


def test_phantom_at_two_pixel_sizes_gets_one_answer(tmp_path):
    """The same anatomy scanned at 0.5 and 0.8 mm pixels, both brought to 0.35 mm, gets nearly the same
    probabilities there, where a native-pixel model sees two different images."""
    from patchstore.stages.resample import plane_grid, to_grid_image
    fine = _save_random_model(tmp_path / "fine.pt", BuildConfig.paper(angles=(), translations=0, pixel_mm=0.35))
    model, cfg = load_model(fine, torch.device("cpu"))
    probs = []
    for pixel in (0.5, 0.8):
        hu = _disc_phantom(pixel)
        p, _ = vertebra_probability(model, cfg, hu, spacing_yx=(pixel, pixel))
        probs.append(to_grid_image(plane_grid(p.shape[1:], (pixel, pixel), 0.4), p))  # compare on one grid
    assert probs[0].shape == probs[1].shape == (2, 100, 100)
    assert np.abs(probs[0] - probs[1]).mean() < 0.05


def test_pixel_warning_and_empty_mask_warning(tmp_path):
    """A native-pixel model warns on a scan with 3 mm pixels, and that the mask it drew is empty."""
    checkpoint = _save_random_model(tmp_path / "m.pt", BUILD, background_bias=1e4)
    hu = np.full((2, 30, 30), -1000, np.int16)
    ct = write_volume(tmp_path / "ct.nii.gz", hu, lps_geometry(hu.shape, spacing=(3.0, 3.0, 3.0)))
    res = CliRunner().invoke(main, ["volume", str(ct), "-m", str(checkpoint), "-o", str(tmp_path / "p.nii.gz"),
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    assert "pixels of 3 x 3 mm, but the model was trained on 0.6-0.9 mm pixels" in res.output
    assert "the predicted mask is empty" in res.output
