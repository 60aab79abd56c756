"""The dense engine's layers: OP-convNet's strided layers as dilated stride-1 maps, pixel-major.

The strided patch network becomes a stride-1 network on the zero-padded slice ``xp`` (16 before,
15 after), by dilating every layer by the product of the strides before it. For the patch of
pixel (r, c) (= xp[r:r+32, c:c+32]) the patch-local maps are samples of dense maps::

    conv1 3x3/2   c1(u, v) = C1[r+2u, c+2v]   C1 = conv1(xp), stride 1          (H+29, W+29)
    pool1 3x3/2   p1(s, t) = P1[r+4s, c+4t]   P1 = maxpool 3x3, dilation 2       (H+25, W+25)
    conv2 3x3     c2(s, t) = C2[r+4s, c+4t]   C2 = conv2, dilation 4             (H+17, W+17)
    pool2 3x3/1   p2(s, t) = P2[r+4s, c+4t]   P2 = maxpool 3x3, dilation 4       (H+9,  W+9)

conv3 (pad 1) zero-pads each patch's own 3x3 map, so output (s, t) of a patch only sums the taps
(a, b) that land inside it (0 <= s+a-1 <= 2, 0 <= t+b-1 <= 2). With T_ab = W3[:, :, a, b] @ P2
(a 1x1 conv 128 -> 9*256, computed once per position, conv3's bias folded into the always-valid
centre tap)::

    c3(s, t) = sum over valid (a, b) of T_ab[r + 4(s+a-1), c + 4(t+b-1)]

summed rows first, then columns (validity is separable). relu + pool3 (2x2 over the 3x3 map) and
fc1/fc2/fc3 are then GEMMs over pixels (``infer.dense``), with fc1's weight reordered to the
(t, s, channel) order of the pooled map.

Skip mode bookkeeping: pixel p reads P2 only at p + 4(k, l), k, l in 0..2 (``used_positions``);
``col_runs`` / ``row_runs`` turn masks into the column ranges the engine computes. They work on
NumPy masks on the host: the engine reads the need mask from the device once per call, never per
band or tile (on a GPU every such read waits for all queued work).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

HALO = 22  # P2 row y needs padded-slice rows y .. y+22 (conv1 2 + pool1 4 + conv2 8 + pool2 8)
GRID = 8  # pixel r needs P2 rows r, r+4, r+8
TAPS = 9

__all__ = [
    "GRID",
    "HALO",
    "TAPS",
    "col_runs",
    "conv3_pool3",
    "maxpool3",
    "row_runs",
    "stage1",
    "used_positions",
]


def maxpool3(x: torch.Tensor, d: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """(h, w, C) -> (h-2d, w-2d, C): 3x3 max pool, dilation d, stride 1 (rows, then columns)."""
    h, w = x.shape[0] - 2 * d, x.shape[1] - 2 * d
    r = torch.maximum(x[:h], x[d : d + h])
    r = torch.maximum(r, x[2 * d : 2 * d + h], out=r)
    c = torch.maximum(r[:, :w], r[:, d : d + w], out=out)
    return torch.maximum(c, r[:, 2 * d : 2 * d + w], out=c)


def stage1(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
           out: torch.Tensor) -> torch.Tensor:
    """(h, w) padded-slice rows -> out (h-22, w-22, 128) = P2, pixel-major: conv1..pool2, dilated.

    conv1 (one input channel) is a GEMM over the 9 shifted views: (h-2)(w-2) x 9 @ 9 x 64.
    w1: (9, 64); w2: (128, 64, 3, 3) channels last.
    """
    h, w = x.shape[0] - 2, x.shape[1] - 2
    cols = torch.stack([x[a : a + h, b : b + w] for a in range(3) for b in range(3)], dim=-1)
    c1 = torch.addmm(b1, cols.view(-1, 9), w1).view(h, w, -1)  # (h-2, w-2, 64)
    p1 = maxpool3(c1, 2).relu_()  # relu commutes with max
    c2 = F.conv2d(p1.permute(2, 0, 1)[None], w2, b2, dilation=4)  # channels-last in, out
    c2 = c2.contiguous(memory_format=torch.channels_last)[0].permute(1, 2, 0)
    return maxpool3(c2, 4, out=out).relu_()


def _sum_into(out: torch.Tensor, terms: list[torch.Tensor]) -> torch.Tensor:
    torch.add(terms[0], terms[1], out=out)
    for t in terms[2:]:
        out.add_(t)
    return out


def conv3_pool3(
    t: torch.Tensor, q: torch.Tensor, c3: torch.Tensor, m: torch.Tensor, p3: torch.Tensor, step: int = 4
) -> torch.Tensor:
    """conv3 (per-patch zero padding) + relu + pool3 from the tap products T.

    step: the distance of a patch's neighbouring pool2 samples in ``t``: 4 on the dense grid, 1
    on the lattice of one phase (``infer.cascade``); ``t`` then has 2 * step more rows and columns.

    t:  (rb+8, wc+8, 3(a), 3(b), 256) T_ab at P2 positions.       Workspaces:
    q:  (rb, wc+8, 3(s), 3(b), 256) row-summed taps.
    c3: (rb, wc, 3(t), 3(s), 256) conv3 output (s, t) of each pixel's patch.
    m:  (rb, wc, 3(t), 2, 256) max over s pairs.
    p3: (rb, wc, 2(t), 2(s), 256) relu(pool3), returned; fc1 weights use this (t, s, ch) order.
    """
    rb, wc = c3.shape[0], c3.shape[1]
    for s in range(3):  # valid row taps: a = u - s + 1 in [0, 2]
        rows = [t[step * u : step * u + rb, :, u - s + 1] for u in range(3) if 0 <= u - s + 1 <= 2]
        _sum_into(q[:, :, s], rows)
    for tt in range(3):  # valid column taps: b = v - tt + 1 in [0, 2]
        cols = [q[:, step * v : step * v + wc, :, v - tt + 1] for v in range(3) if 0 <= v - tt + 1 <= 2]
        _sum_into(c3[:, :, tt], cols)
    torch.maximum(c3[:, :, :, :2], c3[:, :, :, 1:], out=m)
    torch.maximum(m[:, :, :2], m[:, :, 1:], out=p3)
    return p3.relu_()


def used_positions(need: np.ndarray) -> np.ndarray:
    """(h, w) bool needed pixels -> (h+8, w+8) bool: the P2 positions their patches read.

    Pixel r (band coordinates) reads P2 rows r, r+4, r+8 (its 3x3 pool2 map); likewise columns.
    """
    h, w = need.shape
    rows = np.zeros((h + GRID, w), bool)
    for k in range(3):
        rows[4 * k : 4 * k + h] |= need
    used = np.zeros((h + GRID, w + GRID), bool)
    for k in range(3):
        used[:, 4 * k : 4 * k + w] |= rows
    return used


def col_runs(cols: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """(w,) bool -> [(a, b)]: column ranges covering every True, merging runs at most gap apart."""
    x = np.flatnonzero(cols)
    if x.size == 0:
        return []
    brk = np.flatnonzero(np.diff(x) > gap + 1)
    starts = [int(x[0])] + x[brk + 1].tolist()
    ends = x[brk].tolist() + [int(x[-1])]
    return [(a, b + 1) for a, b in zip(starts, ends)]


def row_runs(mask: np.ndarray, gap: int) -> list[tuple[int, int, int]]:
    """(h, w) bool -> [(row, a, b)]: per row, column ranges covering every True, merging runs at
    most gap apart (one GEMM call costs about as much as a few positions)."""
    m = np.pad(mask, ((0, 0), (1, 1)))
    starts = np.argwhere(m[:, 1:-1] & ~m[:, :-2]).tolist()
    ends = np.argwhere(m[:, 1:-1] & ~m[:, 2:]).tolist()
    runs: list[tuple[int, int, int]] = []
    for (k, a), (_, b) in zip(starts, ends):
        if runs and runs[-1][0] == k and a - runs[-1][2] <= gap:
            runs[-1] = (k, runs[-1][1], b + 1)
        else:
            runs.append((k, a, b + 1))
    return runs
