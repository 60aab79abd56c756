"""Fault class 3: shards are checked against the manifest before any patch is used.

Each fault is injected into one shard of a small folder, and the manifest entry's size and hash
are brought up to date, as a buggy writer or a hand edit would leave them: only the checks of
``ShardSet.read`` (what `train` uses) and `patchstore verify` stand between the fault and training.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from patchstore.cli import main
from patchstore.files import file_sha256
from patchstore.store.manifest import MANIFEST
from patchstore.store.shard import ShardError
from patchstore.store.shardset import ShardSet
from patchstore.store.verify import verify
from tests.builders import make_shards
from train.cli import main as train_main
from train.data import load_shards


@pytest.fixture
def shards(tmp_path) -> Path:
    return make_shards(tmp_path / "shards", volumes=2, per_volume=16)


def _refresh_manifest(folder: Path) -> None:
    """Bring every entry's size and SHA-256 up to date with the files (hiding the fault from them)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    for e in manifest["shards"]:
        e["bytes"], e["sha256"] = (folder / e["file"]).stat().st_size, file_sha256(folder / e["file"])
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _swap(f: h5py.File, name: str, data: np.ndarray) -> None:
    del f[name]
    f.create_dataset(name, data=data)


def _tamper(folder: Path, change) -> None:
    with h5py.File(folder / "case1.h5", "r+") as f:
        change(f)
    _refresh_manifest(folder)


