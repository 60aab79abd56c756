"""OP-convNet exactly as Table 1 of Qadri et al. (IEEE Access 2021), 1,682,178 learnables.

    input 32x32x1
    conv1 3x3/2, 64        -> 15x15x64    (no padding)
    maxpool 3x3/2          ->  7x7x64
    conv2 3x3/1, 128       ->  5x5x128    (no padding)
    maxpool 3x3/1          ->  3x3x128
    conv3 3x3/1, 256, pad1 ->  3x3x256
    maxpool 2x2/1          ->  2x2x256
    fc1 1024 -> 1024, dropout 0.5 -> fc2 256, dropout 0.5 -> fc3 2 (softmax in the loss)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

PATCH = 32
N_CLASSES = 2


class OPConvNet(nn.Module):
    """Patch classifier: (B, 1, 32, 32) float in [0, 1] -> (B, 2) logits (background, vertebra)."""

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 3, stride=2)
        self.pool1 = nn.MaxPool2d(3, stride=2)
        self.conv2 = nn.Conv2d(64, 128, 3)
        self.pool2 = nn.MaxPool2d(3, stride=1)
        self.conv3 = nn.Conv2d(128, 256, 3, padding=1)
        self.pool3 = nn.MaxPool2d(2, stride=1)
        self.fc1 = nn.Linear(256 * 2 * 2, 1024)
        self.fc2 = nn.Linear(1024, 256)
        self.fc3 = nn.Linear(256, N_CLASSES)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 32, 32) -> (B, 256, 2, 2), the input of fc1."""
        x = self.pool1(torch.relu(self.conv1(x)))
        x = self.pool2(torch.relu(self.conv2(x)))
        return self.pool3(torch.relu(self.conv3(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        x = self.drop1(torch.relu(self.fc1(x)))
        x = self.drop2(torch.relu(self.fc2(x)))
        return self.fc3(x)


def init_paper(model: nn.Module, std: float = 0.01, generator: torch.Generator | None = None) -> None:
    """The paper's initialisation: weights from N(0, std), biases zero (section IV)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                m.weight.normal_(0.0, std, generator=generator)
                m.bias.zero_()


def count_learnables(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def pick_device(name: str) -> torch.device:
    """auto: this process's GPU (LOCAL_RANK under torchrun) when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device 'cuda' requested but torch {torch.__version__} sees no CUDA GPU; use --device cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    return device


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Does this CPU multiply bfloat16 in hardware (x86: AVX512-BF16 or AMX-BF16; Arm: BF16)?
    None: unknown (no /proc/cpuinfo, or no flags line in it). Without it, oneDNN emulates bf16
    GEMMs, slower than fp32."""
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return None
    lines = [line.split(":", 1) for line in text.splitlines() if line.startswith(("flags", "Features"))]
    if not lines or len(lines[0]) < 2:
        return None
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(lines[0][1].split()))


@contextlib.contextmanager
def fp32_precision(device: torch.device | str, tf32: bool = False) -> Iterator[None]:
    """CUDA matmuls and cuDNN convolutions in TF32 (``tf32``) or true fp32 inside the block; the
    previous settings come back on exit. Other devices: nothing changes.

    Uses torch's ``fp32_precision`` API where it exists (torch >= 2.9) and then never touches the
    legacy ``allow_tf32`` flags: on torch 2.13, reading ``torch.backends.cuda.matmul.allow_tf32``
    raises once anything set the new API (pytorch.org/docs/main/notes/cuda.html#tensorfloat-32-tf32).
    PyTorch lets cuDNN convolutions use TF32 by default, which breaks exactness checks.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    new_api = hasattr(torch.backends.cuda.matmul, "fp32_precision")
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn.conv if new_api else torch.backends.cudnn)
    name, value = ("fp32_precision", "tf32" if tf32 else "ieee") if new_api else ("allow_tf32", tf32)
    old = [getattr(f, name) for f in flags]
    try:
        for f in flags:
            setattr(f, name, value)
        yield
    finally:
        for f, v in zip(flags, old):
            setattr(f, name, v)


@contextlib.contextmanager
def algorithms(device: torch.device | str, deterministic: bool = False) -> Iterator[None]:
    """Kernel choice inside the block; the previous settings come back on exit.

    deterministic: cuDNN's deterministic algorithms without autotuning (cudnn.benchmark off) and
        ``torch.use_deterministic_algorithms`` (warn_only: an op without a deterministic kernel
        warns, naming itself, instead of stopping the run). On CUDA, cuBLAS then needs
        CUBLAS_WORKSPACE_CONFIG set before its first matmul (docs.nvidia.com/cuda/cublas,
        "Results reproducibility"): set here to ":4096:8" unless already set.
    otherwise, on CUDA: cudnn.benchmark (the fastest convolution algorithms for the fixed batch
        shapes; they may differ between runs, so results are not bit-reproducible).
    """
    cudnn = torch.backends.cudnn
    old = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
           torch.is_deterministic_algorithms_warn_only_enabled())
    cuda = torch.device(device).type == "cuda"
    try:
        if deterministic:
            if cuda:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            cudnn.benchmark, cudnn.deterministic = False, True
            torch.use_deterministic_algorithms(True, warn_only=True)
        elif cuda:
            cudnn.benchmark = True
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = old[0], old[1]
        torch.use_deterministic_algorithms(old[2], warn_only=old[3])
