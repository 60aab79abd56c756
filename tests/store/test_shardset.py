"""Tests for patchstore.store.shardset: checks before reading, bulk reads into a caller's buffer."""

from __future__ import annotations

import numpy as np
import pytest

from patchstore.store.shard import ShardError, ShardReader
from patchstore.store.shardset import ShardSet
from tests.builders import make_shards


def test_read_into_a_buffer_equals_plain_h5py(tmp_path):
    """Each shard's patches land in the caller's buffer; labels, origin and volume key come with them."""
    shards = ShardSet.open(make_shards(tmp_path, volumes=2, per_volume=10))
    assert shards.sizes == (10, 26) and len(shards) == 36 and shards.patch_bytes == 36 * 32 * 32
    buf = np.empty((len(shards), 32, 32), np.uint8)
    start = 0
    for i, n in enumerate(shards.sizes):
        part = shards.read(i, out=buf[start:start + n])
        with ShardReader(tmp_path / shards.files[i]) as r:
            assert np.array_equal(buf[start:start + n], r.patches[:])
            assert np.array_equal(part.labels, r.labels[:]) and part.volume_key == r.attrs["volume_key"]
        start += n


def test_wrong_buffer_is_refused(tmp_path):
    shards = ShardSet.open(make_shards(tmp_path, volumes=1, per_volume=10))
    with pytest.raises(ValueError, match=r"float32 \(10, 32, 32\); expected a C-contiguous uint8"):
        shards.read(0, out=np.empty((10, 32, 32), np.float32))


def test_preprocessing_differences_refused_sampling_differences_returned(tmp_path):
    """Another window is refused naming both values; another stride or RUS is only reported."""
    shards = ShardSet.open(make_shards(tmp_path, volumes=1))
    assert shards.check_preprocessing({**shards.build, "stride": 8, "rus": False}, "checkpoint m.pt") == ["rus", "stride"]
    with pytest.raises(ShardError, match=r"hu_min=100.0 in the shards, 50.0 in checkpoint m.pt"):
        shards.check_preprocessing({**shards.build, "hu_min": 50.0}, "checkpoint m.pt")


def test_missing_shard_refused_at_open(tmp_path):
    folder = make_shards(tmp_path, volumes=2)
    (folder / "case1.h5").unlink()
    with pytest.raises(ShardError, match=r"case1\.h5: missing \(listed in"):
        ShardSet.open(folder)
