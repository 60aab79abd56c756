"""Tests for train.loop: reproducible runs, exact resume (also after kill -9), the run folder."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.builders import make_shards
from train.checkpoint import CheckpointError, load_checkpoint
from train.config import TrainConfig
from train.loop import train

# tiny: 3 volumes (24 + 40 + 56 patches), 96 training patches, batches of 16 -> 6 steps an epoch
CFG = TrainConfig(epochs=3, batch_size=16, init="kaiming", lr=0.005, seed=7, quiet=True)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"), volumes=3, per_volume=24)


@pytest.fixture(scope="module")
def straight(shards, tmp_path_factory) -> Path:
    """A 3-epoch run without interruption, the reference of the resume tests."""
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    train(shards, run_dir, CFG)
    return run_dir


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in rows]


def test_seeded_runs_are_identical(shards, straight, tmp_path):
    """Two runs with the same seed end with identical weights and metrics on CPU."""
    train(shards, tmp_path / "again", CFG)
    assert same_weights(straight / "last.pt", tmp_path / "again" / "last.pt")
    assert metrics(straight) == metrics(tmp_path / "again")


def test_other_seed_gives_other_weights(shards, tmp_path):
    """The seed reaches initialisation and order: another seed, other weights."""
    short = dataclasses.replace(CFG, epochs=1, max_steps=2)
    train(shards, tmp_path / "a", short)
    train(shards, tmp_path / "b", dataclasses.replace(short, seed=8))
    assert not same_weights(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")


def test_resume_equals_uninterrupted_run(shards, straight, tmp_path):
    """2 epochs, then a resume to 3, gives the weights and metrics of a straight 3-epoch run."""
    run_dir = tmp_path / "resumed"
    train(shards, run_dir, dataclasses.replace(CFG, epochs=2))
    train(shards, run_dir, CFG, resume=True)
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 3
    assert same_weights(straight / "last.pt", run_dir / "last.pt")
    assert same_weights(straight / "best.pt", run_dir / "best.pt")
    assert metrics(straight) == metrics(run_dir)


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted_run(shards, straight, tmp_path):
    """A `train run` process killed with SIGKILL after its first checkpoint resumes to the same weights."""
    run_dir = tmp_path / "killed"
    args = [sys.executable, "-m", "train.cli", "run", str(shards), "-o", str(run_dir), "--epochs", "3",
            "--batch-size", "16", "--init", "kaiming", "--lr", "0.005", "--seed", "7", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (run_dir / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert load_checkpoint(run_dir / "last.pt")["epoch"] < 3
    train(shards, run_dir, CFG, resume=True)
    assert same_weights(straight / "last.pt", run_dir / "last.pt")
    assert metrics(straight) == metrics(run_dir)


def test_run_folder_contents(straight, shards):
    """config.json, split.json, metrics.jsonl (one line an epoch), figures, confusion and checkpoints."""
    names = {p.name for p in straight.iterdir()}
    assert names == {"config.json", "split.json", "metrics.jsonl", "curves.png", "confusion.json", "confusion.png",
                     "best.pt", "last.pt"}
    config = json.loads((straight / "config.json").read_text())
    assert config["config"] == CFG.to_dict() and len(config["manifest_sha256"]) == 64
    assert set(config["versions"]) == {"torch", "python", "patchstore"}
    rows = metrics(straight)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "PRE", "SPE", "ACC", "F-score", "SEN", "lr"} <= rows[0].keys()
    best = min(rows, key=lambda r: r["val_loss"])
    confusion = json.loads((straight / "confusion.json").read_text())
    assert confusion["epoch"] == best["epoch"] and confusion["val_loss"] == pytest.approx(best["val_loss"])
    split = json.loads((straight / "split.json").read_text())
    assert sum(split["val"]["counts"]) == sum(confusion["matrix"][0]) + sum(confusion["matrix"][1])


def test_resume_with_other_parameters_is_refused(shards, tmp_path):
    """Resuming with a different learning rate names the field instead of mixing two experiments."""
    short = dataclasses.replace(CFG, epochs=1, max_steps=1)
    train(shards, tmp_path / "run", short)
    with pytest.raises(CheckpointError, match=r"lr=0\.1 \(the run has 0\.005\)"):
        train(shards, tmp_path / "run", dataclasses.replace(short, epochs=2, lr=0.1), resume=True)


def test_resume_with_another_split_is_refused(shards, tmp_path):
    """A run whose split.json records another split (made by another version of the split) is not
    resumed onto the split made now: it would validate on patches it trained on."""
    short = dataclasses.replace(CFG, epochs=1, max_steps=1)
    train(shards, tmp_path / "run", short)
    record = json.loads((tmp_path / "run" / "split.json").read_text())
    record["val"], record["train"] = record["train"], record["val"]
    (tmp_path / "run" / "split.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"split\.json: the train side was \d+ patches, 1 volume\(s\); this "
                                              r"version of train splits the same shards into \d+ patches, 2 volume"):
        train(shards, tmp_path / "run", dataclasses.replace(short, epochs=2), resume=True)


def test_existing_run_is_not_overwritten(shards, tmp_path):
    """A second run into a folder holding last.pt is refused (resume it instead)."""
    short = dataclasses.replace(CFG, epochs=1, max_steps=1)
    train(shards, tmp_path / "run", short)
    with pytest.raises(FileExistsError, match="--resume"):
        train(shards, tmp_path / "run", short)


def test_max_steps_limits_the_epoch(shards, tmp_path):
    """max_steps=2 trains on exactly 2 batches an epoch."""
    train(shards, tmp_path / "run", dataclasses.replace(CFG, epochs=1, max_steps=2))
    assert metrics(tmp_path / "run")[0]["train_samples"] == 2 * CFG.batch_size


def test_bf16_is_refused_on_cpu(shards, tmp_path):
    """--amp bf16 is GPU only and says so."""
    with pytest.raises(ValueError, match="GPUs only"):
        train(shards, tmp_path / "run", dataclasses.replace(CFG, amp="bf16", device="cpu"))


def test_paper_init_and_patch_split(shards, tmp_path):
    """The paper's init and random patch split (with channels_last) run and record the patch indices."""
    cfg = TrainConfig(epochs=1, batch_size=16, max_steps=2, split_by="patch", channels_last=True, quiet=True)
    train(shards, tmp_path / "run", cfg)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["by"] == "patch" and len(split["val"]["indices"]) == split["val"]["patches"]
