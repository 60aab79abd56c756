"""`infer mine`: the patches a trained model gets wrong, as shards to train on next (hard examples).

    dataset with masks (Decathlon folder or CSV) + checkpoint
      per volume:  every pixel of the working grid classified as `infer volume` does (raw, no
                   post-processing), and labelled by the checkpoint's rule (stages.patches.rule_mask)
                   FP: predicted vertebra, label 0      FN: predicted background, label 1
                   (only pixels whose whole patch lies inside the slice, as a build's patches do)
                   up to ``per_volume`` of them: half FP, half FN, a kind short of its half leaves
                   the rest to the other; sampled from (seed, volume key)
                   their patches: view 0 under the build's preprocessing, top-left (r - n/2, c - n/2)
      -> one shard per volume: the checkpoint's build parameters (so `train run shards/ mined/`
         accepts them), the build's volume key (a split by volume keeps them with their volume),
         attribute "mined" = {checkpoint SHA-256, FP and FN found and kept}
      -> manifest.json, written last

The output is an ordinary shard folder: `patchstore verify` and `info` read it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from infer.predict import grid_probability, load_model
from patchstore.build import Job, make_jobs, volume_seed
from patchstore.config import BuildConfig
from patchstore.files import confined, file_sha256, write_json_atomic
from patchstore.lock import folder_lock
from patchstore.io.volume import read_case
from patchstore.stages.patches import rule_mask
from patchstore.stages.preprocess import preprocess
from patchstore.stages.resample import PlaneGrid, plane_grid, to_grid_image, to_grid_mask
from patchstore.store.manifest import MANIFEST, make_manifest, shard_entry
from patchstore.store.shard import ShardWriter

MINE_STREAM = 7  # child stream of the volume seed: independent of the build's draws


class MineError(ValueError):
    """Mining can't start or go on: the message names the file and the problem."""


@dataclass(frozen=True)
class Mistakes:
    """(z, row, col) working-grid pixel centres of the kept mistakes and their labels."""

    zrc: np.ndarray  # (K, 3) int64
    labels: np.ndarray  # (K,) uint8: 0 at false positives, 1 at false negatives
    found: tuple[int, int]  # false positives, false negatives of the whole volume


