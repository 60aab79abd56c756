"""`patchstore verify` catches flipped bytes, truncation, missing, extra and renamed shards."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from patchstore.build import build
from patchstore.cli import main
from patchstore.config import BuildConfig
from patchstore.store.verify import verify


@pytest.fixture
def shards(build_dataset, tmp_path):
    out = tmp_path / "shards"
    build(build_dataset, out, BuildConfig.paper(angles=(), translations=0), quiet=True)
    assert verify(out) == []
    return out


def test_flipped_byte_is_caught(shards):
    """One flipped byte in a shard's data is an altered shard and the CLI exits 1."""
    path = shards / "case1.h5"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    problems = verify(shards)
    assert any(p.startswith("case1.h5: altered: SHA-256") for p in problems)
    res = CliRunner().invoke(main, ["verify", str(shards)])
    assert res.exit_code == 1 and "PROBLEM case1.h5" in res.output


def test_truncated_shard_is_caught(shards):
    """A shard cut short is reported as truncated with both sizes."""
    path = shards / "case0.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    assert verify(shards) == [f"case0.h5: truncated: {len(data) - 100:,} bytes; the manifest says {len(data):,}"]


def test_missing_extra_and_renamed(shards):
    """A deleted shard is missing, a copied one extra, a renamed one named as renamed."""
    shutil.copy(shards / "case0.h5", shards / "stray.h5")
    (shards / "case1.h5").rename(shards / "case1-renamed.h5")
    (shards / "case2.h5").unlink()
    problems = verify(shards)
    assert "case1.h5: renamed to case1-renamed.h5 (same content); expected the name case1.h5" in problems
    assert "case2.h5: missing (listed in the manifest)" in problems
    assert "stray.h5: extra shard, not listed in the manifest" in problems
    assert len(problems) == 3


def test_missing_manifest_is_explained(shards):
    """Without manifest.json the error says an interrupted build writes it last."""
    (shards / "manifest.json").unlink()
    res = CliRunner().invoke(main, ["verify", str(shards)])
    assert res.exit_code != 0 and "no manifest.json" in res.output and "resume" in res.output