FAULTS = {
    "float64 patches": (lambda f: _swap(f, "patches", f["patches"][:].astype(np.float64) / 255),
                        r"patches has shape \(32, 32, 32\) dtype float64; expected shape \(32, 32, 32\) dtype uint8"),
    "int16 patches": (lambda f: _swap(f, "patches", f["patches"][:].astype(np.int16) * 300),
                      r"patches has shape .* dtype int16; expected .* dtype uint8"),
    "wrong patch shape": (lambda f: _swap(f, "patches", f["patches"][:, :16, :16]),
                          r"patches has shape \(32, 16, 16\) dtype uint8; expected shape \(32, 32, 32\)"),
    "label value 2": (lambda f: _swap(f, "labels", np.where(f["labels"][:] == 1, 2, 0).astype(np.uint8)),
                      r"labels hold values \[2\]; expected 0 \(background\) and 1 \(vertebra\) only"),
    "altered volume_key": (lambda f: f.attrs.__setitem__("volume_key", "f" * 64),
                           r"attribute volume_key is 'fff.*'; the manifest says '0+2'"),
    "altered case_id": (lambda f: f.attrs.__setitem__("case_id", "case0"),
                        r"attribute case_id is 'case0'; the manifest says 'case1'"),
    "missing origin": (lambda f: f.__delitem__("origin"), r"dataset 'origin' is missing"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_refused_before_any_patch_is_used(shards, fault):
    """ShardSet.read refuses the shard naming file, field and both values; the caller's buffer is untouched."""
    change, message = FAULTS[fault]
    _tamper(shards, change)
    s = ShardSet.open(shards)
    buf = np.full((s.sizes[1], 32, 32), 7, np.uint8)
    with pytest.raises(ShardError, match=rf"case1\.h5: .*{message}"):
        s.read(1, out=buf)
    assert (buf == 7).all()
    assert any(p.startswith("case1.h5") and re.search(message, p) for p in verify(shards))


def test_train_cli_refuses_a_float64_shard_in_one_line(shards, tmp_path):
    """`train run` on a float64 shard exits 1 with the file and dtypes, and writes no checkpoint."""
    _tamper(shards, FAULTS["float64 patches"][0])
    res = CliRunner().invoke(train_main, ["run", str(shards), "-o", str(tmp_path / "run"), "--epochs", "1",
                                          "--max-steps", "1", "--quiet", "--device", "cpu"])
    assert res.exit_code == 1 and "case1.h5" in res.output and "dtype float64" in res.output, res.output
    assert not (tmp_path / "run" / "last.pt").exists()


def _corrupt_chunk(path: Path) -> None:
    """Flip bytes in the middle of the first stored chunk of 'patches' (fletcher32 catches it)."""
    with h5py.File(path, "r") as f:
        info = f["patches"].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    for k in range(8):
        data[info.byte_offset + info.size // 2 + k] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_chunk_names_the_file(shards):
    """A damaged chunk stops loading with the file and dataset named (not a bare OSError)."""
    _corrupt_chunk(shards / "case1.h5")
    with pytest.raises(ShardError, match=r"case1\.h5: dataset 'patches' unreadable \(.*\); the file is damaged"):
        load_shards(shards, torch.device("cpu"), log=lambda s: None)
    problems = verify(shards)
    assert "case1.h5: altered: SHA-256 differs from the manifest's" in problems
    assert any(p.startswith("case1.h5: dataset 'patches' unreadable") for p in problems)


def test_file_listed_twice_is_refused(shards):
    """A manifest listing one shard twice: verify reports it, ShardSet (train) refuses it."""
    manifest = json.loads((shards / MANIFEST).read_text())
    manifest["shards"].append(dict(manifest["shards"][0]))
    manifest["totals"]["patches"] += manifest["shards"][0]["patches"]
    (shards / MANIFEST).write_text(json.dumps(manifest))
    assert "manifest.json: lists case0.h5 2 times; expected once" in verify(shards)
    with pytest.raises(ShardError, match=r"lists case0\.h5 2 times; expected once"):
        ShardSet.open(shards)


def test_copy_listed_under_a_second_name_is_refused(shards):
    """The same volume part listed as two files (a copy renamed) is refused too."""
    shutil.copy(shards / "case0.h5", shards / "copy.h5")
    manifest = json.loads((shards / MANIFEST).read_text())
    manifest["shards"].append({**manifest["shards"][0], "file": "copy.h5"})
    manifest["totals"]["patches"] += manifest["shards"][0]["patches"]
    (shards / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"part 0 of volume case0 \(key 0+\) is listed 2 times \(case0\.h5, copy"):
        ShardSet.open(shards)


def test_missing_part_of_a_split_volume_is_refused(shards):
    """An entry of a volume split into 2 files whose other part is not listed is refused."""
    manifest = json.loads((shards / MANIFEST).read_text())
    manifest["shards"][0]["n_parts"] = 2
    (shards / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"volume case0 is split into 2 files; parts \[1\] are not listed"):
        ShardSet.open(shards)


def test_extra_shard_is_reported_and_not_trained_on(shards):
    """An .h5 beside the manifest: verify reports it; load_shards warns and loads only the listed ones."""
    shutil.copy(shards / "case0.h5", shards / "stray.h5")
    assert verify(shards) == ["stray.h5: extra shard, not listed in the manifest"]
    warnings = []
    ps = load_shards(shards, torch.device("cpu"), log=lambda s: None, warn=warnings.append)
    assert len(ps) == sum(ShardSet.open(shards).sizes)
    assert warnings == [f"{shards}: 1 .h5 file(s) not listed in manifest.json are not used: stray.h5"]


@pytest.mark.parametrize("field, value, expected", [
    ("patches", "ten", "an integer >= 0"),
    ("counts", [1], r"\[background, vertebra\] integers >= 0"),
    ("file", "case0.txt", "a file name ending in .h5"),
    ("sha256", "abc", "64 hex digits"),
])
def test_malformed_manifest_entry_names_the_field(shards, field, value, expected):
    """A malformed entry is refused with the field, the value found and the one expected."""
    manifest = json.loads((shards / MANIFEST).read_text())
    manifest["shards"][0][field] = value
    (shards / MANIFEST).write_text(json.dumps(manifest))
    found = re.escape(f"manifest.json: shards[0].{field} is {value!r}; expected ")
    with pytest.raises(ShardError, match=found + expected):
        ShardSet.open(shards)
    res = CliRunner().invoke(main, ["verify", str(shards)])
    assert res.exit_code == 1 and f"shards[0].{field}" in res.output