def find_mistakes(pred: np.ndarray, label: np.ndarray, n: int, per_volume: int,
                  rng: np.random.Generator) -> Mistakes:
    """(Z, H, W) bool predictions and labels on the working grid -> a seeded sample of mistakes.

    A pixel (r, c) qualifies when its patch, rows r - n/2 .. r + n/2 - 1, lies in the slice.
    """
    h = n // 2
    inside = np.zeros(pred.shape[1:], bool)
    inside[h:pred.shape[1] - h + 1, h:pred.shape[2] - h + 1] = True
    kinds = [np.argwhere(pred & ~label & inside), np.argwhere(~pred & label & inside)]  # FP, FN
    found = (len(kinds[0]), len(kinds[1]))
    quota = [min(found[0], per_volume // 2), min(found[1], per_volume - per_volume // 2)]
    spare = per_volume - sum(quota)
    for k in (0, 1):  # a kind short of its half leaves the rest to the other
        extra = min(spare, found[k] - quota[k])
        quota[k] += extra
        spare -= extra
    picks = [kind[np.sort(rng.choice(len(kind), q, replace=False))] for kind, q in zip(kinds, quota)]
    zrc = np.concatenate(picks).astype(np.int64)
    labels = np.concatenate([np.zeros(quota[0], np.uint8), np.ones(quota[1], np.uint8)])
    order = np.lexsort((zrc[:, 2], zrc[:, 1], zrc[:, 0]))
    return Mistakes(zrc[order], labels[order], found)


def cut_patches(hu: np.ndarray, grid: PlaneGrid, cfg: BuildConfig, zrc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, n, n) stored-dtype patches of view 0 centred (as inference centres them) on the (K, 3)
    working-grid pixels ``zrc``, and their (K, 4) int32 origins (z, top-left row, col, view 0)."""
    n, h = cfg.patch, cfg.patch // 2
    out = np.empty((len(zrc), n, n), np.dtype(cfg.dtype))
    for z in np.unique(zrc[:, 0]):
        sel = np.flatnonzero(zrc[:, 0] == z)
        stored = preprocess(to_grid_image(grid, hu[z:z + 1]), cfg)[0]
        for k in sel:
            r, c = zrc[k, 1] - h, zrc[k, 2] - h
            out[k] = stored[r:r + n, c:c + n]
    origin = np.column_stack([zrc[:, 0], zrc[:, 1] - h, zrc[:, 2] - h, np.zeros(len(zrc), np.int64)])
    return out, origin.astype(np.int32)


def mine_volume(job: Job, model, cfg: BuildConfig, per_volume: int, seed: int, device: torch.device,
                progress: Callable[[int], object] | None = None) -> tuple:
    """One volume's mistakes: patches (K, n, n), labels (K,), origins (K, 4), the counts, and the
    geometry record a build's shard carries."""
    case = read_case(job.case.image, job.case.mask, cfg.labels)
    grid = plane_grid(case.image.shape[1:], case.geometry.spacing_zyx[1:], cfg.pixel_mm)
    pred = np.empty((case.image.shape[0],) + grid.shape, bool)
    for z0, p, _ in grid_probability(model, cfg, case.image, grid, device=device):
        pred[z0:z0 + len(p)] = p > 0.5
        if progress:
            progress(len(p))
    label = np.concatenate([rule_mask(to_grid_mask(grid, case.mask[z0:z0 + 16]), cfg.patch, cfg.label_rule)
                            for z0 in range(0, case.mask.shape[0], 16)])
    rng = np.random.default_rng(np.random.SeedSequence(volume_seed(seed, job.volume_key).entropy,
                                                       spawn_key=(MINE_STREAM,)))
    found = find_mistakes(pred, label, cfg.patch, per_volume, rng)
    patches, origin = cut_patches(case.image, grid, cfg, found.zrc)
    geometry = {"canonical": case.geometry.to_dict(), "source": case.source.to_dict(),
                "working": {"shape_yx": list(grid.shape), "spacing_yx": list(grid.spacing)}}
    return patches, found.labels, origin, found, geometry


def mine(dataset: str | os.PathLike, checkpoint: str | os.PathLike, out: str | os.PathLike, *, per_volume: int = 5000,
         seed: int = 0, device: torch.device | None = None, log: Callable[[str], None] = print,
         progress: Callable[[int], object] | None = None) -> dict:
    """Write the mistakes of ``checkpoint`` on every volume of ``dataset`` as a shard folder ``out``;
    returns its manifest."""
    out = Path(out)
    if (out / MANIFEST).exists():
        raise MineError(f"{out}: holds a shard set already; expected a new or empty folder")
    if per_volume < 1:
        raise MineError(f"per_volume is {per_volume}; expected an integer >= 1")
    device = device or torch.device("cpu")
    model, cfg = load_model(checkpoint, device)
    provenance = {"checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint),
                  "per_volume": per_volume, "seed": seed}
    with folder_lock(out, "mine"):
        entries = [mine_job(job, model, cfg, out, provenance, per_volume, seed, device, log, progress)
                   for job in make_jobs(Path(dataset), None)]
        manifest = make_manifest(cfg.to_dict(), cfg.content_key(), entries)
        write_json_atomic(out / MANIFEST, manifest)
    return manifest


def mine_job(job: Job, model, cfg: BuildConfig, out: Path, provenance: dict, per_volume: int, seed: int,
             device: torch.device, log: Callable[[str], None], progress) -> dict:
    """One volume's mistakes written as its shard; the manifest entry."""
    patches, labels, origin, found, geometry = mine_volume(job, model, cfg, per_volume, seed, device, progress)
    counts = [int(c) for c in np.bincount(labels, minlength=2)[:2]]
    attrs = {"build": cfg.to_dict(), "build_key": cfg.content_key(), "case_id": job.case.case_id,
             "source_image": job.image_rel, "source_mask": job.mask_rel, "image_sha256": job.image_sha256,
             "mask_sha256": job.mask_sha256, "volume_key": job.volume_key, "geometry": geometry,
             "mined": {**provenance, "false_positives": found.found[0], "false_negatives": found.found[1]},
             "counts_before": list(found.found), "counts_after": counts, "part": 0, "n_parts": 1,
             "first_index": 0}
    path = confined(out, f"{job.case.case_id}.h5", f"shard name of case {job.case.case_id!r}")
    with ShardWriter(path, attrs) as w:
        w.write(patches, labels, origin)
    log(f"{job.case.case_id}: {found.found[0]:,} false positive and {found.found[1]:,} false negative pixels; "
        f"kept {counts[0]:,} + {counts[1]:,}")
    return shard_entry(path)
