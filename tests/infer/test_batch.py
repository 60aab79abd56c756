"""`infer volume` over folders and CSVs: one mask per case, resume, metrics.csv / summary.json, pictures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from matplotlib.image import imread

from infer.cli import main
from infer.postprocess import refine_to_bone, smooth_along_z
from patchstore.io.volume import read_volume, write_volume
from tests.builders import lps_geometry, write_checkpoint
from train.model import OPConvNet

SHAPE = (1, 30, 26)  # one slice: dense inference is the slow part


def _strict(text: str):
    """json.loads that refuses NaN and Infinity."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def _case(root: Path, name: str, rng, bone: bool = True) -> tuple[Path, Path]:
    """imagesTr/<name>_0000.nii.gz (soft tissue with a bone block) and labelsTr/<name>.nii.gz (the block)."""
    hu = rng.normal(40, 30, SHAPE).astype(np.int16)
    hu[:, 8:20, 6:18] = 800 if bone else 40  # no bone: every patch is zero after windowing (skipped, fast)
    ref = np.zeros(SHAPE, np.uint8)
    ref[:, 8:20, 6:18] = 1
    g = lps_geometry(SHAPE)
    return (write_volume(root / "imagesTr" / f"{name}_0000.nii.gz", hu, g),
            write_volume(root / "labelsTr" / f"{name}.nii.gz", ref, g))


@pytest.fixture
def dataset(tmp_path, rng) -> Path:
    for name in ("c0", "c1"):
        _case(tmp_path / "data", name, rng)
    return tmp_path / "data"


def test_folder_in_folder_out_with_metrics_and_resume(tmp_path, dataset):
    """A dataset folder writes <case>.nii.gz, metrics.csv (cases, mean, std, n) and summary.json; run again,
    every case is skipped, said so, and still scored."""
    args = ["volume", str(dataset), "-m", str(write_checkpoint(tmp_path / "m.pt")), "-o", str(tmp_path / "out"),
            "--reference", str(dataset / "labelsTr"), "--overlay", str(tmp_path / "png"), "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["c0.nii.gz", "c1.nii.gz", "metrics.csv",
                                                                    "summary.json"]
    rows = list(csv.DictReader((tmp_path / "out" / "metrics.csv").open()))
    assert [r["case"] for r in rows] == ["c0", "c1", "mean", "std", "n"]
    assert imread(tmp_path / "png" / "c0_summary.png").shape[1] == 1000
    assert len(list((tmp_path / "png" / "c1").glob("slice_*.png"))) >= 1
    written = (tmp_path / "out" / "c0.nii.gz").stat().st_mtime_ns
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "c0: skipped" in again.output and "2 case(s), 0 segmented, 2 skipped" in again.output
    assert (tmp_path / "out" / "c0.nii.gz").stat().st_mtime_ns == written
    summary = _strict((tmp_path / "out" / "summary.json").read_text())
    assert [e["case"] for e in summary["metric_per_case"]] == ["c0", "c1"] and summary["n"]["DSC"] == 2


