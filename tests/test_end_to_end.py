"""The whole pipeline on a tiny phantom: phantom -> build -> train -> infer -> metrics."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from infer.cli import main as infer_main
from patchstore.cli import main as patchstore_main
from train.cli import main as train_main


@pytest.mark.slow
def test_phantom_build_train_infer_reaches_a_modest_dsc(tmp_path):
    """Two short epochs on three phantoms segment an unseen phantom with DSC well above chance."""
    r = CliRunner()

    def ok(cli, args):
        res = r.invoke(cli, args)
        assert res.exit_code == 0, res.output
        return res.output

    ok(patchstore_main, ["phantom", str(tmp_path / "train"), "--cases", "3", "--size", "96", "--slices", "24"])
    ok(patchstore_main, ["phantom", str(tmp_path / "test"), "--cases", "1", "--seed", "1000", "--size", "96",
                         "--slices", "24"])
    ok(patchstore_main, ["build", str(tmp_path / "train"), "-o", str(tmp_path / "shards"), "--angles", "-10,10",
                         "--stride", "6", "--translations", "0", "--quiet"])
    ok(patchstore_main, ["verify", str(tmp_path / "shards")])
    ok(train_main, ["run", str(tmp_path / "shards"), "-o", str(tmp_path / "run"), "--epochs", "2",
                    "--init", "kaiming", "--quiet"])
    out = ok(infer_main, ["volume", str(tmp_path / "test" / "imagesTr" / "phantom_000_0000.nii.gz"),
                          "-m", str(tmp_path / "run" / "best.pt"), "-o", str(tmp_path / "pred.nii.gz"),
                          "--reference", str(tmp_path / "test" / "labelsTr" / "phantom_000.nii.gz"),
                          "--json", "--quiet"])
    metrics = next(iter(json.loads(out).values()))["metrics"]
    assert metrics["DSC"] > 0.4, metrics
    assert (tmp_path / "run" / "curves.png").exists() and (tmp_path / "run" / "confusion.json").exists()
