"""The dense engine's GPU options, proven on the CPU: bf16 built in, band sizes, host reads of the
zero-skip bookkeeping, and the inference pipeline's batch, prefetch and device checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from infer.dense import BAND_SIZES, DenseOPConvNet, band_sizes
from infer.patch_engine import patch_batch_size
from infer.predict import dense_engine, vertebra_probability
from patchstore.config import BuildConfig
from train.model import OPConvNet, cpu_has_native_bf16

CPU = torch.device("cpu")
HOST_READS = ("aten.item", "aten._local_scalar_dense", "aten.is_nonzero", "aten.nonzero")
BF16_TOLERANCE = 0.03  # of the largest |logit|: bf16 keeps 8 mantissa bits; measured 1.7 % here


class Recorder(TorchDispatchMode):
    """Counts ATen ops, the dtypes of every tensor reaching addmm / convolution (out= included),
    and the copies to the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[str, int] = {}
        self.gemm_dtypes: set[torch.dtype] = set()
        self.to_cpu = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        self.ops[name] = self.ops.get(name, 0) + 1
        if name in ("aten.addmm", "aten.mm", "aten.conv2d", "aten.convolution"):
            self.gemm_dtypes |= {a.dtype for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
        if name in ("aten.to", "aten._to_copy") and str(kwargs.get("device")) == "cpu":
            self.to_cpu += 1
        return func(*args, **kwargs)


def _model(seed: int = 1) -> OPConvNet:
    """Kaiming weights: logits of a few units, so a tolerance relative to them means something."""
    torch.manual_seed(seed)
    model = OPConvNet().eval()
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight)
    return model


def _slices(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, h, w, generator=g)
    x[x < 0.3] = 0
    return x


def _sparse_need(shape: tuple[int, int, int]) -> torch.Tensor:
    """Separate blocks, isolated pixels and an empty band: every path of the skip bookkeeping."""
    need = torch.rand(shape, generator=torch.Generator().manual_seed(5)) < 0.15
    need[:, 10:20] = False
    need[0, 2:8, 30:40] = True
    return need


def test_bf16_engine_computes_every_gemm_in_bf16():
    """bf16: every buffer but the zero-patch logits is bf16, every tensor reaching addmm or the
    convolution is bf16, and the float32 logits stay within 3 % of the largest fp32 logit."""
    model, x = _model(), _slices(1, 26, 30)
    engine = dense_engine(model, CPU, bf16=True)
    assert {n: b.dtype for n, b in engine.named_buffers() if n != "zero"} == {
        n: torch.bfloat16 for n, _ in engine.named_buffers() if n != "zero"}
    with Recorder() as rec:
        got = engine(x)
    assert rec.ops.get("aten.addmm", 0) > 0 and rec.ops.get("aten.conv2d", 0) + rec.ops.get("aten.convolution", 0) > 0
    assert rec.gemm_dtypes == {torch.bfloat16}
    ref = dense_engine(model, CPU)(x)
    assert got.dtype == torch.float32
    assert float((got - ref).abs().max()) <= BF16_TOLERANCE * float(ref.abs().max())
    assert not torch.equal(got, ref)  # bf16 did run


def test_fp32_engine_stays_fp32():
    """Without bf16 every GEMM input is float32."""
    with Recorder() as rec:
        dense_engine(_model(), CPU)(_slices(1, 12, 14))
    assert rec.gemm_dtypes == {torch.float32}


def test_band_sizes_do_not_change_the_logits():
    """Tiny bands and tiles and the GPU's large ones give bit-identical logits, with and without a need mask."""
    model, x = _model(2), _slices(1, 36, 48, seed=3)
    need = _sparse_need(x.shape)
    small = DenseOPConvNet(model, band_rows=8, tile_cols=5, stage1_rows=3)
    large = DenseOPConvNet(model, band_rows=128, tile_cols=512, stage1_rows=256)
    assert torch.equal(small(x), large(x))
    assert torch.equal(small(x, need), large(x, need))


def test_band_size_defaults_depend_on_the_device():
    """CUDA's default bands are larger than the CPU's; given sizes apply on every device."""
    assert band_sizes("cpu") == BAND_SIZES["cpu"] and band_sizes(torch.device("cuda", 1)) == BAND_SIZES["cuda"]
    assert all(g > c for g, c in zip(BAND_SIZES["cuda"], BAND_SIZES["cpu"]))
    engine = DenseOPConvNet(_model(), band_rows=24)
    assert engine.sizes("cuda") == (24, *BAND_SIZES["cuda"][1:]) and engine.sizes("cpu")[0] == 24
    assert patch_batch_size("cuda") > patch_batch_size("cpu")


