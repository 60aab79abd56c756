"""`infer mine`: sampling of mistakes, their patches, and a shard folder train accepts with the build's."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from infer.cli import main
from infer.mine import cut_patches, find_mistakes
from patchstore.build import build
from patchstore.config import BuildConfig
from patchstore.stages.pipeline import build_volume
from patchstore.stages.resample import plane_grid
from patchstore.store.manifest import read_manifest
from patchstore.store.verify import verify
from train.checkpoint import save_checkpoint
from train.data import load_shards
from train.model import OPConvNet


def test_mistakes_half_each_and_the_rest_to_the_other_kind():
    """Up to per_volume: half false positives, half false negatives; a short kind leaves its quota."""
    pred = np.zeros((1, 40, 40), bool)
    label = np.zeros((1, 40, 40), bool)
    pred[0, 10:30, 10:30] = True  # 400 predicted
    label[0, 10:30, 10:12] = True  # 40 of them right
    label[0, 30:32, 10:20] = True  # 20 missed
    m = find_mistakes(pred, label, 8, 100, np.random.default_rng(0))
    assert m.found == (360, 20)
    assert m.labels.tolist().count(1) == 20 and m.labels.tolist().count(0) == 80
    z, r, c = m.zrc.T
    assert np.all(pred[z, r, c] != label[z, r, c])
    assert np.all(label[z, r, c] == m.labels)


def test_mistakes_need_their_whole_patch_in_the_slice():
    pred = np.ones((1, 20, 20), bool)
    m = find_mistakes(pred, np.zeros_like(pred), 8, 10_000, np.random.default_rng(0))
    assert m.found == (13 * 13, 0)  # rows and columns 4..16: patch r-4 .. r+3 inside 0..19
    assert m.zrc[:, 1].min() == 4 and m.zrc[:, 1].max() == 16


def test_cut_patches_equal_the_builds_view0_patches():
    """A mined patch at a grid pixel is byte for byte the patch a build cuts there (view 0)."""
    rng = np.random.default_rng(3)
    hu = rng.normal(300, 400, (2, 70, 66)).astype(np.float32)
    mask = (rng.random(hu.shape) > 0.5).astype(np.uint8)
    cfg = BuildConfig.paper(patch=16, stride=6, angles=(), translations=0, rus=False, pixel_mm=0.5)
    built = build_volume(hu, mask, cfg, np.random.SeedSequence(0), spacing_yx=(0.7, 0.7))
    grid = plane_grid(hu.shape[1:], (0.7, 0.7), 0.5)
    pick = np.arange(0, len(built.labels), 17)
    zrc = built.origin[pick, :3].astype(np.int64) + [0, 8, 8]
    patches, origin = cut_patches(hu, grid, cfg, zrc)
    assert np.array_equal(patches, built.patches[pick]) and np.array_equal(origin, built.origin[pick])


@pytest.fixture
def built(build_dataset, tmp_path):
    cfg = BuildConfig.paper(angles=(), translations=0)
    build(build_dataset, tmp_path / "shards", cfg, quiet=True)
    torch.manual_seed(0)
    model = OPConvNet()
    save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "epoch": 1, "config": {}, "build": cfg.to_dict()})
    return tmp_path / "shards", tmp_path / "m.pt"


def test_cli_writes_a_verifiable_folder_that_trains_with_the_build(build_dataset, built, tmp_path):
    """The mined folder verifies, records its provenance, and loads together with the build's shards,
    each mined patch under its volume's key."""
    shards, ckpt = built
    res = CliRunner().invoke(main, ["mine", str(build_dataset), "-m", str(ckpt), "-o", str(tmp_path / "mined"),
                                    "--per-volume", "50", "--quiet"])
    assert res.exit_code == 0, res.output
    assert verify(tmp_path / "mined") == []
    mined = read_manifest(tmp_path / "mined")
    assert mined["build"] == read_manifest(shards)["build"] and mined["totals"]["patches"] <= 150
    with h5py.File(tmp_path / "mined" / "case0.h5") as f:
        prov = json.loads(f.attrs["mined"])
        assert len(prov["checkpoint_sha256"]) == 64 and prov["per_volume"] == 50
    both = load_shards([shards, tmp_path / "mined"], torch.device("cpu"), log=lambda s: None)
    alone = load_shards(shards, torch.device("cpu"), log=lambda s: None)
    assert len(both) == len(alone) + mined["totals"]["patches"] and both.volumes == alone.volumes
    again = CliRunner().invoke(main, ["mine", str(build_dataset), "-m", str(ckpt), "-o", str(tmp_path / "mined")])
    assert again.exit_code == 1 and "holds a shard set already" in again.output


def test_folders_preprocessed_otherwise_are_not_trained_together(build_dataset, built, tmp_path):
    shards, _ = built
    build(build_dataset, tmp_path / "other", BuildConfig.paper(angles=(), translations=0, sigma=1.5), quiet=True)
    from patchstore.store.shard import ShardError
    with pytest.raises(ShardError, match=r"sigma=1.5 there, 0.8 in .*shards\); shard folders trained on together"):
        load_shards([shards, tmp_path / "other"], torch.device("cpu"), log=lambda s: None)


@pytest.mark.slow
def test_a_round_of_mining_lowers_the_false_positives_on_an_unseen_phantom(tmp_path):
    """Trained on two contrast phantoms, mined, trained again on build + mined: the second model
    calls far fewer background pixels of an unseen contrast phantom vertebra (raw, threshold 0.5)."""
    from infer.mine import mine
    from infer.predict import load_model, vertebra_probability
    from patchstore.io.volume import read_volume
    from patchstore.phantom.generate import write_dataset
    from train.config import TrainConfig
    from train.loop import train

    kind = {"size": 96, "slices": 16, "contrast": "mixed", "fov": "body"}
    write_dataset(tmp_path / "train", cases=2, seed=0, **kind)
    write_dataset(tmp_path / "test", cases=1, seed=1000, **kind)
    build(tmp_path / "train", tmp_path / "shards", BuildConfig(stride=6), quiet=True)
    cfg = TrainConfig(epochs=2, batch_size=64, seed=0, quiet=True)
    train(tmp_path / "shards", tmp_path / "first", cfg)
    mine(tmp_path / "train", tmp_path / "first" / "best.pt", tmp_path / "mined", per_volume=2000, log=lambda s: None)
    train([tmp_path / "shards", tmp_path / "mined"], tmp_path / "second", cfg)
    image = read_volume(tmp_path / "test" / "imagesTr" / "phantom_000_0000.nii.gz")
    ref = read_volume(tmp_path / "test" / "labelsTr" / "phantom_000.nii.gz", dtype=None).array > 0
    false_positives = {}
    for run in ("first", "second"):
        model, build_cfg = load_model(tmp_path / run / "best.pt", torch.device("cpu"))
        prob, _ = vertebra_probability(model, build_cfg, image.array, spacing_yx=image.geometry.spacing_zyx[1:])
        pred = prob > 0.5
        false_positives[run] = int((pred & ~ref).sum())
        assert (pred & ref).sum() > 0.5 * ref.sum(), run  # both still find most of the vertebrae
    assert false_positives["second"] < 0.5 * false_positives["first"], false_positives