def test_csv_mask_column_scores_and_empty_prediction_is_na(tmp_path, rng):
    """A CSV's mask column gives references; a model that predicts nothing gets PRE and HD95 as n/a with the
    reason in the table, null in the JSON (which any parser reads)."""
    image, mask = _case(tmp_path, "c0", rng, bone=False)
    (tmp_path / "cases.csv").write_text(f"image,mask\n{image.relative_to(tmp_path)},{mask.relative_to(tmp_path)}\n")
    state = OPConvNet().state_dict()
    state["fc3.bias"] = torch.tensor([1e4, 0.0])  # background always wins: an empty mask
    model = write_checkpoint(tmp_path / "empty.pt", model=state)
    args = ["volume", str(tmp_path / "cases.csv"), "-m", str(model), "-o", str(tmp_path / "out"), "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "the predicted mask is empty" in res.output
    assert "PRE                  n/a    (nothing was predicted)" in res.output
    assert "HD95                 n/a    (the prediction is empty: no surface to measure from)" in res.output
    res = CliRunner().invoke(main, [*args, "--json", "--overwrite"])
    entry = _strict(res.stdout)[str(image)]
    assert entry["metrics"]["PRE"] is None and entry["undefined"]["PRE"] == "nothing was predicted"
    assert entry["metrics"]["DSC"] == 0.0


def test_single_ct_with_reference_keeps_a_file_output_and_writes_no_summary(tmp_path, rng):
    """One CT and -o pred.nii.gz: the mask file only (no metrics.csv beside it), the metrics printed, and the
    progress bar (stderr is no terminal here) as whole lines, without carriage returns."""
    image, mask = _case(tmp_path / "d", "c0", rng)
    res = CliRunner().invoke(main, ["volume", str(image), "-m", str(write_checkpoint(tmp_path / "m.pt")),
                                    "-o", str(tmp_path / "out" / "pred.nii.gz"), "--reference", str(mask)])
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pred.nii.gz"]
    assert "c0 vs " in res.output and "label-rule DSC" in res.output
    assert "1/1 c0: 100%" in res.stderr and "\r" not in res.stderr


def test_evaluate_json_has_null_and_the_reason_for_undefined_metrics(tmp_path):
    """`infer evaluate --json` of an empty prediction: HD95 null (strict JSON), the reason under 'undefined'."""
    g = lps_geometry(SHAPE)
    ref = np.zeros(SHAPE, np.uint8)
    ref[:, 5:9, 5:9] = 1
    pred = write_volume(tmp_path / "pred.nii.gz", np.zeros(SHAPE, np.uint8), g)
    res = CliRunner().invoke(main, ["evaluate", str(pred), str(write_volume(tmp_path / "ref.nii.gz", ref, g)), "--json"])
    report = _strict(res.output)
    assert report["HD95"] is None and report["undefined"]["HD95"].startswith("the prediction is empty")


def test_tf32_on_the_cpu_is_refused_before_any_output(tmp_path, rng):
    """--tf32 with --device cpu: exit 2 naming the switch and the device; nothing written."""
    image, _ = _case(tmp_path / "d", "c0", rng)
    res = CliRunner().invoke(main, ["volume", str(image), "-m", str(write_checkpoint(tmp_path / "m.pt")),
                                    "-o", str(tmp_path / "out" / "pred.nii.gz"), "--device", "cpu", "--tf32"])
    assert res.exit_code == 2 and "--tf32 is for GPUs only; the device is cpu" in res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_the_cpu_runs_and_warns_where_the_cpu_emulates_it(tmp_path, rng, monkeypatch, native):
    """--bf16 --device cpu segments (both engines); a warning only where /proc/cpuinfo lacks bf16."""
    monkeypatch.setattr("train.model.cpu_has_native_bf16", lambda: native)
    image, _ = _case(tmp_path / "d", "c0", rng)
    for engine in ("dense", "cascade"):
        out = tmp_path / f"{engine}.nii.gz"
        res = CliRunner().invoke(main, ["volume", str(image), "-m", str(write_checkpoint(tmp_path / "m.pt")),
                                        "-o", str(out), "--device", "cpu", "--bf16", "--engine", engine, "--quiet"])
        assert res.exit_code == 0, res.output
        assert read_volume(out).array.shape == read_volume(image).array.shape
        assert ("no bfloat16 instructions" in res.stderr) is not native


def test_refine_keeps_the_bone_of_what_the_network_draws(tmp_path, rng):
    """A network that calls every pixel vertebra (fc3's bias): --refine none keeps the whole slice
    (one component, its corners opened), the default --refine window keeps the pixels at or above the checkpoint's
    100 HU floor (the bone block, and noise pixels above the floor), --refine 900 (above the block's 800 HU) none, and no --refine is
    window; a bad value is refused before any output."""
    image, mask = _case(tmp_path / "d", "c0", rng)
    model = OPConvNet()
    torch.manual_seed(0)
    state = model.state_dict()
    state["fc3.bias"] = torch.tensor([-1e4, 1e4])
    ckpt = write_checkpoint(tmp_path / "m.pt", model=state)
    hu = np.asarray(read_volume(image).array)
    masks = {}
    for refine in ("none", "window", "900", "default"):
        out = tmp_path / f"{refine}.nii.gz"
        choice = [] if refine == "default" else ["--refine", refine]
        res = CliRunner().invoke(main, ["volume", str(image), "-m", str(ckpt), "-o", str(out), "--postprocess", "paper",
                                        *choice, "--quiet"])
        assert res.exit_code == 0, res.output
        masks[refine] = read_volume(out, dtype=None).array.astype(bool)
    assert masks["none"].mean() > 0.9 and masks["none"][hu >= 100].all()  # the opening rounds the corners
    block = hu >= 700
    assert block.sum() == 144 and masks["window"][block].all()
    assert masks["window"].sum() < 144 + 0.05 * hu.size  # and a few soft-tissue pixels >= 100 HU (noise SD 30)
    np.testing.assert_array_equal(masks["window"], refine_to_bone(masks["none"], hu, 100.0))
    assert not masks["900"].any()
    np.testing.assert_array_equal(masks["default"], masks["window"])
    res = CliRunner().invoke(main, ["volume", str(image), "-m", str(ckpt), "-o", str(tmp_path / "x" / "p.nii.gz"),
                                    "--refine", "bone"])
    assert res.exit_code == 2 and "--refine" in res.output and "'bone'" in res.output
    assert not (tmp_path / "x").exists()


def test_a_ct_not_in_hounsfield_units_is_segmented_with_a_warning(tmp_path, rng):
    """Stored values with the rescale intercept lost (+1024): `infer volume` warns, naming the file
    and the range, and still writes the mask."""
    image, _ = _case(tmp_path / "d", "c0", rng)
    vol = read_volume(image)
    shifted = write_volume(tmp_path / "shifted.nii.gz", (vol.array + 1024).astype(np.int16), vol.geometry)
    res = CliRunner().invoke(main, ["volume", str(shifted), "-m", str(write_checkpoint(tmp_path / "m.pt")),
                                    "-o", str(tmp_path / "pred.nii.gz"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert f"warning: {shifted}: intensity range [" in res.stderr and "rescale" in res.stderr
    assert (tmp_path / "pred.nii.gz").exists()


def test_midline_option_reaches_the_spine_filter_and_a_bad_one_is_refused(tmp_path, rng, monkeypatch):
    """--midline-mm gives the spine filter its band (default 50 mm, none for no band); a value that
    is not a positive distance stops before any output."""
    import infer.predict
    image, _ = _case(tmp_path / "d", "c0", rng)
    ckpt = write_checkpoint(tmp_path / "m.pt")
    seen = []
    real = infer.predict.postprocess
    monkeypatch.setattr(infer.predict, "postprocess", lambda *a, **k: (seen.append(k["midline_mm"]), real(*a, **k))[1])
    for i, choice in enumerate(([], ["--midline-mm", "30"], ["--midline-mm", "none"])):
        res = CliRunner().invoke(main, ["volume", str(image), "-m", str(ckpt), "-o", str(tmp_path / f"{i}.nii.gz"),
                                        *choice, "--quiet"])
        assert res.exit_code == 0, res.output
    assert seen == [50.0, 30.0, None]
    for bad in ("-5", "wide"):
        res = CliRunner().invoke(main, ["volume", str(image), "-m", str(ckpt), "-o", str(tmp_path / "x" / "p.nii.gz"),
                                        "--midline-mm", bad])
        assert res.exit_code == 2 and "--midline-mm" in res.output and repr(bad) in res.output
    assert not (tmp_path / "x").exists()


def test_z_sigma_smooths_the_written_probability_and_a_bad_one_is_refused(tmp_path):
    """--z-sigma-mm: the probability written (and thresholded) is the per-slice one smoothed along z
    by a Gaussian of that many mm (default 2); none keeps every slice's own; a value that is not a
    distance stops before any output."""
    shape = (5, 30, 26)
    hu = np.full(shape, 40, np.int16)
    for z in range(shape[0]):
        hu[z, 8:20, 6:18] = 200 + 250 * z  # a block brighter in every slice: per-slice probabilities differ
    image = write_volume(tmp_path / "ct.nii.gz", hu, lps_geometry(shape))  # 2.5 mm slices
    ckpt = write_checkpoint(tmp_path / "m.pt")
    prob = {}
    for name, choice in (("default", []), ("none", ["--z-sigma-mm", "none"]), ("5", ["--z-sigma-mm", "5"])):
        res = CliRunner().invoke(main, ["volume", str(image), "-m", str(ckpt), "-o", str(tmp_path / name / "m.nii.gz"),
                                        "--probabilities", str(tmp_path / name / "p.nii.gz"), *choice, "--quiet"])
        assert res.exit_code == 0, res.output
        prob[name] = read_volume(tmp_path / name / "p.nii.gz").array
    per_slice = prob["none"]
    assert np.abs(np.diff(per_slice, axis=0)).max() > 1e-3
    np.testing.assert_allclose(prob["default"], smooth_along_z(per_slice, 2.5, 2.0), atol=1e-6)
    np.testing.assert_allclose(prob["5"], smooth_along_z(per_slice, 2.5, 5.0), atol=1e-6)
    assert np.abs(prob["default"] - per_slice).max() > 1e-4
    for bad in ("-1", "thick"):
        res = CliRunner().invoke(main, ["volume", str(image), "-m", str(ckpt), "-o", str(tmp_path / "x" / "m.nii.gz"),
                                        "--z-sigma-mm", bad])
        assert res.exit_code == 2 and "--z-sigma-mm" in res.output and repr(bad) in res.output
    assert not (tmp_path / "x").exists()
