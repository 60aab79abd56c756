"""The README's "Python API" example, run exactly as written on a tiny phantom."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

# The README's "Python API" code block, character for character.
EXAMPLE = '''\
import torch

from infer import load_model, segment
from patchstore import BuildConfig, read_volume, write_mask
from patchstore.build import build
from patchstore.phantom.generate import write_dataset
from train.config import TrainConfig
from train.loop import train

write_dataset("data", cases=3, seed=0, size=96, slices=24)  # synthetic CT + masks (or your imagesTr/ + labelsTr/)
build("data", "shards", BuildConfig(stride=6))         # -> shards/manifest.json, shards/<case>.h5
train("shards", "runs/api", TrainConfig(epochs=1, max_steps=20))  # a smoke run; the default is 30 epochs
model, build_cfg = load_model("runs/api/best.pt", torch.device("cpu"))
ct = read_volume("data/imagesTr/phantom_000_0000.nii.gz")       # any CT file or DICOM series folder
prediction = segment(model, build_cfg, ct)  # .mask, .raw: (Z, Y, X) bool; .probability: float32
write_mask("pred.nii.gz", prediction.mask, ct.geometry, ct.source)   # uint8 0/1, the CT's own geometry
'''


@pytest.mark.slow
def test_python_api_example_runs_as_written(tmp_path, monkeypatch):
    """The example builds, trains, segments and writes a mask on the CT's grid."""
    from patchstore.io.volume import read_volume
    monkeypatch.chdir(tmp_path)
    exec(compile(EXAMPLE, "README.md (Python API)", "exec"), {})
    ct = read_volume(tmp_path / "data" / "imagesTr" / "phantom_000_0000.nii.gz")
    mask = read_volume(tmp_path / "pred.nii.gz", dtype=None)
    assert mask.array.shape == ct.array.shape and set(np.unique(mask.array)) <= {0, 1}
    assert (tmp_path / "runs" / "api" / "best.pt").exists()


def test_readme_shows_this_example():
    """Where README.md has a "Python API" section, its first Python block is EXAMPLE."""
    text = README.read_text(encoding="utf-8") if README.exists() else ""  # GDCM sets the C locale on writing DICOM
    section = re.search(r"^## Python API\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    if section is None:
        pytest.skip("README.md has no '## Python API' section")
    block = re.search(r"```python\n(.*?)```", section.group(1), flags=re.DOTALL)
    assert block is not None and block.group(1) == EXAMPLE
