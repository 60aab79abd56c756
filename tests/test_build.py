"""`patchstore build`: schema, determinism across runs/workers/resumes, parts + merge, failures."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from patchstore.build import BuildError, build, parse_part
from patchstore.cli import main
from patchstore.config import BuildConfig
from patchstore.io.volume import write_volume
from patchstore.store.manifest import read_manifest
from patchstore.store.merge import MergeError, merge
from patchstore.store.shard import ShardWriter
from patchstore.store.verify import verify
from tests.builders import lps_geometry

CFG = BuildConfig.paper(angles=(-10.0,), translations=1)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_shard_schema_readable_with_plain_h5py(build_dataset, tmp_path):
    """Datasets, dtypes, filters, chunking and attributes are as documented; counts match the manifest."""
    out = tmp_path / "shards"
    build(build_dataset, out, CFG, quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["file"] for e in manifest["shards"]] == ["case0.h5", "case1.h5", "case2.h5"]
    entry = manifest["shards"][0]
    with h5py.File(out / "case0.h5", "r") as f:
        p, lab, org = f["patches"], f["labels"], f["origin"]
        assert p.dtype == np.uint8 and p.shape[1:] == (32, 32) and lab.dtype == np.uint8 and org.dtype == np.int32
        assert org.shape == (p.shape[0], 4) and p.shape[0] == entry["patches"] > 0
        assert p.compression == "gzip" and p.shuffle and p.fletcher32 and p.chunks[1:] == (32, 32)
        assert json.loads(f.attrs["build"]) == CFG.to_dict()
        assert f.attrs["source_image"] == "imagesTr/case0_0000.nii.gz"
        assert len(f.attrs["image_sha256"]) == 64
        before, after = list(f.attrs["counts_before"]), list(f.attrs["counts_after"])
        assert list(np.bincount(lab[:], minlength=2)) == after == entry["counts"]
        assert after[1] == before[1] and after[0] == min(before[0], after[1])  # RUS 1:1, minority kept
        assert set(org[:, 3]) <= set(range(CFG.n_views))


def test_same_inputs_same_bytes_any_worker_count(build_dataset, tmp_path):
    """Two builds, one with 2 worker processes, give byte-identical shards and manifests."""
    build(build_dataset, tmp_path / "a", CFG, quiet=True)
    build(build_dataset, tmp_path / "b", CFG, workers=2, quiet=True)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_resume_after_crash_equals_uninterrupted(build_dataset, tmp_path, monkeypatch):
    """A build that dies writing the second volume leaves no partial shard or manifest; rerun completes it."""
    build(build_dataset, tmp_path / "full", CFG, quiet=True)
    calls = {"n": 0}
    real_write = ShardWriter.write

    def dying_write(self, *a):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return real_write(self, *a)

    monkeypatch.setattr(ShardWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        build(build_dataset, tmp_path / "crash", CFG, quiet=True)
    assert sorted(p.name for p in (tmp_path / "crash").iterdir()) == ["case0.h5"]
    (tmp_path / "crash" / ".case1.h5.abc.tmp").write_bytes(b"half a shard")  # as kill -9 would leave
    monkeypatch.setattr(ShardWriter, "write", real_write)
    result = build(build_dataset, tmp_path / "crash", CFG, quiet=True)
    assert result.skipped == ["case0"] and result.built == ["case1", "case2"]
    assert _files(tmp_path / "crash") == _files(tmp_path / "full")


def test_parts_merge_into_the_single_machine_build(build_dataset, tmp_path):
    """--part 1/2 and 2/2 built apart and merged equal one build of everything."""
    build(build_dataset, tmp_path / "full", CFG, quiet=True)
    for k in (1, 2):
        build(build_dataset, tmp_path / f"part{k}", CFG, part=(k, 2), quiet=True)
    n1 = len(read_manifest(tmp_path / "part1")["shards"])
    n2 = len(read_manifest(tmp_path / "part2")["shards"])
    assert n1 + n2 == 3
    merge([tmp_path / "part1", tmp_path / "part2"], tmp_path / "merged")
    assert _files(tmp_path / "merged") == _files(tmp_path / "full")
    assert verify(tmp_path / "merged") == []


def test_merge_refuses_different_parameters(build_dataset, tmp_path):
    """Shard sets built with different parameters are refused, naming the differing fields."""
    build(build_dataset, tmp_path / "a", CFG, part=(1, 2), quiet=True)
    build(build_dataset, tmp_path / "b", BuildConfig.paper(angles=(-10.0,), translations=1, stride=16), part=(2, 2),
          quiet=True)
    with pytest.raises(MergeError, match=r"different parameters \(stride=16 there, 12 in the first folder\)"):
        merge([tmp_path / "a", tmp_path / "b"], tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_output_folder_with_other_parameters_refused(build_dataset, tmp_path):
    """Building into a folder made with other parameters is refused, naming the fields."""
    build(build_dataset, tmp_path / "s", CFG, quiet=True)
    with pytest.raises(BuildError, match=r"differing: seed=0 there, 1 now"):
        build(build_dataset, tmp_path / "s", BuildConfig.paper(angles=(-10.0,), translations=1, seed=1), quiet=True)


def test_split_shards_hold_the_same_patches(build_dataset, tmp_path):
    """A tiny --shard-mb splits each volume into parts whose concatenation equals the single shard."""
    build(build_dataset, tmp_path / "one", CFG, quiet=True)
    small = BuildConfig.paper(angles=(-10.0,), translations=1, shard_mb=0.05)
    build(build_dataset, tmp_path / "many", small, quiet=True)
    parts = sorted((tmp_path / "many").glob("case0-p*.h5"))
    assert len(parts) >= 2
    with h5py.File(tmp_path / "one" / "case0.h5", "r") as f:
        whole = f["patches"][:]
    joined = np.concatenate([h5py.File(p, "r")["patches"][:] for p in parts])
    np.testing.assert_array_equal(joined, whole)
    assert verify(tmp_path / "many") == []


def _break_case1(root: Path) -> None:
    a = np.zeros((5, 72, 76), np.uint8)
    write_volume(root / "labelsTr" / "case1.nii.gz", a, lps_geometry(a.shape, spacing=(1, 1, 1)))


def test_bad_volume_stops_or_is_listed_with_keep_going(build_dataset, tmp_path):
    """A bad volume stops the build naming the file; --keep-going builds the others and lists it."""
    _break_case1(build_dataset)
    with pytest.raises(BuildError, match=r"case1.nii.gz does not cover the grid.*spacing"):
        build(build_dataset, tmp_path / "a", CFG, quiet=True)
    result = build(build_dataset, tmp_path / "b", CFG, keep_going=True, quiet=True)
    assert result.built == ["case0", "case2"] and [c for c, _ in result.failed] == ["case1"]
    assert [e["file"] for e in read_manifest(tmp_path / "b")["shards"]] == ["case0.h5", "case2.h5"]


def test_full_disk_gives_clear_error_and_keeps_earlier_shards(build_dataset, tmp_path, monkeypatch):
    """ENOSPC while writing a shard names the disk problem; shards written before stay intact."""
    calls = {"n": 0}
    real_write = ShardWriter.write

    def full_disk(self, *a):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *a)

    monkeypatch.setattr(ShardWriter, "write", full_disk)
    with pytest.raises(BuildError, match="disk full .*case1_0000.nii.gz.*run the same command to resume"):
        build(build_dataset, tmp_path / "s", CFG, quiet=True)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["case0.h5"]
    with h5py.File(tmp_path / "s" / "case0.h5", "r") as f:
        assert f["patches"].shape[0] > 0


def test_parse_part():
    """K/N parses; nonsense is refused with the expected form."""
    assert parse_part("2/3") == (2, 3)
    with pytest.raises(ValueError, match="expected K/N"):
        parse_part("4/3")


def test_cli_build_info_verify_merge(build_dataset, tmp_path):
    """The commands run through click: build, info (table and JSON), verify, merge."""
    r = CliRunner()
    args = ["build", str(build_dataset), "--angles", "", "--translations", "0", "--quiet", "--paper"]
    res = r.invoke(main, args + ["-o", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "3 shards" in res.output and "built 3, already complete 0" in res.output
    res = r.invoke(main, args + ["-o", str(tmp_path / "s")])
    assert "built 0, already complete 3" in res.output
    info = r.invoke(main, ["info", str(tmp_path / "s")])
    assert info.exit_code == 0 and "total (3 shards)" in info.output and "stride" in info.output
    js = json.loads(r.invoke(main, ["info", str(tmp_path / "s"), "--json"]).output)
    assert js["build"]["translations"] == 0 and js["build"]["angles"] == []
    assert r.invoke(main, ["verify", str(tmp_path / "s")]).exit_code == 0
    res = r.invoke(main, ["merge", str(tmp_path / "s"), "-o", str(tmp_path / "m")])
    assert res.exit_code == 0 and (tmp_path / "m" / "manifest.json").exists()
    bad = r.invoke(main, ["build", str(build_dataset), "-o", str(tmp_path / "x"), "--ratio", "one:1"])
    assert bad.exit_code != 0 and "MINORITY:MAJORITY" in bad.output


# The child stalls after its first shard, so the kill always lands in the middle of the build.
_STALLING_BUILD = """
import sys, time
from patchstore import build as b
from patchstore.config import BuildConfig
job = b.build_job
def stalling(*a, **k):
    out = job(*a, **k)
    print("shard written", flush=True)
    time.sleep(60)
    return out
