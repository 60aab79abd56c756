"""The import graph: inference never loads the trainer, and --help needs no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout.split()
    return set(out)


@pytest.mark.parametrize("cli", ["patchstore", "train", "infer"])
def test_help_does_not_import_torch_or_numba(cli):
    """`<cli> --help` answers from click alone."""
    mods = _loaded(f"from {cli}.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert "torch" not in mods and "numba" not in mods and "h5py" not in mods


def test_inference_does_not_import_the_training_loop():
    """infer.predict loads the model and checkpoint modules, not the loop, plots or the run folder."""
    mods = _loaded("import infer.predict")
    assert {"train.model", "train.checkpoint"} <= mods
    assert not {"train.loop", "train.plots", "train.rundir", "train.data", "matplotlib"} & mods


def test_patch_metrics_import_without_torch():
    assert "torch" not in _loaded("import train.metrics")
