"""The cascade engine: exact logits on its lattice (every phase modulo 4), exact wherever a pixel is
not settled, and elsewhere the bilinear interpolation of the lattice's logits, confident there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from infer.cascade import CascadeEngine, lattice_lines, lattice_logits
from infer.cli import main
from infer.dense import DenseOPConvNet, patch_nonzero
from patchstore.io.volume import read_volume, write_volume
from tests.builders import lps_geometry, write_checkpoint
from train.model import OPConvNet


def _net(scale: float = 1.0, seed: int = 0) -> OPConvNet:
    torch.manual_seed(seed)
    net = OPConvNet().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net


def _blobs(shape, seed: int = 0) -> torch.Tensor:
    """(B, H, W) in [0, 1]: zero (windowed-out soft tissue) with a few bright discs and noise on them."""
    g = torch.Generator().manual_seed(seed)
    b, h, w = shape
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    x = torch.zeros(shape)
    for i in range(b):
        for _ in range(3):
            cy, cx, r = (torch.rand(3, generator=g) * torch.tensor([h, w, 8.0])).tolist()
            x[i][(yy - cy) ** 2 + (xx - cx) ** 2 < (r + 4) ** 2] = 0.3 + 0.4 * torch.rand(1, generator=g).item()
    return x * (0.8 + 0.4 * torch.rand(shape, generator=g))


@pytest.mark.parametrize("shape", [(37, 45), (64, 64), (9, 5), (4, 70)])
def test_lattice_logits_equal_the_dense_engine_at_every_phase(shape):
    net = _net(1.5)
    dense = DenseOPConvNet(net)
    x = torch.rand(1, *shape) * (torch.rand(1, *shape) > 0.4)
    ref = dense(x)[0]
    for a in range(4):
        for b in range(4):
            got = lattice_logits(dense, x[0], (a, b))
            assert got.shape == ref[:, a::4, b::4].shape
            torch.testing.assert_close(got, ref[:, a::4, b::4], atol=1e-4, rtol=1e-4)
    # fc only where asked: the other lattice pixels keep the zero patch's logits
    need = np.zeros(ref[:, 2::4, 1::4].shape[1:], bool)
    need[0, 0] = True
    got = lattice_logits(dense, x[0], (2, 1), need)
    torch.testing.assert_close(got[:, 0, 0], ref[:, 2, 1], atol=1e-4, rtol=1e-4)
    assert torch.equal(got[:, ~torch.from_numpy(need)], dense.zero[:, None].expand(2, int((~need).sum())))


@pytest.mark.parametrize("step", [2, 4, 8])
def test_cascade_with_nothing_settled_is_the_dense_engine(step):
    """low and high at the ends: no lattice pixel is confident, every pixel is evaluated exactly."""
    dense = DenseOPConvNet(_net(1.5))
    x = _blobs((2, 40, 52))
    need = patch_nonzero(x)
    cascade = CascadeEngine(dense, step=step, low=1e-12, high=1 - 1e-12)
    torch.testing.assert_close(cascade(x, need), dense(x, need), atol=1e-4, rtol=1e-4)
    assert cascade.evaluated == int(need.sum())


def _check_exact_or_confident_interpolation(cascade: CascadeEngine, x: torch.Tensor, need: torch.Tensor) -> int:
    """Every pixel's logits are the dense engine's, or the pixel is settled: its logit difference is
    the bilinear interpolation of the exact lattice pixels at the corners of its cell, and that is
    below logit(low) or above logit(high). Returns how many settled pixels have a corner that is
    not confident on their side."""
    got, ref = cascade(x, need), cascade.dense(x, need)
    d_ref, d_got = ref[:, 1] - ref[:, 0], got[:, 1] - got[:, 0]
    lo, hi = np.log(cascade.low / (1 - cascade.low)), np.log(cascade.high / (1 - cascade.high))
    rows, cols = lattice_lines(x.shape[1], cascade.step), lattice_lines(x.shape[2], cascade.step)
    inexact = ~torch.isclose(d_got, d_ref, atol=1e-4, rtol=1e-4)
    assert 0 < cascade.evaluated < int(need.sum())
    assert inexact.any()  # some pixels were interpolated
    mixed = 0
    for b, r, c in inexact.nonzero().tolist():
        assert need[b, r, c] and not (r in rows and c in cols)
        i0 = max(0, min(np.searchsorted(rows, r, side="right") - 1, len(rows) - 1))
        j0 = max(0, min(np.searchsorted(cols, c, side="right") - 1, len(cols) - 1))
        i1, j1 = min(i0 + 1, len(rows) - 1), min(j0 + 1, len(cols) - 1)
        wr = 0.0 if i1 == i0 else float(np.clip((r - rows[i0]) / (rows[i1] - rows[i0]), 0, 1))
        wc = 0.0 if j1 == j0 else float(np.clip((c - cols[j0]) / (cols[j1] - cols[j0]), 0, 1))
        corners = d_ref[b, rows[[i0, i1]][:, None], cols[[j0, j1]]]
        top = corners[0, 0] * (1 - wc) + corners[0, 1] * wc
        bottom = corners[1, 0] * (1 - wc) + corners[1, 1] * wc
        expected = float(top * (1 - wr) + bottom * wr)
        assert d_got[b, r, c].item() == pytest.approx(expected, abs=1e-3), (b, r, c, corners)
        assert expected < lo or expected > hi, (b, r, c, expected)
        mixed += bool((corners >= lo).any()) if expected < lo else bool((corners <= hi).any())
    return mixed


@pytest.mark.parametrize("step", [2, 4, 8])
def test_cascade_is_exact_or_a_confident_interpolation_of_its_cell(step):
    """Bright blobs on zero: fewer pixels are evaluated than the zero-skip alone evaluates, and each
    is exact or a confident interpolation."""
    x = _blobs((2, 64, 72), seed=3)
    cascade = CascadeEngine(DenseOPConvNet(_net(3.0, seed=1)), step=step, low=0.1, high=0.9)
    _check_exact_or_confident_interpolation(cascade, x, patch_nonzero(x))


def test_cascade_settles_by_the_interpolation_where_a_corner_is_not_confident():
    """A ramp whose logit rises through logit(high) = 5 between lattice columns: pixels past the
    crossing are settled although their cell's other corners are below it."""
    x = torch.linspace(0, 1, 72).expand(1, 40, 72).contiguous()
    cascade = CascadeEngine(DenseOPConvNet(_net(3.0, seed=0)), step=4, low=1e-9, high=1 / (1 + np.exp(-5.0)))
    assert _check_exact_or_confident_interpolation(cascade, x, torch.ones_like(x, dtype=torch.bool)) > 0


