"""Tests for patchstore.store.shard: attribute encoding and atomic shard files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from patchstore.store.shard import ShardReader, ShardWriter


def _write(path, attrs):
    with ShardWriter(path, attrs) as w:
        w.write(np.zeros((2, 32, 32), np.uint8), np.array([0, 1], np.uint8), np.zeros((2, 4), np.int32))


def test_attributes_round_trip_by_declared_type(tmp_path):
    """Strings that look like JSON stay strings; declared JSON and integer-list attributes come back typed."""
    attrs = {"case_id": "[a]", "source_image": "{b}.nii.gz", "build": {"angles": [1.0], "seed": 3},
             "geometry": {"canonical": {"size": [1, 2, 3]}}, "counts_before": [5, 6], "label_values": [],
             "part": 0}
    _write(tmp_path / "s.h5", attrs)
    with ShardReader(tmp_path / "s.h5") as r:
        got = r.attrs
    assert {k: got[k] for k in attrs} == attrs
    with h5py.File(tmp_path / "s.h5") as f:  # plain h5py sees JSON text and an int64 array
        assert isinstance(f.attrs["build"], str) and f.attrs["counts_before"].dtype == np.int64


def test_undeclared_structured_attribute_is_refused(tmp_path):
    """A list or dict under a name the format doesn't declare is an error naming it; no file appears."""
    with pytest.raises(ValueError, match="'extra' is a list"):
        _write(tmp_path / "s.h5", {"extra": [1, 2]})
    assert list(tmp_path.iterdir()) == []
