"""Exact fully convolutional OP-convNet: the patch engine's logits for every pixel, ~3.5x fewer MACs.

The strided patch network becomes a stride-1 network on the zero-padded slice, by dilating every
layer by the product of the strides before it; conv3's per-patch zero padding becomes a sum of the
valid taps of T_ab = W3[:, :, a, b] @ P2. The derivation and those layers are in
``infer.dense_layers``; this module runs them over bands of a slice and adds fc1..fc3 as GEMMs
over pixels.

Skip mode (a ``need`` mask): pixel p reads P2 only at p + 4(k, l), k, l in 0..2, so T is computed
only at those positions of needed pixels (one GEMM per row run; on slices with less than
``GATHER_SHARE`` of their pixels needed, such as the cascade's boundary pixels, the positions are
gathered into one GEMM per band), conv1..pool2 only on the column runs of such positions per
stage-1 band, conv3 + pool3 only on the column runs of needed pixels per band and fc only on
needed pixels, queued across bands into GEMMs of at least ``FC_ROWS`` pixels. Exact: uncomputed
positions reach only discarded pixels.
The bookkeeping (runs, row ranges, pixel indices) is NumPy on the host, on a need mask read from
the device at most once per call, so a GPU is never waited for per band or tile.

Memory: everything is pixel-major (channels last) and processed in bands of ``band_rows`` output
rows (defaults by device: ``band_sizes``); per slice only P2 ((H+8) x (W+8) x 128 float32, 139 MB
at 512x512) is kept whole. Band buffers are allocated once and reused (glibc malloc turns repeated
large temporaries into mmap / page-fault storms); the oneDNN conv temporaries of stage 1 stay below
glibc's 32 MB mmap limit for 512-wide slices. Running with MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=-1 is an alternative.

"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from infer.dense_layers import GRID, HALO, TAPS, col_runs, conv3_pool3, row_runs, stage1, used_positions
from infer.patch_engine import (
    PAD_BEFORE,
    check_slices,
    pad_slices,
    patch_logits,
    patch_macs_per_pixel,
    zero_patch_logits,
)
from train.model import PATCH, OPConvNet, fp32_precision

__all__ = [
    "BAND_SIZES",
    "DenseOPConvNet",
    "band_sizes",
    "classify_slices",
    "dense_macs_per_pixel",
    "patch_macs_per_pixel",
    "patch_nonzero",
]


def patch_nonzero(slices: torch.Tensor) -> torch.Tensor:
    """(B, H, W) float -> (B, H, W) bool: does the part of the pixel's patch the network reads hold
    any nonzero value? Pixels answered False get exactly the zero patch's logits.

    conv1 (3x3, stride 2, no padding) has 15 outputs u = 0..14 along each axis; output u reads
    patch rows 2u .. 2u+2, so rows 0 .. 30 are read and row 31 never is (likewise columns). Every
    later layer only sees conv1's output, so the logits depend on the 31x31 window::

        patch row:     0 ........ 16 ........ 30 | 31
        slice row:  r-16 ........  r ...... r+14 | r+15   (never read)

    Exact integer box sum (integral image) of the nonzero indicator over rows r-16 .. r+14 and
    columns c-16 .. c+14, zero outside the slice.
    """
    k = PATCH - 1  # 31: the read window
    nz = F.pad((slices != 0).to(torch.int32), (PAD_BEFORE, k - 1 - PAD_BEFORE) * 2)  # (B, H+30, W+30)
    ii = F.pad(nz.cumsum(1).cumsum(2), (1, 0, 1, 0))  # (B, H+31, W+31) int64
    return (ii[:, k:, k:] - ii[:, :-k, k:] - ii[:, k:, :-k] + ii[:, :-k, :-k]) > 0


def _check_architecture(model: OPConvNet) -> None:
    layers = (model.conv1, model.pool1, model.conv2, model.pool2, model.conv3, model.pool3)
    pair = lambda v: tuple(v) if isinstance(v, tuple) else (v, v)  # noqa: E731
    found = [(pair(x.kernel_size), pair(x.stride), pair(x.padding)) for x in layers]
    expected = [((3, 3), (2, 2), (0, 0)), ((3, 3), (2, 2), (0, 0)), ((3, 3), (1, 1), (0, 0)),
                ((3, 3), (1, 1), (0, 0)), ((3, 3), (1, 1), (1, 1)), ((2, 2), (1, 1), (0, 0))]
    if found != expected:
        raise ValueError(
            f"DenseOPConvNet needs Table 1's layers (kernel, stride, padding) {expected}, got {found}"
        )


FC_ROWS = 4096  # fc GEMMs of sparse bands are batched to at least this many pixels
GATHER_SHARE = 0.2  # tap products are gathered on slices with fewer needed pixels than this share

BAND_SIZES = {"cpu": (16, 32, 64), "cuda": (128, 512, 256)}  # (band_rows, tile_cols, stage1_rows)


def band_sizes(device: torch.device | str) -> tuple[int, int, int]:
    """Default (band_rows, tile_cols, stage1_rows) for a device.

    CPU: small bands and 32-column tiles keep a tile's workspaces in cache (2x faster than 512
    columns on a 2-core CPU). CUDA: large bands, so a 512x512 slice is ~800 kernel launches with
    the zero-skip (~125 without) instead of ~6,000; about 3 GB of fp32 workspaces at 512 columns.
    The logits do not depend on them.
    """
    return BAND_SIZES["cuda" if torch.device(device).type == "cuda" else "cpu"]


def host_mask(need: torch.Tensor) -> np.ndarray:
    """(…) bool tensor -> NumPy bool array on the host: the engine's one read of device data."""
    return need.numpy() if need.device.type == "cpu" else need.to("cpu").numpy()


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array as a tensor on ``device``; to a GPU through pinned memory without waiting."""
    t = torch.from_numpy(a)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


class DenseOPConvNet(nn.Module):
    """Exact stride-1 rewrite of a trained OPConvNet: (B, H, W) slices -> (B, 2, H, W) logits.

    band_rows: output rows per band (>= 8; memory ~ band_rows * W * 55 KB at float32).
    stage1_rows: P2 rows per conv1..pool2 band. tile_cols: columns per conv3 shift-add tile.
    None: ``band_sizes`` of the slices' device. The logits do not depend on the three.
    dtype: the engine's dtype: weights, workspaces and every GEMM (torch.bfloat16: results then
    approximate; meant for GPUs); logits are returned as float32. tf32: let CUDA use TF32
    (approximate); off by default.
    """

    def __init__(self, model: OPConvNet, *, band_rows: int | None = None, stage1_rows: int | None = None,
                 tile_cols: int | None = None, dtype: torch.dtype = torch.float32, tf32: bool = False) -> None:
        super().__init__()
        _check_architecture(model)
        given = {"band_rows": (band_rows, GRID), "stage1_rows": (stage1_rows, 1), "tile_cols": (tile_cols, 1)}
        for name, (value, least) in given.items():
            if value is not None and (not isinstance(value, int) or value < least):
                raise ValueError(f"{name} is {value!r}; expected an integer >= {least} (or None: the device's default)")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype is {dtype}; expected torch.float32, torch.bfloat16 or torch.float16")
        self.band_rows, self.stage1_rows, self.tile_cols = band_rows, stage1_rows, tile_cols
        self.dtype, self.tf32 = dtype, tf32
        g = lambda x: x.detach().to(dtype).clone()  # noqa: E731
        cl = torch.channels_last
        self.register_buffer("w1", g(model.conv1.weight.reshape(model.conv1.out_channels, -1).t()))
        self.register_buffer("b1", g(model.conv1.bias))
        self.register_buffer("w2", g(model.conv2.weight).contiguous(memory_format=cl))
        self.register_buffer("b2", g(model.conv2.bias))
        w3 = model.conv3.weight.detach()  # (256, 128, 3, 3) -> (128, 9*256): column (a*3+b)*256 + o
        self.register_buffer("wt", g(w3.permute(1, 2, 3, 0).reshape(w3.shape[1], -1)))
        bt = torch.zeros(TAPS, w3.shape[0], dtype=w3.dtype, device=w3.device)
        bt[4] = model.conv3.bias.detach()  # centre tap (1, 1) is valid for every output position
        self.register_buffer("bt", g(bt.reshape(-1)))
        c3 = w3.shape[0]
        f1 = model.fc1.weight.detach().reshape(-1, c3, 2, 2).permute(0, 3, 2, 1)  # (1024, t, s, ch)
        self.register_buffer("wf1", g(f1.reshape(f1.shape[0], -1).t()))
        self.register_buffer("bf1", g(model.fc1.bias))
        self.register_buffer("wf2", g(model.fc2.weight.t()))
        self.register_buffer("bf2", g(model.fc2.bias))
        self.register_buffer("wf3", g(model.fc3.weight.t()))
        self.register_buffer("bf3", g(model.fc3.bias))
        self.register_buffer("zero", zero_patch_logits(model))
        self._ws: dict[str, torch.Tensor] = {}
        self._have: np.ndarray | None = None  # (band_rows+8, W+8) bool: T positions in "t"
        self._fc_pending: list[tuple[torch.Tensor, np.ndarray, int]] = []  # (out, pixels, first row)
        self._fc_rows = 0  # rows queued in ``_fcq``, the "fcq" workspace
        self._fcq: torch.Tensor | None = None
        self._gather = False  # this slice's tap products: gathered (sparse need) or by row runs
        self._sizes = BAND_SIZES["cpu"]  # (band_rows, tile_cols, stage1_rows) of the running call

    def sizes(self, device: torch.device | str) -> tuple[int, int, int]:
        """(band_rows, tile_cols, stage1_rows) used on ``device``: the given ones, else its defaults."""
        default = band_sizes(device)
        return tuple(d if v is None else v for v, d in zip((self.band_rows, self.tile_cols, self.stage1_rows), default))

    def _buf(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A reused workspace view of the given shape (grown when too small)."""
        n = 1
        for s in shape:
            n *= s
        old = self._ws.get(name)
        if old is None or old.numel() < n or old.device != self.wt.device or old.dtype != self.dtype:
            old = self._ws[name] = torch.empty(n, device=self.wt.device, dtype=self.dtype)
        return old[:n].view(shape)

    def forward(self, slices: torch.Tensor, need: torch.Tensor | None = None) -> torch.Tensor:
        """slices (B, H, W) float32, need (B, H, W) bool or None -> (B, 2, H, W) float32 logits.

        Pixels with need=False get the all-zero patch's logits without running the network.
        ``need`` may live on the host (the engine then reads nothing back from the device) or on
        the slices' device (read back once per call); the skip bookkeeping runs on the host.
        """
        check_slices(slices, need)
        n_b, h, w = slices.shape
        self._sizes = self.sizes(slices.device)
        need_host = None if need is None else host_mask(need)
        out = self.zero.view(1, 2, 1, 1).expand(n_b, 2, h, w).contiguous()
        self._fc_clear()  # nothing left queued by a call that raised
        with torch.inference_mode(), fp32_precision(slices.device, self.tf32):
            for b in range(n_b):
                self._slice(slices[b].to(self.dtype), None if need is None else need_host[b], out[b])
        return out

    def _slice(self, x: torch.Tensor, need: np.ndarray | None, out: torch.Tensor) -> None:
        """x (H, W), need (H, W) NumPy bool or None; writes the needed pixels of out (2, H, W).

        With a need mask, work is limited to what needed pixels read: conv1..pool2 to the column
        runs of used P2 positions per stage-1 band, T to the row runs of used positions, conv3 /
        pool3 to the column runs of needed pixels per band, fc to the needed pixels. Positions
        left uncomputed hold stale values that only reach pixels whose logits are discarded.
        """
        band_rows, tile_cols, stage1_rows = self._sizes
        h, w = x.shape
        r0, r1, c0, c1 = 0, h, 0, w
        if need is not None:
            rows, cols = np.flatnonzero(need.any(1)), np.flatnonzero(need.any(0))
            if rows.size == 0:
                return
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        rect = pad_slices(x[None])[0, r0 : r1 + PATCH - 2, c0 : c1 + PATCH - 2]  # (hr+30, wc+30)
        hr, wc = r1 - r0, c1 - c0
        band_need = None if need is None else need[r0:r1, c0:c1]
        self._gather = need is not None and need.mean() < GATHER_SHARE
        used = None if need is None else used_positions(band_need)  # (hr+8, wc+8)
        p2 = self._buf("p2", (hr + GRID, wc + GRID, self.wt.shape[0]))
        for y0 in range(0, hr + GRID, stage1_rows):
            y1 = min(y0 + stage1_rows, hr + GRID)
            spans = [(0, wc + GRID)] if used is None else col_runs(used[y0:y1].any(0), 2 * HALO)
            for a, b in spans:
                stage1(rect[y0 : y1 + HALO, a : b + HALO], self.w1, self.b1, self.w2, self.b2,
                        out=p2[y0:y1, a:b])
        any_rows = None if need is None else band_need.any(1)
        prev = False
        for y0 in range(0, hr, band_rows):
            rb = min(band_rows, hr - y0)
            nb = None if need is None else band_need[y0 : y0 + rb]
            if any_rows is not None and not any_rows[y0 : y0 + rb].any():
                prev = False
                continue
            ub = None if used is None else used[y0 : y0 + rb + GRID]
            t = self._tap_products(p2, y0, rb, prev, ub).view(rb + GRID, wc + GRID, 3, 3, -1)
            prev = True
            p3 = self._buf("p3", (rb, wc, 2, 2, t.shape[-1]))
            spans = [(0, wc)] if nb is None else col_runs(nb.any(0), 2 * GRID)
            for a, b in spans:
                for x0 in range(a, b, tile_cols):  # column tiles keep the shift-adds in cache
                    xc = min(tile_cols, b - x0)
                    conv3_pool3(
                        t[:, x0 : x0 + xc + GRID],
                        self._buf("q", (rb, xc + GRID, 3, 3, t.shape[-1])),
                        self._buf("c3", (rb, xc, 3, 3, t.shape[-1])),
                        self._buf("m", (rb, xc, 3, 2, t.shape[-1])),
                        p3[:, x0 : x0 + xc],
                    )
            p3 = p3.view(rb * wc, -1)
            self._fc_write(p3, nb, out[:, r0 + y0 : r0 + y0 + rb, c0:c1])
        self._fc_flush()

    def _tap_products(self, p2: torch.Tensor, y0: int, rb: int, prev: bool,
                      used: np.ndarray | None) -> torch.Tensor:
        """T rows y0 .. y0+rb+8 as (rb+8, wc+8, 9*256), reusing the 8 rows the previous band made.

        used: (rb+8, wc+8) NumPy bool or None (all): positions to compute, one GEMM per row run.
        """
        r, n_t = self._sizes[0], self.wt.shape[1]
        t = self._buf("t", (r + GRID, p2.shape[1], n_t))
        k0 = GRID if prev else 0
        if used is None:
            if prev:  # previous band covered T rows y0-r .. y0+8: its last 8 rows are our first 8
                t[:GRID] = t[r : r + GRID]
            src = p2[y0 + k0 : y0 + rb + GRID].reshape(-1, p2.shape[2])
            torch.addmm(self.bt, src, self.wt, out=t[k0 : rb + GRID].view(-1, n_t))
            return t[: rb + GRID]
        todo = used.copy()
        if prev:  # positions of the previous band's last 8 T rows that we use too: copy them
            keep = used[:GRID] & self._have[r : r + GRID]
            for a, b in col_runs(keep.any(0), GRID):
                t[:GRID, a:b] = t[r : r + GRID, a:b]
            todo[:GRID] &= ~keep
        self._have = np.pad(used, ((0, r + GRID - used.shape[0]), (0, 0)))  # what t now holds
        tk, tc = np.nonzero(todo)  # band rows and columns of the positions to compute
        if tk.size == 0:
            return t[: rb + GRID]
        if not self._gather:  # a dense need: one GEMM per row run, no copies
            for k, a, b in row_runs(todo, 4):
                torch.addmm(self.bt, p2[y0 + k, a:b], self.wt, out=t[k, a:b])
            return t[: rb + GRID]
        # a sparse need (e.g. the cascade's boundary pixels) leaves scattered positions: gather
        # them, one GEMM, scatter back; per-row GEMMs of a few positions each cost mostly call
        # overhead. Chosen per slice, not per band, so that band sizes do not change a bit.
        wp = p2.shape[1]
        src = torch.index_select(p2[y0 : y0 + rb + GRID].reshape(-1, p2.shape[2]), 0,
                                 to_device(tk * wp + tc, p2.device), out=self._buf("tg_in", (tk.size, p2.shape[2])))
        prod = torch.addmm(self.bt, src, self.wt, out=self._buf("tg_out", (tk.size, n_t)))
        t.view(-1, n_t).index_copy_(0, to_device(tk * t.shape[1] + tc, t.device), prod)
        return t[: rb + GRID]

    def _fc_write(self, p3: torch.Tensor, need: np.ndarray | None, out: torch.Tensor) -> None:
        """p3 (rb*wc, 1024) pooled features; fc1..fc3 on needed pixels into out (2, rb, wc).

        need: (rb, wc) NumPy bool or None; its pixel indices go to the device without a wait.
        A band's needed pixels are gathered into a queue and classified with other bands' in one
        GEMM of at least ``FC_ROWS`` rows (or at ``_fc_flush``): a sparse need leaves a band a few
        hundred pixels, and GEMMs that small run at half the rate. ``out`` is written by then.
        """
        if need is None or need.all():
            n = p3.shape[0]
            out.copy_(self._fc(p3, n).view(out.shape[1], out.shape[2], -1).permute(2, 0, 1))
            return
        pix = np.flatnonzero(need)
        if self._fc_rows + pix.size > FC_ROWS:
            self._fc_flush()
        q = self._fcq = self._buf("fcq", (max(FC_ROWS, pix.size), p3.shape[1]))  # kept at its place
        torch.index_select(p3, 0, to_device(pix, p3.device), out=q[self._fc_rows : self._fc_rows + pix.size])
        self._fc_pending.append((out, pix, self._fc_rows))
        self._fc_rows += pix.size
        if self._fc_rows >= FC_ROWS:
            self._fc_flush()

    def _fc_flush(self) -> None:
        """Classify the queued pixels and write their logits where ``_fc_write`` was asked to."""
        if not self._fc_rows:
            return
        logits = self._fc(self._fcq, self._fc_rows).t()  # (2, n)
        for out, pix, start in self._fc_pending:
            idx = to_device(pix, out.device)
            wc = out.shape[2]
            out[:, idx // wc, idx % wc] = logits[:, start : start + pix.size].to(out.dtype)
        self._fc_clear()

    def _fc_clear(self) -> None:
        """An empty fc queue."""
        self._fc_pending, self._fc_rows = [], 0

    def _fc(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """fc1..fc3 on the first n rows of x (rows, 1024) -> (n, 2) logits."""
        x = x[:n]
        h1 = torch.addmm(self.bf1, x, self.wf1, out=self._buf("h1", (n, self.wf1.shape[1]))).relu_()
        h2 = torch.addmm(self.bf2, h1, self.wf2, out=self._buf("h2", (n, self.wf2.shape[1]))).relu_()
        return torch.addmm(self.bf3, h2, self.wf3)


def dense_macs_per_pixel(model: OPConvNet | None = None) -> int:
    """Multiply-accumulates the dense engine spends per pixel, from the layer shapes.

    conv1, conv2: one output position per pixel (out * in * kh * kw); conv3: the 9 taps' 1x1
    products per position (out * in * kh * kw); fc layers in * out. The shift-adds of the valid
    conv3 taps, pools and relus are not multiply-accumulates.
    """
    net = model if model is not None else OPConvNet()
    macs = sum(c.out_channels * (c.in_channels // c.groups) * c.kernel_size[0] * c.kernel_size[1]
               for c in (net.conv1, net.conv2, net.conv3))
    return macs + sum(f.in_features * f.out_features for f in (net.fc1, net.fc2, net.fc3))


def classify_slices(
    model_or_dense: OPConvNet | DenseOPConvNet,
    slices: torch.Tensor,
    *,
    engine: str = "dense",
    skip_zero: bool = True,
    batch: int | None = None,
) -> torch.Tensor:
    """(B, H, W) float32 slices in [0, 1] -> (B, 2, H, W) float32 logits of every pixel's patch.

    engine "dense" (exact fully convolutional) or "patches" (reference, needs an OPConvNet);
    skip_zero: pixels whose read 31x31 window (see patch_nonzero) is all zero get the zero patch's
        logits (exact).
    batch: patches per forward pass of the patch engine (None: ``patch_batch_size`` of the device).
    """
    need = patch_nonzero(slices) if skip_zero else None
    if engine == "patches":
        if not isinstance(model_or_dense, OPConvNet):
            raise ValueError(f"engine 'patches' needs an OPConvNet, got {type(model_or_dense).__name__}")
        return patch_logits(model_or_dense, slices, batch=batch, need=need)
    if engine != "dense":
        raise ValueError(f"engine must be 'dense' or 'patches', got {engine!r}")
    dense = model_or_dense
    if not isinstance(dense, DenseOPConvNet):
        dense = DenseOPConvNet(dense).to(slices.device)
    return dense(slices, need)
