"""Tests for train.cli through click's CliRunner: `train run` and `train evaluate`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from patchstore.files import file_sha256
from patchstore.stages.preprocess import to_unit
from patchstore.store.manifest import MANIFEST
from patchstore.store.shard import ShardReader
from tests.builders import make_shards
from train.checkpoint import load_checkpoint, save_checkpoint
from train.cli import main
from train.config import TrainConfig
from train.loop import new_model


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Noise patches: an untrained model's calls are independent of the labels (a mixed confusion matrix)."""
    return make_shards(tmp_path_factory.mktemp("shards"), volumes=2, per_volume=24, learnable=False)


def all_patches(shards) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, 32, 32) float32 network input and (N,) labels, read with plain h5py in manifest order."""
    x, y = [], []
    for name in ("case0.h5", "case1.h5"):
        with ShardReader(shards / name) as r:
            x.append(to_unit(r.patches[:])[:, None])
            y.append(r.labels[:])
    return np.concatenate(x), np.concatenate(y)


def mixed_checkpoint(path, build: dict, shards) -> None:
    """An untrained model whose fc3 bias is shifted so that it calls about half the patches vertebra."""
    cfg = TrainConfig(init="kaiming", seed=3)
    model = new_model(cfg, torch.device("cpu")).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(all_patches(shards)[0]))
        model.fc3.bias[1] -= (logits[:, 1] - logits[:, 0]).median() + 1e-4
    save_checkpoint(path, {"model": model.state_dict(), "epoch": 0, "config": cfg.to_dict(), "build": build})


def test_help_lists_the_options():
    """`train run --help` documents the paper's optimisation options."""
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0
    for option in ("--val-fraction", "--split-by", "--lr-step", "--weight-decay", "--init", "--max-steps",
                   "--resume", "--amp", "--channels-last", "--compile", "--tf32", "--deterministic", "--quiet"):
        assert option in result.output


