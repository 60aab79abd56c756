"""Tests for train.data: loading shards onto the device, checks before loading, the split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from patchstore.files import write_json_atomic
from patchstore.stages.preprocess import to_unit
from patchstore.store.manifest import MANIFEST
from patchstore.store.shard import ShardError, ShardReader
from tests.builders import make_shards
from train import data
from train.data import DataError, batch_input, choose_volumes, load_shards, split_patches

CPU = torch.device("cpu")


def test_load_shards_holds_every_patch_in_manifest_order(tmp_path):
    """All patches and labels land in one tensor, shard after shard, with their volume index."""
    folder = make_shards(tmp_path, volumes=2, per_volume=40)
    ps = load_shards(folder, CPU, log=lambda s: None)
    with ShardReader(folder / "case0.h5") as r0, ShardReader(folder / "case1.h5") as r1:
        x = np.concatenate([r0.patches[:], r1.patches[:]])
        y = np.concatenate([r0.labels[:], r1.labels[:]])
    assert ps.x.dtype == torch.uint8 and ps.x.shape == (96, 32, 32)
    assert np.array_equal(ps.x.numpy(), x) and np.array_equal(ps.y.numpy(), y)
    assert ps.volume.tolist() == [0] * 40 + [1] * 56 and len(ps.volumes) == 2


def test_batch_input_equals_patchstore_to_unit(tmp_path):
    """The on-device conversion gives exactly patchstore.preprocess.to_unit, for uint8 and float16."""
    for dtype in ("uint8", "float16"):
        folder = make_shards(tmp_path / dtype, volumes=1, per_volume=20, dtype=dtype)
        ps = load_shards(folder, CPU, log=lambda s: None)
        idx = torch.tensor([3, 0, 7])
        got = batch_input(ps.x, idx)
        assert got.shape == (3, 1, 32, 32) and got.dtype == torch.float32
        assert np.array_equal(got[:, 0].numpy(), to_unit(ps.x.numpy()[[3, 0, 7]]))


def test_shard_with_other_build_is_refused(tmp_path):
    """A shard whose attrs 'build' differ from the manifest's is named with the differing fields."""
    folder = make_shards(tmp_path, volumes=2)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["build"]["sigma"] = 1.5
    manifest["build"]["stride"] = 8
    write_json_atomic(folder / MANIFEST, manifest)
    with pytest.raises(ShardError, match=r"case0\.h5.*sigma=0\.8 in the shard, 1\.5 in the manifest; "
                                         r"stride=12 in the shard, 8 in the manifest"):
        load_shards(folder, CPU, log=lambda s: None)


def test_truncated_shard_is_refused_before_loading(tmp_path):
    """A shard whose size differs from the manifest's is refused, naming the file."""
    folder = make_shards(tmp_path, volumes=2)
    with open(folder / "case1.h5", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ShardError, match=r"case1\.h5: 1,000 bytes; the manifest says"):
        load_shards(folder, CPU, log=lambda s: None)


def test_verify_option_runs_patchstore_verify(tmp_path):
    """full_verify reports an altered shard (same size, other bytes) that the size check misses."""
    folder = make_shards(tmp_path, volumes=2)
    raw = bytearray((folder / "case0.h5").read_bytes())
    raw[-100] ^= 0xFF
    (folder / "case0.h5").write_bytes(bytes(raw))
    load_shards(folder, CPU, log=lambda s: None)  # sizes agree: loads
    with pytest.raises(ShardError, match=r"(?s)patchstore verify.*case0\.h5: altered"):
        load_shards(folder, CPU, full_verify=True, log=lambda s: None)


def test_memory_check_refuses_with_sizes(tmp_path, monkeypatch):
    """When the patches don't fit, loading stops with the GiB needed and free."""
    folder = make_shards(tmp_path, volumes=1)
    monkeypatch.setattr(data, "available_bytes", lambda device: 1 << 20)
    with pytest.raises(DataError, match=r"need 0\.00 GiB.*only 0\.00 GiB of RAM is free"):
        load_shards(folder, CPU, log=lambda s: None)


def test_split_by_volume_keeps_volumes_whole(tmp_path):
    """No volume has patches on both sides, and the split is the one closest to the fraction."""
    folder = make_shards(tmp_path, volumes=5, per_volume=30)
    ps = load_shards(folder, CPU, log=lambda s: None)
    split = split_patches(ps, "volume", 0.2, seed=1)
    train_vol, val_vol = set(ps.volume[split["train"]]), set(ps.volume[split["val"]])
    assert train_vol and val_vol and not train_vol & val_vol
    assert len(split["train"]) + len(split["val"]) == len(ps)
    counts = np.bincount(ps.volume)  # 30, 46, 62, 78, 94: 20 % of 310 = 62 -> exactly volume 2
    assert val_vol == {2} and counts[2] == 62