def test_cascade_of_a_slice_thinner_than_half_a_step_is_exact():
    dense = DenseOPConvNet(_net(1.5))
    x = _blobs((1, 40, 2))
    cascade = CascadeEngine(dense, step=4)
    torch.testing.assert_close(cascade(x), dense(x), atol=1e-4, rtol=1e-4)
    assert cascade.evaluated == 80


def test_cascade_refuses_a_step_the_pool_grid_does_not_divide():
    dense = DenseOPConvNet(_net())
    for step in (1, 3, 6, 16):
        with pytest.raises(ValueError, match="cascade step is"):
            CascadeEngine(dense, step=step)
    with pytest.raises(ValueError, match="low=0.6"):
        CascadeEngine(dense, low=0.6)


def test_infer_volume_engine_cascade_gives_the_dense_mask_on_a_phantom_slice(tmp_path):
    """A bone block in soft tissue through the CLI: the cascade's mask and probabilities agree with
    the dense engine's (the probability within 0.05 where interpolated)."""
    shape = (2, 48, 52)
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 30, shape).astype(np.int16)
    hu[:, 14:34, 16:36] = 700
    image = write_volume(tmp_path / "ct.nii.gz", hu, lps_geometry(shape))
    ckpt = write_checkpoint(tmp_path / "m.pt", model=_net(2.0, seed=2).state_dict())
    probs = {}
    for engine in ("dense", "cascade"):
        res = CliRunner().invoke(main, ["volume", str(image), "-m", str(ckpt), "-o", str(tmp_path / f"{engine}.nii.gz"),
                                        "--engine", engine, "--probabilities", str(tmp_path / f"{engine}_p.nii.gz"),
                                        "--postprocess", "none", "--quiet"])
        assert res.exit_code == 0, res.output
        probs[engine] = read_volume(tmp_path / f"{engine}_p.nii.gz").array
    assert np.abs(probs["dense"] - probs["cascade"]).max() < 0.05
    np.testing.assert_array_equal(probs["dense"] > 0.5, probs["cascade"] > 0.5)