def test_bad_band_sizes_are_refused():
    """A band of fewer than 8 rows or a non-integer tile is refused naming the field."""
    with pytest.raises(ValueError, match=r"band_rows is 4; expected an integer >= 8"):
        DenseOPConvNet(_model(), band_rows=4)
    with pytest.raises(ValueError, match=r"tile_cols is 2\.5"):
        DenseOPConvNet(_model(), tile_cols=2.5)


def test_skip_bookkeeping_reads_the_device_at_most_once_per_call():
    """With a sparse need mask over 2 slices: no nonzero, item or tolist on tensors, and at most one
    copy to the host per call (the need mask); before, such a call made over a hundred."""
    model, x = _model(3), _slices(2, 40, 52, seed=4)
    need = _sparse_need(x.shape)
    engine = DenseOPConvNet(model, band_rows=8, tile_cols=16)
    calls = []
    original = torch.Tensor.tolist

    def counted(t):
        calls.append(t.shape)
        return original(t)

    torch.Tensor.tolist = counted
    try:
        with Recorder() as rec:
            engine(x, need)
    finally:
        torch.Tensor.tolist = original
    assert {k: rec.ops.get(k, 0) for k in HOST_READS} == dict.fromkeys(HOST_READS, 0)
    assert calls == [] and rec.to_cpu <= 1


def _ct(shape=(4, 28, 26)) -> np.ndarray:
    """(Z, Y, X) HU: air around a noisy body holding a bright bone."""
    z, h, w = shape
    rng = np.random.default_rng(0)
    hu = rng.normal(-900, 30, shape).astype(np.float32)
    hu[:, h // 5 : h - h // 5, w // 5 : w - w // 5] = rng.normal(40, 30, (z, h - 2 * (h // 5), w - 2 * (w // 5)))
    hu[:, h // 3 : h - h // 3, w // 3 : w - w // 3] = 800
    return hu


BUILD = BuildConfig.paper(angles=(), translations=0)


def test_prefetch_gives_identical_probabilities():
    """Preparing the next batch in a thread changes no bit of the probabilities or the skipped share."""
    model, hu = _model(4), _ct()
    a = vertebra_probability(model, BUILD, hu, batch_slices=2, body=True, prefetch=False)
    b = vertebra_probability(model, BUILD, hu, batch_slices=2, body=True, prefetch=True)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] > 0


def test_patch_batch_and_band_sizes_reach_the_engines():
    """patch_batch and band sizes passed to vertebra_probability leave the probabilities unchanged."""
    model, hu = _model(5), _ct((2, 20, 18))
    ref, _ = vertebra_probability(model, BUILD, hu, engine="patches")
    small, _ = vertebra_probability(model, BUILD, hu, engine="patches", patch_batch=97)
    assert np.array_equal(ref, small)
    a, _ = vertebra_probability(model, BUILD, hu, band_rows=8, tile_cols=3, stage1_rows=5)
    b, _ = vertebra_probability(model, BUILD, hu)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("engine", ["dense", "cascade"])
def test_bf16_inference_on_cpu_agrees_with_fp32(engine):
    """bf16 on a CPU device (dense engine and the cascade built on it): probabilities within 0.05
    of fp32's, and not all equal (bf16 did run)."""
    model, hu = _model(5), _ct((2, 30, 34))
    ref, _ = vertebra_probability(model, BUILD, hu, engine=engine, device=CPU)
    got, _ = vertebra_probability(model, BUILD, hu, engine=engine, bf16=True, device=CPU)
    assert np.abs(got - ref).max() < 0.05 and not np.array_equal(got, ref)


def test_cpu_bf16_support_is_read_from_the_cpu_flags(tmp_path):
    """avx512_bf16, amx_bf16 (x86) or bf16 (Arm) among the flags: native; none: emulated; no
    flags line or no file: unknown."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_has_native_bf16(str(info)) is True
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_tile amx_bf16\n")
    assert cpu_has_native_bf16(str(info)) is True
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")  # an Arm core
    assert cpu_has_native_bf16(str(info)) is True
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw\n")
    assert cpu_has_native_bf16(str(info)) is False
    info.write_text("processor\t: 0\nmodel name\t: something\n")
    assert cpu_has_native_bf16(str(info)) is None
    assert cpu_has_native_bf16(str(tmp_path / "absent")) is None

