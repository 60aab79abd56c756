"""Test of distributed training: two gloo processes on the CPU, as torchrun would start them."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.builders import make_shards
from train.config import TrainConfig
from train.loop import train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, world: int, port: int, shards: str, run_dir: str, out: str) -> None:
    """One rank: torchrun's environment, the library's train(), then this rank's weights to ``out``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = TrainConfig(epochs=2, batch_size=16, init="kaiming", lr=0.005, quiet=True, device="cpu")
    result = train(shards, run_dir, cfg)
    torch.save(result["model"].state_dict(), os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_gloo_processes_train_one_model(tmp_path):
    """Two ranks finish with identical weights; the run folder is written once, by rank 0."""
    shards = make_shards(tmp_path / "shards", volumes=3, per_volume=24)
    run_dir = tmp_path / "run"
    mp.spawn(rank_main, args=(2, free_port(), str(shards), str(run_dir), str(tmp_path)), nprocs=2, join=True)
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert all(torch.equal(w0[k], v) for k, v in torch.load(run_dir / "last.pt", weights_only=True)["model"].items())
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    assert json.loads(rows[0])["train_samples"] == 96  # both ranks' chunks counted: 6 full batches of 16