b.build_job = stalling
b.build(sys.argv[1], sys.argv[2], BuildConfig.paper(angles=(-10.0,), translations=1), quiet=True)
"""


@pytest.mark.slow
def test_kill_9_then_rerun_equals_uninterrupted(build_dataset, tmp_path):
    """A build process killed with SIGKILL after its first shard, run again, ends byte-identical."""
    import os
    import signal
    import subprocess
    import sys

    build(build_dataset, tmp_path / "full", CFG, quiet=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _STALLING_BUILD, str(build_dataset), str(out)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "shard written\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()  # the manifest is written last
    assert len(list(out.glob("*.h5"))) == 1
    for p in out.glob("*.h5"):
        with h5py.File(p, "r") as f:  # every final name holds a complete shard
            f["patches"][:]
    build(build_dataset, out, CFG, quiet=True)
    assert _files(out) == _files(tmp_path / "full")


def test_pixel_size_and_label_rule_are_recorded(build_dataset, tmp_path):
    """--pixel-mm and --label-rule reach the build parameters, the build key and each shard's working grid."""
    out = tmp_path / "fine"
    res = CliRunner().invoke(main, ["build", str(build_dataset), "-o", str(out), "--pixel-mm", "0.35",
                                    "--label-rule", "centre", "--angles", "", "--translations", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    manifest = read_manifest(out)
    assert manifest["build"]["pixel_mm"] == 0.35 and manifest["build"]["label_rule"] == "centre"
    assert manifest["build_key"] != BuildConfig.paper(angles=(), translations=0).content_key()
    with h5py.File(out / "case0.h5") as f:
        working = json.loads(f.attrs["geometry"])["working"]
        assert working["shape_yx"] == [144, 174]  # 72 x 0.7 mm and 76 x 0.8 mm at 0.35 mm
        assert working["spacing_yx"] == pytest.approx([0.35, 76 * 0.8 / 174])  # the field of view is kept
        assert f["origin"][:, 1].max() + 32 <= 144
    bad = CliRunner().invoke(main, ["build", str(build_dataset), "-o", str(tmp_path / "x"), "--pixel-mm", "fine"])
    assert bad.exit_code == 2 and "'fine'; expected a pixel size in mm such as 0.4, or 'native'" in bad.output


def test_paper_flag_builds_the_papers_recipe(build_dataset, tmp_path):
    """`build --paper` stores the paper's parameters (native pixels, majority, stride 12, no jitter);
    an explicit option still wins; without it the defaults are the measured recipe."""
    r = CliRunner()
    for extra, expected in (([], BuildConfig(angles=())), (["--paper"], BuildConfig.paper(angles=())),
                            (["--paper", "--stride", "8"], BuildConfig.paper(angles=(), stride=8))):
        out = tmp_path / f"s{len(extra)}"
        res = r.invoke(main, ["build", str(build_dataset), "-o", str(out), "--angles", "", "--quiet", *extra])
        assert res.exit_code == 0, res.output
        assert read_manifest(out)["build"] == expected.to_dict()
    assert BuildConfig().label_rule == "centre" and BuildConfig().pixel_mm == 1.4


@pytest.mark.parametrize("field,good,bad,expected", [("zoom", 0.15, 2, "a fraction in [0, 1]"),
                                                    ("flip", 0.25, 1.5, "a probability in [0, 1]")])
def test_zoom_and_flip_are_recorded_and_impossible_ones_refused(build_dataset, tmp_path, field, good, bad, expected):
    """--zoom and --flip reach the build parameters (and the build key); a value out of range stops
    before any output with the field, the value and the range expected; a stored build without
    the field reads as 0."""
    r = CliRunner()
    out = tmp_path / "augmented"
    res = r.invoke(main, ["build", str(build_dataset), "-o", str(out), f"--{field}", str(good), "--quiet"])
    assert res.exit_code == 0, res.output
    assert read_manifest(out)["build"][field] == good
    assert BuildConfig(**{field: good}).content_key() != BuildConfig(**{field: 0.0}).content_key()
    res = r.invoke(main, ["build", str(build_dataset), "-o", str(tmp_path / "x"), f"--{field}", str(bad), "--quiet"])
    assert res.exit_code != 0 and not (tmp_path / "x").exists()
    assert f"'{field}' is {float(bad)!r}; expected {expected}" in res.output
    old = BuildConfig().to_dict()
    del old[field]
    assert BuildConfig.from_dict(old).to_dict()[field] == 0.0
