"""Fault class 4: degenerate data is an error or a loud warning, never a quiet success.

    one class in the shards          train run: DataError, exit 1 (metrics would all read 1.0)
    one class on the training side   train run: DataError; on the validation side: a warning
    a volume without patches         build: a warning naming the case and why; all volumes: an error
    --patch larger than the slice    build: an error naming the file and both sizes
    --shard-mb below one patch       build: refused before anything is read or written
    part 1 of 2 merged alone         merge: refused naming the missing part; part folders flagged
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import patchstore.build as build_module
from patchstore.build import BuildError, build
from patchstore.cli import main
from patchstore.config import BuildConfig
from patchstore.io.volume import write_volume
from patchstore.store.manifest import read_manifest
from patchstore.store.merge import MergeError, merge
from patchstore.store.shardset import ShardSet
from tests.builders import lps_geometry, make_shards, write_checkpoint
from train.cli import main as train_main
from train.config import TrainConfig
from train.data import DataError, check_classes, load_shards
from train.loop import evaluate_checkpoint, train

CFG = BuildConfig.paper(angles=(), translations=0)
QUICK = TrainConfig(epochs=1, batch_size=8, max_steps=1, quiet=True, device="cpu")


@pytest.mark.parametrize("fraction, only", [(0.0, "background"), (1.0, "vertebra")])
def test_single_class_shards_stop_training(tmp_path, fraction, only):
    """Shards of one class are refused before the first step; no checkpoint is written."""
    shards = make_shards(tmp_path / "shards", volumes=2, per_volume=16, vertebra_fraction=fraction)
    with pytest.raises(DataError, match=rf"every patch is {only} \(48 patches.*expected both classes"):
        train(shards, tmp_path / "run", QUICK)
    assert not (tmp_path / "run" / "last.pt").exists()
    res = CliRunner().invoke(train_main, ["run", str(shards), "-o", str(tmp_path / "run2"), "--epochs", "1",
                                          "--max-steps", "1", "--quiet", "--device", "cpu"])
    assert res.exit_code == 1 and f"every patch is {only}" in res.output and "PRE" not in res.output


def test_single_class_training_side_refused_validation_side_warned(tmp_path):
    """A split whose training side holds one class is refused; one-class validation is a warning."""
    ps = load_shards(make_shards(tmp_path / "shards", volumes=2, per_volume=16), torch.device("cpu"),
                     log=lambda s: None)
    y = ps.y.numpy()
    background, vertebra = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    with pytest.raises(DataError, match=r"training side of the volume split holds only background"):
        check_classes(ps, {"by": "volume", "train": background, "val": vertebra}, ["shards"])
    mixed = np.sort(np.concatenate([background[2:], vertebra]))
    warned = check_classes(ps, {"by": "volume", "train": mixed, "val": background[:2]}, ["shards"])
    assert len(warned) == 1 and "validation patches are all background" in warned[0]


def test_evaluating_single_class_shards_warns(tmp_path):
    """`train evaluate` on one-class shards says that the other class's metrics are vacuous."""
    shards = make_shards(tmp_path / "shards", volumes=1, per_volume=16, vertebra_fraction=0.0)
    lines = []
    evaluate_checkpoint(write_checkpoint(tmp_path / "m.pt"), shards, "cpu", log=lines.append)
    assert any("every patch is background" in line and "reported as 1.0" in line for line in lines)


def _empty_mask_case(dataset, name="case1"):
    mask = np.zeros((5, 72, 76), np.uint8)
    write_volume(dataset / "labelsTr" / f"{name}.nii.gz", mask, lps_geometry(mask.shape))


def test_volume_without_patches_warns_on_build_and_resume(build_dataset, tmp_path):
    """An empty mask builds a 0-patch shard with a warning naming the case and why, also when resumed."""
    _empty_mask_case(build_dataset)
    out = tmp_path / "out"
    result = build(build_dataset, out, CFG, quiet=True)
    assert result.warnings == ["case1: 0 patches (its mask has no vertebra patch, so RUS keeps nothing; "
                               f"candidates before RUS: background {_background(out):,}, vertebra 0)"]
    res = CliRunner().invoke(main, ["build", str(build_dataset), "-o", str(out), "--angles", "", "--translations",
                                    "0", "--quiet", "--paper"])
    assert res.exit_code == 0 and "warning: case1: 0 patches" in res.output and "already complete 3" in res.output


