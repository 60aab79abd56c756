"""The import graph: inference never loads the trainer, and --help needs no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded(code: str) -> set[str]:
    """The modules loaded after running ``code`` (read from the last line, after any help text)."""
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\nMODULES', *sys.modules)"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.rsplit("\nMODULES ", 1)[1].split())


@pytest.mark.parametrize("cli", ["patchstore", "train", "infer"])
def test_help_does_not_import_torch_or_numba(cli):
    """`<cli> --help` answers from click alone."""
    mods = _loaded(f"from {cli}.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert not {"torch", "numba", "h5py", "fsspec", "distributed"} & mods


@pytest.mark.parametrize("cli, command", [("patchstore", "build"), ("patchstore", "pull"), ("patchstore", "verify"),
                                          ("train", "run"), ("infer", "volume")])
def test_command_help_does_not_import_torch_or_numba(cli, command):
    """`<cli> <command> --help` (the group's callback runs first) loads no torch or numba either,
    nor the remote and cluster libraries."""
    mods = _loaded(f"from {cli}.cli import main\ntry:\n    main(['{command}', '--help'])\nexcept SystemExit:\n    pass")
    assert not {"torch", "numba", "fsspec", "aiohttp", "distributed"} & mods


def test_local_shards_and_builds_do_not_import_fsspec_or_dask():
    """fsspec loads only when a URL is opened, dask only for a --dask build."""
    mods = _loaded("import train.data, train.loop, patchstore.build, patchstore.store.remote")
    assert not {"fsspec", "aiohttp", "distributed", "dask"} & mods


def test_inference_does_not_import_the_training_loop():
    """infer.predict loads the model and checkpoint modules, not the loop, plots or the run folder."""
    mods = _loaded("import infer.predict")
    assert {"train.model", "train.checkpoint"} <= mods
    assert not {"train.loop", "train.plots", "train.rundir", "train.data", "matplotlib"} & mods


def test_patch_metrics_import_without_torch():
    assert "torch" not in _loaded("import train.metrics")
