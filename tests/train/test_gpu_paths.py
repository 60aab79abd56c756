"""The CUDA paths of training, proven on the CPU where their logic allows: RNG states, resume onto
another device or world size, precision and determinism switches, memory estimate, evaluation."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.builders import make_shards
from train.checkpoint import (
    CheckpointError,
    byte_state,
    cuda_state_for,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from train.config import TrainConfig
from train.data import load_shards, needed_bytes, open_sets, split_patches
from train.loop import batch_note, epoch_generator, evaluate, new_model, train
from train.model import algorithms, fp32_precision
from train.rundir import resume_state

CFG = TrainConfig(epochs=1, batch_size=16, max_steps=1, eval_batch_size=16, seed=3, quiet=True)
HOST_READS = {"aten.item", "aten._local_scalar_dense", "aten.is_nonzero", "aten.nonzero", "aten.bincount"}


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops run inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"), volumes=3, per_volume=24)


@pytest.fixture(scope="module")
def one_epoch(shards, tmp_path_factory) -> Path:
    """A one-step, one-epoch run (last.pt to resume from)."""
    run_dir = tmp_path_factory.mktemp("runs") / "one"
    train(shards, run_dir, CFG)
    return run_dir


def with_fake_cuda_states(run_dir: Path, ranks: int = 8) -> None:
    """Rewrite last.pt as an 8-GPU run would have stored it: one CUDA RNG state per visible GPU."""
    ckpt = load_checkpoint(run_dir / "last.pt")
    ckpt["rng"]["cuda"] = [torch.full((16,), r, dtype=torch.uint8) for r in range(ranks)]
    save_checkpoint(run_dir / "last.pt", ckpt)


def test_rng_states_are_cpu_byte_tensors_whatever_they_were_loaded_as():
    """An RNG state loaded as another dtype becomes a CPU uint8 tensor; one on `meta` is refused by name."""
    state = torch.get_rng_state()
    assert torch.equal(byte_state(state.to(torch.int64)), state)
    with pytest.raises(CheckpointError, match="meta"):
        byte_state(torch.empty(16, dtype=torch.uint8, device="meta"))


def test_cuda_state_of_another_world_size_is_chosen_not_failed():
    """Eight saved GPU states: device 3 gets the 4th; a device beyond a shorter record gets the first."""
    states = [torch.full((16,), r, dtype=torch.uint8) for r in range(8)]
    assert torch.equal(cuda_state_for(states, 3), states[3])
    assert torch.equal(cuda_state_for(states[:1], 5), states[0])


def test_multi_rank_record_restores_on_cpu():
    """A record with eight fake CUDA states restores the CPU state on the CPU without error."""
    state = {"torch": torch.get_rng_state(), "cuda": [torch.zeros(16, dtype=torch.uint8)] * 8}
    expected = torch.rand(3)
    torch.rand(5)
    set_rng_state(state, "cpu")
    assert torch.equal(torch.rand(3), expected)


def test_resume_loads_onto_the_cpu_whatever_the_patch_device(shards, one_epoch, tmp_path):
    """resume_state reads last.pt on the CPU: patches on `meta` (a stand-in for a GPU) and eight
    saved CUDA states neither move the RNG states off the CPU nor fail."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("last.pt", "config.json", "metrics.jsonl", "split.json"):
        (run_dir / name).write_bytes((one_epoch / name).read_bytes())
    with_fake_cuda_states(run_dir)
    ps = load_shards(shards, torch.device("cpu"), log=lambda s: None)
    on_meta = dataclasses.replace(ps, x=torch.empty(ps.x.shape, dtype=ps.x.dtype, device="meta"))
    model = new_model(CFG, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=CFG.lr, momentum=CFG.momentum)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=CFG.lr_step)
    state = resume_state(run_dir, CFG, on_meta, model, opt, sched)
    assert state["epoch"] == 1
    saved = load_checkpoint(run_dir / "last.pt")["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_resume_of_an_eight_gpu_checkpoint_on_cpu_continues(shards, one_epoch, tmp_path):
    """A run whose last.pt holds eight CUDA states resumes on the CPU to its next epoch."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for p in one_epoch.iterdir():
        (run_dir / p.name).write_bytes(p.read_bytes())
    with_fake_cuda_states(run_dir)
    train(shards, run_dir, dataclasses.replace(CFG, epochs=2), resume=True)
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 2


@pytest.mark.parametrize("field", ["compile", "tf32", "deterministic"])
def test_resume_refuses_a_change_of_compile_or_numerics(shards, one_epoch, tmp_path, field):
    """compile, tf32 and deterministic are fixed for a run: a resume changing one is refused, naming it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for p in one_epoch.iterdir():
        (run_dir / p.name).write_bytes(p.read_bytes())
    changed = dataclasses.replace(CFG, epochs=2, **{field: True})
    with pytest.raises(CheckpointError, match=rf"{field}=True \(the run has False\)"):
        train(shards, run_dir, changed, resume=True)


def test_checkpoint_without_the_new_fields_resumes(shards, one_epoch, tmp_path):
    """A last.pt written before tf32 / deterministic existed resumes: a missing field counts as its default."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for p in one_epoch.iterdir():
        (run_dir / p.name).write_bytes(p.read_bytes())
    ckpt = load_checkpoint(run_dir / "last.pt")
    for field in ("tf32", "deterministic"):
        del ckpt["config"][field]
    save_checkpoint(run_dir / "last.pt", ckpt)
    train(shards, run_dir, dataclasses.replace(CFG, epochs=2), resume=True)
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 2


def test_new_switches_are_checked():
    """tf32 and deterministic must be booleans; the error names the field and the value."""
    with pytest.raises(ValueError, match=r"'tf32' is 'yes'; expected True or False"):
        TrainConfig(tf32="yes")
    with pytest.raises(ValueError, match=r"'deterministic' is 1"):
        TrainConfig(deterministic=1)


def test_deterministic_run_on_cpu_equals_the_default(shards, one_epoch, tmp_path):
    """deterministic=True changes nothing on the CPU: the same weights as the default run."""
    train(shards, tmp_path / "det", dataclasses.replace(CFG, deterministic=True))
    a, b = load_checkpoint(one_epoch / "last.pt")["model"], load_checkpoint(tmp_path / "det" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run


def test_algorithms_switch_sets_and_restores_the_flags(monkeypatch):
    """On CUDA, deterministic: cudnn.benchmark off, deterministic kernels, cuBLAS workspace set;
    otherwise cudnn.benchmark on; every flag comes back on exit."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn = torch.backends.cudnn
    before = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    with algorithms("cuda", deterministic=True):
        assert (cudnn.benchmark, cudnn.deterministic) == (False, True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    with algorithms("cuda", deterministic=False):
        assert cudnn.benchmark
    assert (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled()) == before


@pytest.fixture
def precision_flags():
    """Put torch's fp32_precision flags back after the test."""
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
    old = [f.fp32_precision for f in flags]
    yield flags
    for f, v in zip(flags, old):
        f.fp32_precision = v


def test_tf32_switch_uses_the_new_api_where_the_legacy_flag_raises(precision_flags):
    """Once the new API is set, reading allow_tf32 raises (torch 2.13); fp32_precision still switches
    both matmul and cuDNN convolutions and restores them."""
    matmul, conv = precision_flags
    matmul.fp32_precision = "tf32"
    with pytest.raises(RuntimeError, match="legacy and new APIs"):
        torch.backends.cuda.matmul.allow_tf32  # noqa: B018  the trap the old code fell into
    with fp32_precision("cuda", tf32=False):
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
    with fp32_precision("cuda", tf32=True):
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
    assert matmul.fp32_precision == "tf32"
    with fp32_precision("cpu", tf32=True):
        assert matmul.fp32_precision == "tf32" and conv.fp32_precision != "ieee"


def test_memory_estimate_covers_the_index_tensors(shards):
    """needed_bytes covers the patches, labels, split indices and an epoch's permutation the loop
    puts on the device (exceeding them by at most the permutation of the validation patches)."""
    sets = open_sets(shards)
    ps = load_shards(shards, torch.device("cpu"), log=lambda s: None)
    split = split_patches(ps, "volume", 0.2, 0)
    train_idx, val_idx = torch.from_numpy(split["train"]), torch.from_numpy(split["val"])
    shuffled = torch.randperm(len(train_idx), generator=epoch_generator(0, 0))
    perm = train_idx[shuffled]
    held = sum(t.nbytes for t in (ps.x, ps.y, train_idx, val_idx, shuffled, perm))
    assert held <= needed_bytes(sets) <= held + 16 * len(val_idx)
    assert needed_bytes(sets) - ps.x.nbytes == 32 * len(ps)


def test_evaluation_accumulates_on_the_device(shards):
    """evaluate neither calls bincount nor reads a value back per batch, and counts as bincount would."""
    ps = load_shards(shards, torch.device("cpu"), log=lambda s: None)
    model = new_model(CFG, torch.device("cpu"))
    idx = torch.arange(len(ps))
    with OpCounter() as counter:
        _, cm = evaluate(model, ps.x, ps.y, idx, batch_size=7)
    assert not HOST_READS & {k for k, n in counter.ops.items() if n}
    with torch.no_grad():
        pred = model(ps.x[:, None].float() / 255).argmax(1)
    assert torch.equal(cm.view(4), torch.bincount(2 * ps.y + pred, minlength=4))


def test_confusion_json_agrees_with_metrics_jsonl(shards, tmp_path):
    """With channels_last and a max_steps smoke run, confusion.json scores best.pt exactly as
    metrics.jsonl's validation did: same loss, accuracy and patch count."""
    cfg = dataclasses.replace(CFG, epochs=2, max_steps=1, eval_batch_size=8, channels_last=True)
    train(shards, tmp_path / "run", cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = min(rows, key=lambda r: r["val_loss"])
    confusion = json.loads((tmp_path / "run" / "confusion.json").read_text())
    assert confusion["val_loss"] == best["val_loss"] and confusion["val_acc"] == best["val_acc"]
    assert sum(map(sum, confusion["matrix"])) == cfg.max_steps * cfg.eval_batch_size


def test_batch_note_names_the_per_gpu_batch():
    """128 over 8 processes is 16 each, with advice; one process has no note; fewer patches than
    processes is refused."""
    note = batch_note(128, 8)
    assert "16 patches per process" in note and "larger batch_size" in note
    assert batch_note(130, 8).count("16-17") == 1
    assert batch_note(128, 1) is None and "larger" not in batch_note(1024, 8)
    with pytest.raises(ValueError, match="batch_size 4 is smaller than the 8 processes"):
        batch_note(4, 8)
