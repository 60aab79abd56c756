"""Fault class 6: a user's mistake is one line and exit 1 in all three commands; --debug shows the traceback.

Checkpoints are checked entry by entry when loaded (``train.checkpoint.load_checkpoint``), so
inference and evaluation never meet a shape mismatch or a broken build entry deep inside torch.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from infer.cli import main as infer_main
from patchstore.cli import main as patchstore_main
from patchstore.store.merge import MergeError
from tests.builders import make_shards, write_checkpoint
from train.checkpoint import CheckpointError
from train.cli import main as train_main
from train.model import OPConvNet


def _wrong_shape(path: Path) -> Path:
    state = OPConvNet().state_dict()
    state["conv1.weight"] = torch.zeros(8, 1, 3, 3)
    return write_checkpoint(path, model=state)


def _random_bytes(path: Path) -> Path:
    path.write_bytes(os.urandom(4096))
    return path


def _cut(path: Path) -> Path:
    data = write_checkpoint(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


CHECKPOINTS = {
    "wrong shape": (_wrong_shape, r"model weight 'conv1\.weight' has shape \(8, 1, 3, 3\); OP-convNet's is "
                                  r"\(64, 1, 3, 3\)"),
    "corrupt build entry": (lambda p: write_checkpoint(p, build={"patch": "thirty-two"}),
                            r"entry 'build' is not valid build parameters"),
    "build entry not a dict": (lambda p: write_checkpoint(p, build="uint8"),
                               r"entry 'build' is not valid build parameters \(a str, not a dict\)"),
    "random bytes": (_random_bytes, r"not a torch checkpoint \(it starts with the bytes [0-9a-f]{8}; expected a "
                                    r"file written by torch\.save"),
    "cut in half": (_cut, r"not a readable torch checkpoint \(RuntimeError: PytorchStreamReader failed"),
}


@pytest.fixture
def ct(build_dataset) -> Path:
    return build_dataset / "imagesTr" / "case0_0000.nii.gz"


def _one_line_error(res, pattern: str) -> None:
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), (res.exception, res.output)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and re.search(pattern, lines[0]), res.output
    assert "pickled" not in res.output


@pytest.mark.parametrize("fault", sorted(CHECKPOINTS))
def test_bad_checkpoint_is_one_line_in_infer_and_train(ct, tmp_path, fault):
    """infer volume and train evaluate name the checkpoint and the problem in one line; no mask is written."""
    make, pattern = CHECKPOINTS[fault]
    model = make(tmp_path / "bad.pt")
    res = CliRunner().invoke(infer_main, ["volume", str(ct), "-m", str(model), "-o", str(tmp_path / "p.nii.gz")])
    _one_line_error(res, r"bad\.pt: " + pattern)
    assert not (tmp_path / "p.nii.gz").exists()
    shards = make_shards(tmp_path / "shards", volumes=1, per_volume=8)
    res = CliRunner().invoke(train_main, ["evaluate", str(model), str(shards), "--device", "cpu"])
    _one_line_error(res, r"bad\.pt: " + pattern)


def test_pickled_object_is_still_named_as_such(tmp_path):
    """A real pickled object (not damage) keeps its own message."""
    path = tmp_path / "evil.pt"
    torch.save({"model": OPConvNet().state_dict(), "x": Path("/")}, path)
    from train.checkpoint import load_checkpoint
    with pytest.raises(CheckpointError, match=r"holds pickled Python objects such as pathlib"):
        load_checkpoint(path)


def test_debug_shows_the_traceback(ct, tmp_path):
    """--debug on each group lets the library error through (with its traceback) instead of one line."""
    model = _random_bytes(tmp_path / "bad.pt")
    res = CliRunner().invoke(infer_main, ["--debug", "volume", str(ct), "-m", str(model), "-o",
                                          str(tmp_path / "p.nii")])
    assert isinstance(res.exception, CheckpointError)
    shards = make_shards(tmp_path / "shards", volumes=1, per_volume=8)
    res = CliRunner().invoke(train_main, ["--debug", "evaluate", str(model), str(shards)])
    assert isinstance(res.exception, CheckpointError)
    res = CliRunner().invoke(patchstore_main, ["--debug", "merge", str(shards), "-o", str(shards)])
    assert isinstance(res.exception, MergeError)
    res = CliRunner().invoke(patchstore_main, ["merge", str(shards), "-o", str(shards)])
    _one_line_error(res, r"already holds a shard set")


def test_too_small_phantom_is_one_line(tmp_path):
    res = CliRunner().invoke(patchstore_main, ["phantom", str(tmp_path / "p"), "--size", "16", "--slices", "4"])
    _one_line_error(res, r"Phantom size 16 x 16 x 4 is too small; expected size >= 32")


def test_train_resume_of_a_damaged_checkpoint_is_one_line(tmp_path):
    """--resume from a run folder whose last.pt is random bytes: one line, the folder untouched."""
    run = tmp_path / "run"
    run.mkdir()
    _random_bytes(run / "last.pt")
    before = (run / "last.pt").read_bytes()
    shards = make_shards(tmp_path / "shards", volumes=2, per_volume=8)
    res = CliRunner().invoke(train_main, ["run", str(shards), "--resume", str(run), "--quiet"])
    _one_line_error(res, r"last\.pt: not a torch checkpoint")
    assert (run / "last.pt").read_bytes() == before and sorted(p.name for p in run.iterdir()) == ["last.pt"]


def test_new_run_never_overwrites_files_it_did_not_write(tmp_path):
    """train run -o into a folder holding someone's config.json is refused; the file stays as it was."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"mine": true}')
    shards = make_shards(tmp_path / "shards", volumes=2, per_volume=8)
    res = CliRunner().invoke(train_main, ["run", str(shards), "-o", str(run), "--quiet"])
    _one_line_error(res, r"holds config\.json not written by `train run`; refusing to overwrite")
    assert (run / "config.json").read_text() == '{"mine": true}'


@pytest.mark.slow
def test_real_process_prints_no_traceback(ct, tmp_path):
    """As a real process: a user error is one stderr line and exit 1; --debug prints the traceback."""
    model = _random_bytes(tmp_path / "bad.pt")
    args = ["volume", str(ct), "-m", str(model), "-o", str(tmp_path / "p.nii.gz")]
    cmd = [sys.executable, "-c", "from infer.cli import main; main()"]
    done = subprocess.run(cmd + args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"Error: {model}: not a torch checkpoint (it starts with the bytes "
                                                f"{model.read_bytes()[:4].hex()}; expected a file written by "
                                                f"torch.save, a zip archive starting with 'PK')"]
    done = subprocess.run(cmd + ["--debug"] + args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" in done.stderr and "CheckpointError" in done.stderr
