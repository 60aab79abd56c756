"""The dense engine reproduces the patch engine (the definition) exactly, with and without zero-skip."""

from __future__ import annotations

import pytest
import torch

from infer.dense import DenseOPConvNet, classify_slices, dense_macs_per_pixel, patch_nonzero
from infer.patch_engine import patch_logits, patch_macs_per_pixel, zero_patch_logits
from train.model import PATCH, OPConvNet


def _model(seed: int, scale: float = 1.0) -> OPConvNet:
    torch.manual_seed(seed)
    model = OPConvNet()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model.eval()


def _trained(seed: int) -> OPConvNet:
    """A few SGD steps on random patches and labels, with dropout on, so weights are not at init."""
    model = _model(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(5):
        x = torch.rand(32, 1, PATCH, PATCH, generator=g)
        y = torch.randint(0, 2, (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _slices(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(b, h, w) float32 in [0, 1] with a zero (air) margin like a windowed CT slice."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, h, w, generator=g)
    x[x < 0.3] = 0
    return x


def _close(a: torch.Tensor, ref: torch.Tensor) -> None:
    scale = max(1.0, float(ref.abs().max()))
    assert float((a - ref).abs().max()) < 1e-4 * scale


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_dense_matches_patches_random_weights(scale: float) -> None:
    """Default and larger-variance random weights: dense == patches at every pixel of a batch."""
    model = _model(1, scale)
    x = _slices(3, 40, 48)
    ref = patch_logits(model, x)
    assert float(ref.std()) > (0.01 if scale == 1.0 else 1.0)  # activations are nontrivial
    _close(DenseOPConvNet(model, band_rows=8, tile_cols=16)(x), ref)


def test_dense_matches_patches_trained() -> None:
    """After a few SGD steps the dense engine still equals the patch engine everywhere."""
    model = _trained(2)
    x = _slices(2, 40, 48, seed=3)
    _close(DenseOPConvNet(model, band_rows=8, tile_cols=20)(x), patch_logits(model, x))


def test_corners_borders_and_random_pixels() -> None:
    """The four corners, border pixels and random interior pixels match the patch engine."""
    model = _model(4, 3.0)
    x = _slices(1, 40, 48, seed=5)
    dense, ref = DenseOPConvNet(model)(x), patch_logits(model, x)
    g = torch.Generator().manual_seed(6)
    rows = [0, 0, 39, 39] + torch.randint(0, 40, (20,), generator=g).tolist() + [0] * 5 + [39] * 5
    cols = [0, 47, 0, 47] + torch.randint(0, 48, (20,), generator=g).tolist() + list(range(5)) * 2
    _close(dense[0, :, rows, cols], ref[0, :, rows, cols])


@pytest.mark.parametrize("shape", [(37, 45), (5, 7), (1, 9), (9, 1), (1, 1), (33, 8)])
def test_odd_slice_sizes(shape: tuple[int, int]) -> None:
    """Odd and degenerate slice sizes, several bands and tiles, match the patch engine."""
    model = _model(7, 3.0)
    x = _slices(2, *shape, seed=8)
    _close(DenseOPConvNet(model, band_rows=8, tile_cols=7)(x), patch_logits(model, x))


# (GATHER_SHARE, FC_ROWS): tap products by row runs or gathered; fc in one batch per slice or
# flushed every 7 pixels, in the middle of a band's pixels
SPARSE_PATHS = [(0.0, 4096), (1.01, 4096), (1.01, 7), (0.0, 7)]


@pytest.mark.parametrize("gather_share, fc_rows", SPARSE_PATHS)
def test_need_mask_matches_patch_engine(monkeypatch, gather_share: float, fc_rows: int) -> None:
    """A sparse need mask (with empty bands in between) gives the patch engine's answer."""
    monkeypatch.setattr("infer.dense.GATHER_SHARE", gather_share)
    monkeypatch.setattr("infer.dense.FC_ROWS", fc_rows)
    model = _model(9, 3.0)
    x = _slices(2, 40, 48, seed=10)
    need = torch.rand(2, 40, 48, generator=torch.Generator().manual_seed(11)) < 0.2
    need[0, 8:24] = False  # two whole empty bands: T reuse must restart after them
    need[1] = False  # a slice with nothing needed
    dense = DenseOPConvNet(model, band_rows=8, tile_cols=16)(x, need)
    _close(dense, patch_logits(model, x, need=need))


@pytest.mark.parametrize("gather_share, fc_rows", SPARSE_PATHS)
def test_sparse_need_runs_match_patch_engine(monkeypatch, gather_share: float, fc_rows: int) -> None:
    """Need in separate column blocks, isolated pixels and gaps of every width (run merging, T reuse
    across bands, stage-1 column runs) gives the patch engine's answer at every needed pixel."""
    monkeypatch.setattr("infer.dense.GATHER_SHARE", gather_share)
    monkeypatch.setattr("infer.dense.FC_ROWS", fc_rows)
    model = _model(15, 3.0)
    x = _slices(1, 44, 130, seed=16)
    need = torch.zeros(1, 44, 130, dtype=torch.bool)
    need[0, 2:20, 0:10] = True
    need[0, 12:30, 70:75] = True  # > 2 * HALO columns away: its own stage-1 run
    need[0, 5, 30], need[0, 6, 34], need[0, 7, 45], need[0, 40, 129] = True, True, True, True
    need[0, 9:11, 100:130:3] = True
    dense = DenseOPConvNet(model, band_rows=8, tile_cols=4)(x, need)
    _close(dense, patch_logits(model, x, need=need))


def test_zero_skip_is_exact() -> None:
    """An isolated bright blob: skip on == skip off everywhere, and many pixels are skipped."""
    model = _model(12, 3.0)
    x = torch.zeros(1, 72, 80)
    x[0, 30:34, 40:45] = torch.linspace(0.2, 1.0, 20).view(4, 5)
    need = patch_nonzero(x)
    assert 0 < float(need.float().mean()) < 0.5
    on = classify_slices(model, x, engine="dense", skip_zero=True)
    off = classify_slices(model, x, engine="dense", skip_zero=False)
    _close(on, off)
    _close(on, classify_slices(model, x, engine="patches", skip_zero=True))


def test_patch_nonzero_brute_force() -> None:
    """patch_nonzero equals checking every pixel's zero-padded 31x31 read window directly."""
    x = torch.zeros(2, 45, 37)
    x[0, 3, 5] = 0.5
    x[0, 44, 36] = 1.0
    x[1, 20:22, 30] = 0.1
    padded = torch.nn.functional.pad(x, (16, 15, 16, 15))
    windows = padded.unfold(1, PATCH, 1).unfold(2, PATCH, 1)[..., : PATCH - 1, : PATCH - 1]
    assert torch.equal(patch_nonzero(x), windows.ne(0).flatten(3).any(3))


def test_last_patch_row_and_column_are_never_read() -> None:
    """A pixel whose only nonzero value sits at offset +15 (patch row or column 31) gets exactly the
    zero patch's logits from the patch engine, and patch_nonzero skips it."""
    model = _model(14, 3.0)
    x = torch.zeros(1, 40, 40)
    x[0, 30, 30] = 0.9
    ref = patch_logits(model, x)  # one batch: every all-zero window gives the same bits
    zero = ref[0, :, 0, 0]
    assert torch.equal(ref[0, :, 0, 0], ref[0, :, 39, 0])
    _close(zero, zero_patch_logits(model))
    for r, c in [(15, 15), (15, 20), (15, 39), (20, 15), (39, 15)]:  # 30 = r+15 or 30 = c+15
        assert torch.equal(ref[0, :, r, c], zero), (r, c)
        assert not patch_nonzero(x)[0, r, c]
    assert not torch.equal(ref[0, :, 16, 16], zero) and patch_nonzero(x)[0, 16, 16]


def test_mac_counts_from_layer_shapes() -> None:
    """MACs per pixel equal the layer-by-layer sums of both engines."""
    fc = 1024 * 1024 + 1024 * 256 + 256 * 2
    assert dense_macs_per_pixel() == 64 * 9 + 128 * 64 * 9 + 9 * 256 * 128 + fc == 1_680_448
    patch = 15 * 15 * 64 * 9 + 5 * 5 * 128 * 64 * 9 + 3 * 3 * 256 * 128 * 9 + fc
    assert patch_macs_per_pixel() == patch == 5_938_240


def test_bad_inputs_are_rejected() -> None:
    """Wrong shapes, dtypes and engine names raise ValueError naming what was found."""
    model = _model(13)
    with pytest.raises(ValueError, match="float32"):
        DenseOPConvNet(model)(torch.zeros(2, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="need"):
        DenseOPConvNet(model)(torch.zeros(2, 8, 8), torch.ones(2, 8, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="engine"):
        classify_slices(model, torch.zeros(1, 8, 8), engine="fast")
