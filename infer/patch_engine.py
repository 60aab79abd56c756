"""Reference inference engine: cut the 32x32 patch around every pixel and run OP-convNet on it.

This is the definition the fast engine (``infer.dense``) must reproduce. Pixel (r, c) of an axial
slice gets the logits of the patch made of rows r-16 .. r+15 and columns c-16 .. c+15; pixels
outside the slice count as 0 (the preprocessed value of air)::

        c-16        c      c+15
    r-16 +-----------------+
         |                 |
       r |        x        |      x = pixel (r, c); patch = padded[r : r+32, c : c+32]
         |                 |      with padded = slice padded 16 rows/cols before, 15 after
    r+15 +-----------------+
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from train.model import PATCH, OPConvNet, fp32_precision

__all__ = ["PAD_AFTER", "PAD_BEFORE", "PATCH_BATCH", "check_slices", "fp32_precision", "pad_slices",
           "patch_batch_size", "patch_logits", "patch_macs_per_pixel", "zero_patch_logits"]

PAD_BEFORE = PATCH // 2  # 16: rows above / columns left of the centre pixel
PAD_AFTER = PATCH - PAD_BEFORE - 1  # 15: rows below / columns right of it


# Patches per forward pass of the patch engine: on a GPU a pass of 16k patches is ~1 GB of fp32
# activations and long enough to hide the gather; on a CPU 4k (16 MB of gathered patches) as before.
PATCH_BATCH = {"cpu": 4096, "cuda": 16384}


def patch_batch_size(device: torch.device | str) -> int:
    """The patch engine's default patches per forward pass on ``device``."""
    return PATCH_BATCH["cuda" if torch.device(device).type == "cuda" else "cpu"]


def check_slices(slices: torch.Tensor, need: torch.Tensor | None = None) -> None:
    """Raise ValueError unless slices is (B, H, W) float32 and need is None or (B, H, W) bool."""
    if slices.ndim != 3 or slices.dtype != torch.float32:
        raise ValueError(
            f"slices must be a (B, H, W) float32 tensor, got shape {tuple(slices.shape)} "
            f"dtype {slices.dtype}"
        )
    if need is not None and (need.shape != slices.shape or need.dtype != torch.bool):
        raise ValueError(
            f"need must be a {tuple(slices.shape)} bool tensor like slices, got shape "
            f"{tuple(need.shape)} dtype {need.dtype}"
        )


def pad_slices(slices: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> (B, H+31, W+31) zero-padded so that patch(r, c) = padded[:, r:r+32, c:c+32]."""
    return F.pad(slices, (PAD_BEFORE, PAD_AFTER, PAD_BEFORE, PAD_AFTER))


def zero_patch_logits(model: nn.Module) -> torch.Tensor:
    """(2,) float32 logits of the all-zero patch (eval mode; the model is not modified)."""
    net = copy.deepcopy(model).eval()
    p = next(net.parameters())
    with torch.inference_mode():
        logits = net(torch.zeros(1, 1, PATCH, PATCH, device=p.device, dtype=p.dtype))[0].float()
    return logits.clone()  # a normal tensor, usable outside inference mode


def patch_logits(
    model: nn.Module,
    slices: torch.Tensor,
    *,
    batch: int | None = None,
    need: torch.Tensor | None = None,
    channels_last: bool = True,
    tf32: bool = False,
) -> torch.Tensor:
    """Logits of the 32x32 patch around every pixel, by literally cutting out the patches.

    slices: (B, H, W) float32 in [0, 1], on the model's device.
    batch: patches per forward pass (None: ``patch_batch_size`` of the slices' device).
    need: (B, H, W) bool or None (all pixels), on the host or the device. Pixels with need=False
        are not run through the network and get the all-zero patch's logits.
    tf32: let CUDA use TF32 (approximate; off: true fp32).
    Returns (B, 2, H, W) float32 logits (model in eval mode: no dropout; the caller's model is
    left untouched).
    """
    check_slices(slices, need)
    batch = patch_batch_size(slices.device) if batch is None else batch
    if batch < 1:
        raise ValueError(f"batch must be a positive number of patches, got {batch}")
    n_b, h, w = slices.shape
    net = copy.deepcopy(model).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    zero = zero_patch_logits(net)
    out = zero.to(slices.device).repeat(n_b * h * w, 1)  # (B*H*W, 2), pixel-major
    with torch.inference_mode(), fp32_precision(slices.device, tf32):
        views = pad_slices(slices).unfold(1, PATCH, 1).unfold(2, PATCH, 1)  # (B, H, W, 32, 32)
        if need is None:
            flat = torch.arange(n_b * h * w, device=slices.device)
        else:
            flat = need.reshape(-1).nonzero().squeeze(1).to(slices.device)  # one read of a device mask
        for start in range(0, flat.numel(), batch):
            idx = flat[start : start + batch]
            b, rc = idx // (h * w), idx % (h * w)
            x = views[b, rc // w, rc % w].unsqueeze(1)  # (n, 1, 32, 32) gathered copy
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out[idx] = net(x).float()
    return out.view(n_b, h, w, 2).permute(0, 3, 1, 2).contiguous()


def patch_macs_per_pixel(model: OPConvNet | None = None) -> int:
    """Multiply-accumulates the patch engine spends per pixel, from the layer shapes.

    Convolutions count out_h * out_w * out_ch * in_ch/groups * kh * kw (conv3's zero-padded taps
    included, as the network computes them); linear layers count in * out.
    """
    net = model if model is not None else OPConvNet()
    macs = 0
    x = torch.zeros(1, 1, PATCH, PATCH)
    with torch.inference_mode():
        for name in ("conv1", "pool1", "conv2", "pool2", "conv3", "pool3"):
            layer = getattr(net, name)
            x = layer(x.to(next(net.parameters()).device))
            if isinstance(layer, nn.Conv2d):
                kh, kw = layer.kernel_size
                per_pos = layer.out_channels * (layer.in_channels // layer.groups) * kh * kw
                macs += x.shape[-2] * x.shape[-1] * per_pos
    for fc in (net.fc1, net.fc2, net.fc3):
        macs += fc.in_features * fc.out_features
    return macs