def _background(out) -> int:
    with h5py.File(out / "case1.h5") as f:
        return int(f.attrs["counts_before"][0])


def test_build_without_any_patch_is_an_error(build_dataset, tmp_path):
    """When no volume gives a patch, the build exits 1 (the manifest is still written, for resume)."""
    for i in range(3):
        _empty_mask_case(build_dataset, f"case{i}")
    with pytest.raises(BuildError, match=r"no volume gave a patch \(case0: 0 patches"):
        build(build_dataset, tmp_path / "out", CFG, quiet=True)


def test_patch_larger_than_the_slice_is_an_error(build_dataset, tmp_path):
    """--patch 1000 on 76x72 slices names the file and both sizes; no shard is written."""
    res = CliRunner().invoke(main, ["build", str(build_dataset), "-o", str(tmp_path / "out"), "--patch", "1000",
                                    "--quiet", "--paper"])
    assert res.exit_code == 1, res.output
    assert "case0_0000.nii.gz: patch 1000 is larger than the axial slice (76x72 pixels); expected a patch of " \
           "at most 72 pixels" in res.output
    assert not list((tmp_path / "out").glob("*.h5"))
    res = CliRunner().invoke(main, ["check", str(build_dataset), "--patch", "1000", "--paper"])
    assert res.exit_code == 1 and "patch 1000 is larger than the axial slice (76x72 pixels at 0.75 mm)" in res.output


def test_shard_size_below_one_patch_is_refused_before_anything(build_dataset, tmp_path):
    """--shard-mb 0.0001 (one file per patch and many empty ones, before) is refused; nothing is created."""
    with pytest.raises(BuildError, match=r"'shard_mb' is 0.0001; one 32x32 uint8 patch alone is 0.001024 MB"):
        build(build_dataset, tmp_path / "out", BuildConfig.paper(angles=(), translations=0, shard_mb=0.0001), quiet=True)
    assert not (tmp_path / "out").exists()


def test_too_many_files_per_volume_refused_and_none_empty(build_dataset, tmp_path, monkeypatch):
    """A volume is never split into empty files, nor into more than MAX_FILES_PER_VOLUME."""
    small = BuildConfig.paper(angles=(), translations=0, shard_mb=0.0011)  # one patch per file
    result = build(build_dataset, tmp_path / "ok", small, quiet=True)
    assert all(e["patches"] >= 1 for e in result.manifest["shards"])
    monkeypatch.setattr(build_module, "MAX_FILES_PER_VOLUME", 4)
    with pytest.raises(BuildError, match=r"splits its \d+ patches into \d+ files; expected at most 4 per volume"):
        build(build_dataset, tmp_path / "many", small, quiet=True)


def test_merging_one_part_of_two_is_refused(build_dataset, tmp_path):
    """merge of part 1 of 2 alone (or twice) is refused naming the missing part; part folders are flagged."""
    for k in (1, 2):
        build(build_dataset, tmp_path / f"part{k}", CFG, part=(k, 2), quiet=True)
    with pytest.raises(MergeError, match=r"parts \[1\] of 2 given; part\(s\) \[2\] are missing"):
        merge([tmp_path / "part1"], tmp_path / "m1")
    with pytest.raises(MergeError, match=r"part 1/2 is given 2 times"):
        merge([tmp_path / "part1", tmp_path / "part1"], tmp_path / "m2")
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()
    assert "part" not in merge([tmp_path / "part1", tmp_path / "part2"], tmp_path / "whole")
    for k in (1, 2):
        if read_manifest(tmp_path / f"part{k}")["shards"]:  # the hash split may leave a part empty
            assert any(f"holds part {k} of 2 of a build" in w for w in ShardSet.open(tmp_path / f"part{k}").warnings)
    res = CliRunner().invoke(main, ["verify", str(tmp_path / "part2")])
    assert "note: part 2 of 2 of a build" in res.output
