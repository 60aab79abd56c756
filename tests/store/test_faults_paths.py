"""Fault class 1: names taken from inputs never reach outside their folder; nothing foreign is replaced.

Case names (a CSV's ``case`` column) name shard files and manifest ``file`` entries name the files
`verify` hashes and `train` loads: both must be plain file names (``patchstore.files.confined``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from patchstore.build import BuildError, build
from patchstore.cli import main
from patchstore.config import BuildConfig
from patchstore.files import UnsafePathError, confined
from patchstore.store.manifest import MANIFEST
from patchstore.store.merge import MergeError, merge
from patchstore.store.shardset import ShardSet
from patchstore.store.verify import verify
from tests.builders import make_shards

CFG = BuildConfig.paper(angles=(), translations=0)
ESCAPES = ["../../victim", "/tmp/victim-abs", "sub/victim", "..", ".hidden", "a\\b", ""]


def _csv(dataset: Path, path: Path, case: str) -> Path:
    path.write_text("image,mask,case\n"
                    f"{dataset}/imagesTr/case0_0000.nii.gz,{dataset}/labelsTr/case0.nii.gz,{case}\n")
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["case_001", "a.h5", "CT 12 (arterial)"])
def test_plain_names_are_kept(tmp_path, name):
    assert confined(tmp_path, name, "case") == tmp_path / name


@pytest.mark.parametrize("name", ESCAPES + [None, "x" * 300, "tab\there"])
def test_other_names_are_refused_naming_where_they_came_from(tmp_path, name):
    """Separators, '..', absolute paths, hidden or empty names, control characters, non-strings."""
    with pytest.raises(UnsafePathError, match=r"cases\.csv, line 2: case is .*expected a plain file name"):
        confined(tmp_path, name, "cases.csv, line 2: case")


@pytest.mark.parametrize("case", ["../../victim", "/tmp/victim-abs", "sub/victim", ".hidden"])
def test_csv_case_reaching_outside_is_refused_and_nothing_written(build_dataset, tmp_path, case):
    """The shard of a case named ../../victim (or absolute) is never written: the user's file stays."""
    work = tmp_path / "work"
    work.mkdir()
    victim = work / "victim.h5"
    victim.write_bytes(b"an unrelated user file")
    csv = _csv(build_dataset, work / "cases.csv", case)
    before = _snapshot(tmp_path)
    with pytest.raises(UnsafePathError, match=rf"cases\.csv, line 2: case is {case!r}.*expected a plain file name"):
        build(csv, work / "a" / "b" / "out", CFG, quiet=True)
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("work/a/")} == before
    assert victim.read_bytes() == b"an unrelated user file"
    assert not Path("/tmp/victim-abs.h5").exists()


def test_cli_absolute_case_is_one_line(build_dataset, tmp_path):
    """An absolute case name is an error line and exit 1, not a NotImplementedError traceback."""
    csv = _csv(build_dataset, tmp_path / "cases.csv", "/tmp/victim-abs")
    res = CliRunner().invoke(main, ["build", str(csv), "-o", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "Error: " in res.output and "expected a plain file name" in res.output and "Traceback" not in res.output


def _point_entry_at(folder: Path, target: str) -> None:
    """Make the manifest's first entry name ``target`` (a correct hash and size: only the name is wrong)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["shards"][0]["file"] = target
    (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("target", ["../outside.h5", "ABSOLUTE"])
def test_manifest_entry_outside_the_folder_is_refused(tmp_path, target):
    """verify, ShardSet (train) and merge refuse a manifest entry ../x or /abs/x before opening it."""
    folder = make_shards(tmp_path / "shards", volumes=2, per_volume=8)
    outside = tmp_path / "outside.h5"
    shutil.copy(folder / "case0.h5", outside)  # a real shard: only the confinement can refuse it
    _point_entry_at(folder, str(outside) if target == "ABSOLUTE" else target)
    pattern = r"manifest\.json: shards\[0\]\.file is .*outside\.h5.*expected a plain file name inside"
    with pytest.raises(UnsafePathError, match=pattern):
        verify(folder)
    with pytest.raises(UnsafePathError, match=pattern):
        ShardSet.open(folder)
    with pytest.raises(UnsafePathError, match=pattern):
        merge([folder], tmp_path / "merged")
    res = CliRunner().invoke(main, ["verify", str(folder)])
    assert res.exit_code == 1 and "expected a plain file name" in res.output and "OK" not in res.output


def test_build_never_replaces_a_file_it_did_not_write(build_dataset, tmp_path):
    """A user's case0.h5 in the output folder is refused, named, and left as it was; no temp file left."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "case0.h5").write_bytes(b"my own notes, not a shard")
    with pytest.raises(BuildError, match=r"case0\.h5: exists and is not a shard of case 'case0' written by "
                                         r"patchstore; refusing to replace"):
        build(build_dataset, out, CFG, quiet=True)
    assert (out / "case0.h5").read_bytes() == b"my own notes, not a shard"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_startup_cleanup_removes_only_its_own_temporary_files(build_dataset, tmp_path):
    """A killed build's shard temp file goes; a user's hidden files that look temporary stay."""
    out = tmp_path / "out"
    out.mkdir()
    mine = out / ".case1.h5.abcd1234.tmp"
    theirs = [out / ".bashrc.abcd1234.tmp", out / ".notes.tmp", out / ".draft.txt.x1y2z3w4.tmp"]
    for p in [mine, *theirs]:
        p.write_bytes(b"x")
    build(build_dataset, out, CFG, quiet=True)
    assert not mine.exists() and all(p.read_bytes() == b"x" for p in theirs)


def test_merge_never_overwrites_a_file_it_did_not_write(tmp_path):
    """merge into a folder holding another case0.h5 is refused and the file stays as it was."""
    folder = make_shards(tmp_path / "shards", volumes=2, per_volume=8)
    out = tmp_path / "merged"
    out.mkdir()
    (out / "case0.h5").write_bytes(b"someone else's file")
    with pytest.raises(MergeError, match=r"case0\.h5: exists and is not .*merge never overwrites"):
        merge([folder], out)
    assert (out / "case0.h5").read_bytes() == b"someone else's file"
    assert not (out / MANIFEST).exists()