def test_split_by_volume_keeps_a_volume_of_every_folder_in_training(tmp_path):
    """A lone real CT (one volume, 88 patches) beside four phantoms (60, 76, 92, 108): the CT alone
    comes closest to 20 % of the 424 patches, so a split that ignores folders validates on it and
    trains on phantoms only. Kept in training, the validation volume is the phantom closest to 20 %."""
    ct = make_shards(tmp_path / "ct", volumes=1, per_volume=88)
    phantoms = make_shards(tmp_path / "phantoms", volumes=4, per_volume=60, first_volume=10, seed=1)
    ps = load_shards([ct, phantoms], CPU, log=lambda s: None)
    counts = np.bincount(ps.volume)
    assert list(counts) == [88, 60, 76, 92, 108] and ps.volume_folders == (0, 1, 1, 1, 1)
    assert list(np.flatnonzero(choose_volumes(counts, 0.2, np.random.default_rng(0)))) == [0]
    split = split_patches(ps, "volume", 0.2, seed=0)
    assert split["val_volumes"] == [ps.volumes[3]] and split["note"] is None
    assert 0 in set(ps.volume[split["train"]])
    for seed in range(5):  # the greedy search for many volumes keeps the rule too
        take = choose_volumes(np.array([500] + [40] * 20), 0.2, np.random.default_rng(seed),
                              groups=np.array([0] + [1] * 20))
        assert not take[0] and take.any()
    lone = split_patches(load_shards([ct, make_shards(tmp_path / "one", volumes=1, first_volume=20)], CPU,
                                     log=lambda s: None), "volume", 0.2, seed=0)
    assert "every volume of shard folder(s)" in lone["note"]


def test_split_is_seeded(tmp_path):
    """The same seed gives the same split; patch splits of other seeds differ."""
    ps = load_shards(make_shards(tmp_path, volumes=2), CPU, log=lambda s: None)
    a, b, c = (split_patches(ps, "patch", 0.25, seed=s) for s in (3, 3, 4))
    assert np.array_equal(a["val"], b["val"]) and not np.array_equal(a["val"], c["val"])
    assert len(a["val"]) == round(0.25 * len(ps))


def test_single_volume_falls_back_to_slice_ranges(tmp_path):
    """With one volume the split says so and keeps every slice on one side."""
    ps = load_shards(make_shards(tmp_path, volumes=1, per_volume=200, slices=10), CPU, log=lambda s: None)
    split = split_patches(ps, "volume", 0.2, seed=0)
    assert split["by"] == "slices" and "only one volume" in split["note"]
    z = ps.origin[:, 0]
    assert not set(z[split["train"]]) & set(z[split["val"]])
    z0, z1 = split["val_slices"]
    assert set(z[split["val"]]) == set(range(z0, z1 + 1)) & set(z)


def test_greedy_volume_choice_for_many_volumes():
    """Beyond the exact-search limit the greedy choice is close to the target and leaves both sides."""
    counts = np.random.default_rng(0).integers(50, 500, 40)
    take = choose_volumes(counts, 0.2, np.random.default_rng(0))
    assert 0 < take.sum() < 40
    assert abs(counts[take].sum() / counts.sum() - 0.2) < 0.01


def test_folders_with_other_mask_labels_train_together_with_a_note(tmp_path):
    """--labels says which mask values of one source are vertebra (TotalSegmentator 26-50, a
    phantom's 1); after the build both mean vertebra, so the folders load together and the log
    names the difference. Other preprocessing still has to agree."""
    a = make_shards(tmp_path / "ct", volumes=2, labels=tuple(range(26, 51)))
    b = make_shards(tmp_path / "phantoms", volumes=2, seed=1)
    lines: list[str] = []
    got = load_shards([a, b], CPU, log=lines.append)
    assert len(got.y) == 2 * (64 + 80)
    note = [s for s in lines if s.startswith("note: the shard folders took vertebra")]
    assert len(note) == 1 and f"{a}: 26-50" in note[0] and f"{b}: any nonzero" in note[0], lines
    lines.clear()
    load_shards([a, a], CPU, log=lines.append)
    assert not any("took vertebra" in s for s in lines)
    c = make_shards(tmp_path / "smoothed", volumes=2, sigma=1.5)
    with pytest.raises(ShardError, match="sigma=1.5 there"):
        load_shards([b, c], CPU, log=lambda s: None)
