"""Tests for train.checkpoint: plain-dict checkpoints, safe loading, atomic saving."""

from __future__ import annotations

import json

import pytest
import torch

from patchstore.store.manifest import MANIFEST
from tests.builders import make_shards
from train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from train.config import TrainConfig
from train.loop import train
from train.model import OPConvNet


class Smuggled:
    """A Python object that must not come back from a checkpoint."""


def minimal(**extra) -> dict:
    return {"model": OPConvNet().state_dict(), "epoch": 1, "config": TrainConfig().to_dict(), "build": {}, **extra}


def test_checkpoint_of_a_run_loads_with_weights_only(tmp_path):
    """last.pt is a plain dict (torch.load weights_only=True) with everything a resume and inference need."""
    shards = make_shards(tmp_path / "shards", volumes=2, per_volume=20)
    train(shards, tmp_path / "run", TrainConfig(epochs=1, batch_size=8, max_steps=1, quiet=True))
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "config", "build", "best_val_loss"} <= ckpt.keys()
    assert ckpt["build"] == json.loads((shards / MANIFEST).read_text())["build"]
    assert ckpt["config"]["batch_size"] == 8 and ckpt["epoch"] == 1
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor)


def test_pickled_object_is_refused(tmp_path):
    """A checkpoint holding a pickled Python object is refused, naming the file and the object."""
    path = tmp_path / "evil.pt"
    torch.save(minimal(extra=Smuggled()), path)
    with pytest.raises(CheckpointError, match=r"evil\.pt: holds pickled Python objects such as .*Smuggled"):
        load_checkpoint(path)


def test_not_a_checkpoint_is_refused(tmp_path):
    """A tensor file without the checkpoint keys, or a non-torch file, is refused with the file name."""
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"partial\.pt: keys \['epoch', 'config', 'build'\] are missing"):
        load_checkpoint(tmp_path / "partial.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"text\.pt"):
        load_checkpoint(tmp_path / "text.pt")


def test_failed_save_keeps_the_old_checkpoint(tmp_path):
    """A save that fails midway leaves the previous file intact and no temporary file behind."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, minimal())
    with pytest.raises(Exception):
        save_checkpoint(path, minimal(bad=lambda: None))  # lambdas can't be pickled
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
