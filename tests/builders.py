"""Small data made in code for the tests: geometries, volumes, shard folders, DICOM series.

Plain functions (not fixtures) so module-level helpers can use them too; conftest.py wraps the
common ones as fixtures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from patchstore.config import BuildConfig
from patchstore.files import write_json_atomic
from patchstore.io.volume import Geometry, write_volume
from patchstore.store.manifest import MANIFEST, make_manifest, shard_entry
from patchstore.store.shard import ShardWriter

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


def make_shards(folder: Path, volumes: int = 3, per_volume: int = 64, dtype: str = "uint8", seed: int = 0,
                slices: int = 8, learnable: bool = True, vertebra_fraction: float = 0.5, first_volume: int = 0,
                **build_overrides) -> Path:
    """A shard folder of ``volumes`` shards; with ``learnable`` vertebra patches hold a bright square;
    ``vertebra_fraction`` of the patches (about) are vertebra (0: all background). Volume keys count
    from ``first_volume`` (folders of other volumes: other values)."""
    cfg = BuildConfig.paper(dtype=dtype, **build_overrides)
    build = cfg.to_dict()
    rng = np.random.default_rng(seed)
    entries = []
    for v in range(volumes):
        n = per_volume + 16 * v  # volumes of different sizes
        labels = (rng.random(n) < vertebra_fraction).astype(np.uint8)
        unit = rng.random((n, 32, 32), dtype=np.float32) * 0.3
        if learnable:
            unit[labels == 1, 8:24, 8:24] += 0.6
        patches = (np.rint(unit * 255).astype(np.uint8) if dtype == "uint8" else unit.astype(np.float16))
        z = np.sort(rng.integers(0, slices, n))
        origin = np.stack([z, rng.integers(0, 100, n), rng.integers(0, 100, n), np.zeros(n, int)], 1)
        counts = [int(c) for c in np.bincount(labels, minlength=2)]
        attrs = {"build": build, "build_key": cfg.content_key(), "case_id": f"case{v}", "volume_key": f"{first_volume + v + 1:064x}",
                 "counts_before": counts, "counts_after": counts, "part": 0, "n_parts": 1, "first_index": 0}
        path = folder / f"case{v}.h5"
        with ShardWriter(path, attrs) as w:
            w.write(patches, labels, origin.astype(np.int32))
        entries.append(shard_entry(path))
    write_json_atomic(folder / MANIFEST, make_manifest(build, cfg.content_key(), entries))
    return folder


def write_dicom_series(folder: Path, a: np.ndarray, spacing, origin) -> None:
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # else GDCM gives every slice its own series
    for z in range(a.shape[0]):
        s = sitk.GetImageFromArray(a[z])
        s.SetSpacing(spacing[:2])
        tags = {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
                "0020|000e": "1.2.826.0.1.3680043.2.1125.2", "0020|0013": str(z + 1),
                "0020|0032": "\\".join(str(v) for v in (origin[0], origin[1], origin[2] + z * spacing[2])),
                "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": f"{spacing[1]}\\{spacing[0]}",
                "0018|0050": str(spacing[2]), "0028|1052": "0", "0028|1053": "1"}
        for k, v in tags.items():
            s.SetMetaData(k, v)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(s)


def write_checkpoint(path: Path, **entries) -> Path:
    """A checkpoint of an untrained OP-convNet (build parameters: no augmentation); ``entries``
    replace any entry (``build=...``, ``model=...``)."""
    import torch

    from train.checkpoint import save_checkpoint
    from train.model import OPConvNet
    torch.manual_seed(0)
    ckpt = {"model": OPConvNet().state_dict(), "epoch": 1, "config": {},
            "build": BuildConfig.paper(angles=(), translations=0).to_dict(), **entries}
    save_checkpoint(path, ckpt)
    return path


def write_case(root: Path, name: str, image: np.ndarray, mask: np.ndarray, suffix: str = ".nii.gz",
               spacing=(0.8, 0.7, 2.5)) -> tuple[Path, Path]:
    """One Decathlon-layout case under ``root``: imagesTr/<name>_0000<suffix>, labelsTr/<name><suffix>."""
    g = lps_geometry(image.shape, spacing=spacing)
    img = root / "imagesTr" / f"{name}_0000{suffix}"
    msk = root / "labelsTr" / f"{name}{suffix}"
    write_volume(img, image, g)
    write_volume(msk, mask, g)
    return img, msk