def test_run_then_resume(shards, tmp_path):
    """`train run` writes a run folder; `--resume` with --epochs 2 continues it with the run's options."""
    out = tmp_path / "run"
    args = ["run", str(shards), "-o", str(out), "--epochs", "1", "--batch-size", "8", "--max-steps", "2",
            "--init", "kaiming", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (out / "best.pt").exists() and (out / "curves.png").exists()
    result = CliRunner().invoke(main, ["run", str(shards), "--resume", str(out), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["batch_size"] == 8 and ckpt["config"]["init"] == "kaiming"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["epochs"] == 2 and config["resumed_after_epochs"] == [1]


def test_numerics_switches_reach_the_run_config(shards, tmp_path):
    """--tf32 and --deterministic are recorded in the run's config (and so fixed for its resumes)."""
    out = tmp_path / "run"
    args = ["run", str(shards), "-o", str(out), "--epochs", "1", "--batch-size", "8", "--max-steps", "1",
            "--tf32", "--deterministic", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["tf32"] is True and config["deterministic"] is True


def test_evaluate_metrics_equal_hand_computed(shards, tmp_path):
    """`train evaluate --json` gives the confusion counts and ratios computed by hand from the predictions."""
    ckpt = tmp_path / "model.pt"
    with ShardReader(shards / "case0.h5") as r:
        build = r.attrs["build"]
    mixed_checkpoint(ckpt, build, shards)
    model = new_model(TrainConfig(), torch.device("cpu")).eval()
    model.load_state_dict(load_checkpoint(ckpt)["model"])
    x, t = all_patches(shards)
    with torch.no_grad():
        p = model(torch.from_numpy(x)).argmax(1).numpy()
    tp, fp = int(((p == 1) & (t == 1)).sum()), int(((p == 1) & (t == 0)).sum())
    tn, fn = int(((p == 0) & (t == 0)).sum()), int(((p == 0) & (t == 1)).sum())
    assert min(tp, fp, tn, fn) > 0  # a real mix, so every ratio is exercised

    result = CliRunner().invoke(main, ["evaluate", str(ckpt), str(shards), "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["confusion"] == [[tn, fp], [fn, tp]] and r["patches"] == len(t)
    assert r["PRE"] == pytest.approx(tp / (tp + fp)) and r["SPE"] == pytest.approx(tn / (tn + fp))
    assert r["ACC"] == pytest.approx((tp + tn) / len(t)) and r["SEN"] == pytest.approx(tp / (tp + fn))
    assert r["F-score"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_evaluate_refuses_other_preprocessing(shards, tmp_path):
    """Shards windowed with another hu_max than the checkpoint's are refused, naming the field."""
    ckpt = tmp_path / "model.pt"
    with ShardReader(shards / "case0.h5") as r:
        mixed_checkpoint(ckpt, {**r.attrs["build"], "hu_max": 2000.0}, shards)
    result = CliRunner().invoke(main, ["evaluate", str(ckpt), str(shards)])
    assert result.exit_code == 1
    assert "hu_max=1500.0 in the shards, 2000.0 in checkpoint" in result.output


def test_evaluate_accepts_other_sampling(shards, tmp_path):
    """Shards differing only in sampling (e.g. built with --no-rus) evaluate, with a note."""
    ckpt = tmp_path / "model.pt"
    with ShardReader(shards / "case0.h5") as r:
        mixed_checkpoint(ckpt, {**r.attrs["build"], "rus": False, "stride": 8}, shards)
    result = CliRunner().invoke(main, ["evaluate", str(ckpt), str(shards)])
    assert result.exit_code == 0, result.output
    assert "['rus', 'stride']" in result.output and "PRE" in result.output


def test_run_reports_bad_shards_without_traceback(tmp_path):
    """A folder without manifest.json gives a one-line error, not a traceback."""
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["run", str(tmp_path / "empty"), "-o", str(tmp_path / "run")])
    assert result.exit_code == 1 and "no manifest.json" in result.output


def test_paper_flag_restores_the_papers_training(shards, tmp_path):
    """Default: Kaiming start and a split by volume; --paper: N(0, 0.01) and a random patch split,
    unless an option says otherwise."""
    common = ["--epochs", "1", "--batch-size", "8", "--max-steps", "1", "--quiet"]
    for extra, init, split in (([], "kaiming", "volume"), (["--paper"], "paper", "patch"),
                               (["--paper", "--split-by", "volume"], "paper", "volume")):
        out = tmp_path / f"run{len(extra)}"
        result = CliRunner().invoke(main, ["run", str(shards), "-o", str(out), *common, *extra])
        assert result.exit_code == 0, result.output
        config = load_checkpoint(out / "last.pt")["config"]
        assert (config["init"], config["split_by"]) == (init, split)


@pytest.mark.slow
def test_run_and_evaluate_from_a_url(shards, tmp_path, serve):
    """`train run URL` (a real HTTP server) trains exactly as on the folder itself and records the URL;
    `train evaluate CKPT URL` afterwards reads the cache: the server is asked for the manifest only."""
    server = serve(shards)
    cache = tmp_path / "cache"
    common = ["--epochs", "1", "--batch-size", "8", "--max-steps", "2", "--init", "kaiming", "--quiet"]
    result = CliRunner().invoke(main, ["run", server.url, "-o", str(tmp_path / "url"), "--cache", str(cache), *common])
    assert result.exit_code == 0, result.output
    assert sorted(name for name, _ in server.asked()) == ["case0.h5", "case1.h5"]
    config = json.loads((tmp_path / "url" / "config.json").read_text())
    assert config["shards"] == [server.url] and config["manifest_sha256"] == file_sha256(shards / MANIFEST)
    result = CliRunner().invoke(main, ["run", str(shards), "-o", str(tmp_path / "local"), *common])
    assert result.exit_code == 0, result.output
    from_url, local = (load_checkpoint(tmp_path / run / "last.pt")["model"] for run in ("url", "local"))
    assert all(torch.equal(from_url[k], local[k]) for k in local)
    server.requests.clear()
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "url" / "last.pt"), server.url, "--cache", str(cache),
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["patches"] == 24 + 40 and server.requests == [("GET", MANIFEST, None)]


def test_run_refuses_an_altered_served_shard(shards, tmp_path, serve):
    """A served shard altered after its manifest was written stops `train run` in one line naming it,
    before any training: no checkpoint, and nothing of that file in the cache."""
    served = shutil.copytree(shards, tmp_path / "served")
    data = bytearray((served / "case1.h5").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (served / "case1.h5").write_bytes(data)
    url = serve(served).url
    result = CliRunner().invoke(main, ["run", url, "-o", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"),
                                       "--epochs", "1", "--max-steps", "2", "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"Error: {url}/case1.h5: SHA-256 is" in result.output and "refused" in result.output
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "cache" / "sets").exists()
    kept = [p.name for p in (tmp_path / "cache" / "objects").rglob("*")]
    assert file_sha256(served / "case1.h5") not in kept and file_sha256(shards / "case1.h5") not in kept
