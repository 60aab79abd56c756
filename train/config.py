"""Training parameters: one frozen dataclass, one field per `train run` option.

Defaults are the paper's schedule (section IV): SGD with momentum 0.9, learning rate 0.01
dropped x0.1 every 10 epochs, L2 weight decay 1e-4, mini-batch 128, 30 epochs, dropout 0.5,
80 % / 20 % train / validation split; but Kaiming (He) initialisation and a split by volume.
The paper's N(0, 0.01) weights leave the loss at 0.693 for epochs on small data (README,
"Quality"), and a random split of overlapping patches puts near-copies of validation patches in
training. ``PAPER`` (`train run --paper`) restores both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

SPLITS = ("volume", "patch")
INITS = ("paper", "kaiming")
DEVICES = ("auto", "cpu", "cuda")
AMPS = ("none", "bf16")

# The paper's training where the defaults differ from it.
PAPER = {"init": "paper", "split_by": "patch"}

# Fields that may change when a run is resumed: they don't change what is computed, or (epochs)
# only how far. Any other difference would make the resumed run a different experiment. Not
# `compile` (compiled dropout draws other masks than eager dropout from the same seed), `tf32` or
# `deterministic` (other arithmetic, other kernels). `device` may change (a run moved from one
# machine to another) at the price of the last bits.
RESUMABLE_CHANGES = ("epochs", "device", "verify", "quiet")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (besides the shards and the output folder)."""

    val_fraction: float = 0.2
    split_by: str = "volume"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.01
    lr_step: int = 10
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    dropout: float = 0.5
    init: str = "kaiming"
    init_std: float = 0.01
    seed: int = 0
    max_steps: int = 0
    eval_batch_size: int = 1024
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = True  # faster for these small convolutions (CPU: +20 %, tools/bench_train.py)
    compile: bool = False
    tf32: bool = False  # CUDA: TF32 matmuls and convolutions (faster, ~10 mantissa bits); CPU: no effect
    deterministic: bool = False  # deterministic kernels, no cudnn.benchmark (bit-reproducible on a GPU)
    verify: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        checks = [
            (0 < self.val_fraction < 1, "val_fraction", self.val_fraction, "a fraction strictly between 0 and 1"),
            (self.split_by in SPLITS, "split_by", self.split_by, f"one of {SPLITS}"),
            (self.epochs >= 1, "epochs", self.epochs, "an integer >= 1"),
            (self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1"),
            (self.lr > 0, "lr", self.lr, "a positive learning rate"),
            (self.lr_step >= 1, "lr_step", self.lr_step, "an integer >= 1 (epochs between drops)"),
            (0 < self.lr_gamma <= 1, "lr_gamma", self.lr_gamma, "a factor in (0, 1]"),
            (0 <= self.momentum < 1, "momentum", self.momentum, "a value in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", self.weight_decay, "a value >= 0"),
            (0 <= self.dropout < 1, "dropout", self.dropout, "a probability in [0, 1)"),
            (self.init in INITS, "init", self.init, f"one of {INITS}"),
            (self.init_std > 0, "init_std", self.init_std, "a positive standard deviation"),
            (0 <= self.seed < 2**63, "seed", self.seed, "an integer in [0, 2**63)"),
            (self.max_steps >= 0, "max_steps", self.max_steps, "an integer >= 0 (0: no limit)"),
            (self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "an integer >= 1"),
            (self.device in DEVICES, "device", self.device, f"one of {DEVICES}"),
            (self.amp in AMPS, "amp", self.amp, f"one of {AMPS}"),
            *[(isinstance(getattr(self, f), bool), f, getattr(self, f), "True or False")
              for f in ("channels_last", "compile", "tf32", "deterministic", "verify", "quiet")],
        ]
        for ok, field, found, expected in checks:
            if not ok:
                raise ValueError(f"Training parameter {field!r} is {found!r}; expected {expected}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Unknown training parameters {unknown}; expected a subset of {sorted(names)}")
        return cls(**d)
