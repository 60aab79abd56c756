"""Shards -> one device-resident tensor, and the train / validation split.

    patchstore ShardSet ── checked: manifest, every file's size (--verify: full patchstore verify)
    a.h5 patches (Na, 32, 32) ─┐   every shard's attrs 'build' must equal the manifest's
    b.h5 patches (Nb, 32, 32) ─┼─> x (N, 32, 32) uint8|float16  on the device (GPU when there is one)
    ...                        ┘   y (N,) int64                 on the device
                                   origin (N, 4) int32, volume (N,) int64   NumPy, for the split

    one batch: x[idx] -> float32 (/255 for uint8, as patchstore.stages.preprocess.to_unit) -> (B, 1, 32, 32)

A shard folder may be a URL: its files are fetched into a local cache first, each checked against
the manifest's size and SHA-256 (``ShardSet.open``). Everything is read once, before training: no
DataLoader workers, no HDF5 reads in the loop. Each shard is checked against the manifest before
its patches are used (``ShardSet.read``); the ShardSet's warnings (unlisted .h5 files, a --part
build, a URL answered from the cache) go to ``warn``. ``check_classes`` refuses a training set of
one class: a classifier trained on it scores a vacuous 1.0 on every metric.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from patchstore.config import PREPROCESSING_FIELDS, describe_differences
from patchstore.store.shard import ShardError
from patchstore.store.shardset import ShardSet
from train.model import PATCH

EXACT_SEARCH_MAX_VOLUMES = 16  # 2**16 subsets: exact in milliseconds; beyond that, greedy
RESERVE_BYTES = 1 << 30  # left free for the model, activations and the runtime
TORCH_DTYPES = {"uint8": torch.uint8, "float16": torch.float16}


class DataError(ValueError):
    """Shards that can't be trained on here: the message names the file or the device and the values."""


@dataclass(frozen=True)
class PatchSet:
    """All patches of a shard folder, in manifest order (shard by shard)."""

    x: torch.Tensor  # (N, n, n) uint8 | float16, on the device
    y: torch.Tensor  # (N,) int64, on the device
    origin: np.ndarray  # (N, 4) int32: slice z, row, col, view
    volume: np.ndarray  # (N,) int64: index into ``volumes``
    volumes: tuple[str, ...]  # volume keys, first appearance order
    files: tuple[str, ...]  # shard files (folder/name), load order
    build: dict  # the (first) manifest's build parameters
    manifest_sha256: str  # of the one manifest, or of the manifests' hashes in folder order
    pixel_mm_range: tuple[float, float]  # smallest and largest pixel (mm) the patches were cut at
    volume_folders: tuple[int, ...] = ()  # per volume: the folder (in the order given) it first came from

    def __len__(self) -> int:
        return len(self.y)


# int64 device tensors per patch besides the patch itself: its label, its place in the train or
# validation indices, and an epoch's permutation (the shuffled order copied to the device, then
# the training indices gathered in that order; counted for every patch, an upper bound).
INDEX_BYTES = {"label": 8, "split index": 8, "permutation": 8, "permuted index": 8}


def needed_bytes(sets: list[ShardSet]) -> int:
    """Device memory training holds for all patches: the patches (stored dtype), and per patch the
    int64 label, split index and an epoch's permutation (``INDEX_BYTES``)."""
    per_patch = sum(INDEX_BYTES.values())
    return sum(s.patch_bytes + per_patch * len(s) for s in sets)


def available_bytes(device: torch.device) -> int:
    """Free memory: torch.cuda.mem_get_info on CUDA, MemAvailable (Linux) or total RAM on CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(needed: int, device: torch.device) -> None:
    free = available_bytes(device)
    if needed + RESERVE_BYTES > free:
        where = f"GPU {device}" if device.type == "cuda" else "RAM"
        raise DataError(f"the patches need {needed / 2**30:.2f} GiB (+{RESERVE_BYTES / 2**30:.0f} GiB reserve) "
                        f"but only {free / 2**30:.2f} GiB of {where} is free; train on a subset of the "
                        f"shards (a folder with fewer volumes) or on a device with more memory")


def open_sets(folders: str | os.PathLike | list, full_verify: bool = False, cache: str | os.PathLike | None = None,
              progress: bool = False) -> list[ShardSet]:
    """Open one or several shard folders (or their URLs, fetched into ``cache``); they must agree on
    every preprocessing parameter (what a patch looks like and what its label means), so their
    patches can be trained on together."""
    folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
    sets = [ShardSet.open(f, full_verify, cache, progress) for f in folders]
    first = sets[0]
    for s in sets:
        if s.patch_shape != (PATCH, PATCH):
            raise DataError(f"{s.folder}: patches are {s.patch_shape[0]}x{s.patch_shape[1]}; "
                            f"OP-convNet takes {PATCH}x{PATCH}")
        bad = [k for k in PREPROCESSING_FIELDS if s.build.get(k) != first.build.get(k)]
        if bad:
            raise ShardError(f"{s.folder}: preprocessed otherwise than {first.folder} ("
                             + describe_differences(s.build, first.build, "there", f"in {first.folder}", bad)
                             + "); shard folders trained on together must agree")
    return sets


def _stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def load_shards(folders: str | os.PathLike | list, device: torch.device, full_verify: bool = False,
                log: Callable[[str], None] = print, warn: Callable[[str], None] = _stderr,
                cache: str | os.PathLike | None = None, progress: bool = False) -> PatchSet:
    """Check the shard folder(s) (a URL: fetched into ``cache`` first), then read every shard once
    into one tensor on ``device``.

    Several folders (e.g. a build and the hard negatives ``infer mine`` found) are concatenated in
    the order given; patches of one volume keep its volume key, so a split by volume keeps them on
    one side.
    """
    return load_sets(open_sets(folders, full_verify, cache, progress), device, log, warn)


def describe_labels(labels) -> str:
    """A build's ``labels`` as --labels writes them ('1,26-50'), or 'any nonzero'."""
    runs: list[list[int]] = []
    for v in sorted(labels or ()):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) or "any nonzero"


def load_sets(sets: list[ShardSet], device: torch.device, log: Callable[[str], None] = print,
              warn: Callable[[str], None] = _stderr) -> PatchSet:
    """Read every shard of the opened ``sets`` once into one tensor on ``device`` (``load_shards``)."""
    for s in sets:
        for message in s.warnings:
            warn(message)
    if len({tuple(s.build.get("labels") or ()) for s in sets}) > 1:
        log("note: the shard folders took vertebra from different mask values (--labels): "
            + ", ".join(f"{s.folder}: {describe_labels(s.build.get('labels'))}" for s in sets)
            + "; every patch is vertebra or background either way")
    needed = needed_bytes(sets)
    n_total = sum(len(s) for s in sets)
    n_files = sum(len(s.files) for s in sets)
    log(f"loading {n_total:,} patches from {n_files} shard(s): {needed / 2**20:,.1f} MiB on {device}")
    check_memory(needed, device)
    x = torch.empty((n_total, PATCH, PATCH), dtype=TORCH_DTYPES[sets[0].build["dtype"]], device=device)
    y = np.empty(n_total, dtype=np.int64)
    origin = np.empty((n_total, 4), dtype=np.int32)
    volume = np.empty(n_total, dtype=np.int64)
    volumes: list[str] = []
    folder_of: list[int] = []
    pixels: list[float] = []
    start = 0
    for k, shards in enumerate(sets):
        for i, n in enumerate(shards.sizes):
            part = slice(start, start + n)
            if device.type == "cpu":  # read straight into the tensor's memory: no extra copy
                got = shards.read(i, out=x.numpy()[part])
            else:
                got = shards.read(i)
                x[part].copy_(torch.from_numpy(got.patches))
            y[part] = got.labels
            origin[part] = got.origin
            pixels.extend(got.spacing_yx)
            if got.volume_key not in volumes:
                volumes.append(got.volume_key)
                folder_of.append(k)
            volume[part] = volumes.index(got.volume_key)
            start += n
    if len(sets) == 1:
        files, digest = sets[0].files, sets[0].manifest_sha256
    else:
        files = tuple(f"{s.folder.name}/{f}" for s in sets for f in s.files)
        digest = hashlib.sha256(":".join(s.manifest_sha256 for s in sets).encode()).hexdigest()
    return PatchSet(x=x, y=torch.from_numpy(y).to(device), origin=origin, volume=volume,
                    volumes=tuple(volumes), files=files, build=sets[0].build,
                    manifest_sha256=digest, pixel_mm_range=(min(pixels), max(pixels)),
                    volume_folders=tuple(folder_of))


CLASSES = ("background", "vertebra")


def class_counts(y: np.ndarray) -> list[int]:
    return [int(c) for c in np.bincount(y, minlength=2)[:2]]


def check_classes(ps: PatchSet, split: dict, folders: list) -> list[str]:
    """Refuse training on patches of one class (all, or the training side of the split); warnings
    for a validation side of one class, whose metrics of the other class are vacuous."""
    y = ps.y.cpu().numpy()
    where = ", ".join(str(f) for f in folders)
    counts = class_counts(y)
    if min(counts) == 0:
        only = CLASSES[int(counts[1] > 0)]
        raise DataError(f"{where}: every patch is {only} ({len(y):,} patches; background {counts[0]:,}, vertebra "
                        f"{counts[1]:,}); expected both classes: a classifier trained on one class learns nothing "
                        f"and scores 1.0 on every metric (check the masks and the build's labels)")
    train_counts = class_counts(y[split["train"]])
    if min(train_counts) == 0:
        raise DataError(f"{where}: the training side of the {split['by']} split holds only "
                        f"{CLASSES[int(train_counts[1] > 0)]} patches ({train_counts}); expected both classes: "
                        f"choose another val_fraction or seed, or split by patch")
    val_counts = class_counts(y[split["val"]])
    if min(val_counts) == 0:
        return [f"{where}: the validation patches are all {CLASSES[int(val_counts[1] > 0)]} ({val_counts}): "
                f"precision, sensitivity and F-score there are 0/0, reported as 1.0"]
    return []


def batch_input(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather patches ``idx`` (B,) of ``x`` (N, n, n) on its device -> (B, 1, n, n) float32 in [0, 1]."""
    b = x[idx]
    b = b.float().div_(255) if b.dtype == torch.uint8 else b.float()
    return b.unsqueeze(1)


# ---------------------------------------------------------------- split


def choose_volumes(counts: np.ndarray, fraction: float, rng: np.random.Generator,
                   groups: np.ndarray | None = None) -> np.ndarray:
    """(V,) bool: the validation volumes, whose patch count comes closest to ``fraction`` of all.

    ``groups`` (V,) int (the shard folder each volume came from): every group keeps at least one
    volume in training, where some choice allows it, so that a lone real CT beside a folder of
    phantoms is never left out of training because its patch count is the closest to the target.
    Exact search over every proper subset for up to EXACT_SEARCH_MAX_VOLUMES volumes (ties broken
    by ``rng``); beyond that greedy: largest volumes first (random order among equal sizes) while
    the sum stays below the target, then the one volume that brings it closest. Both sides get at
    least one volume.
    """
    v = len(counts)
    target = fraction * counts.sum()
    groups = np.zeros(v, dtype=np.int64) if groups is None else np.asarray(groups)
    sizes = np.bincount(groups)
    if v <= EXACT_SEARCH_MAX_VOLUMES:
        masks = (np.arange(1, 2**v - 1)[:, None] >> np.arange(v)) & 1
        in_val = np.stack([masks[:, groups == g].sum(axis=1) for g in np.unique(groups)], axis=1)
        whole = (in_val == sizes[np.unique(groups)]).any(axis=1)  # a group wholly in validation
        if not whole.all():
            masks = masks[~whole]
        err = np.abs(masks @ counts - target)
        return masks[rng.choice(np.flatnonzero(err == err.min()))].astype(bool)
    order = rng.permutation(v)
    order = order[np.argsort(-counts[order], kind="stable")]
    take, total = np.zeros(v, dtype=bool), 0
    left = sizes.copy()  # volumes of each group still on the training side

    def may_take(i: int) -> bool:
        return left[groups[i]] > 1

    for i in order:  # fill up to the target, largest first ...
        if total + counts[i] <= target and may_take(i):
            take[i], total = True, total + counts[i]
            left[groups[i]] -= 1
    rest = [i for i in np.flatnonzero(~take) if may_take(i)]  # ... then overshoot with one more if closer
    if rest:
        i = rest[int(np.argmin(np.abs(total + counts[rest] - target)))]
        if abs(total + counts[i] - target) < abs(total - target):
            take[i] = True
    if not take.any():
        take[order[-1]] = True
    if take.all():
        take[order[-1]] = False
    return take


def choose_slices(z: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[int, int]:
    """The contiguous range [z0, z1] of slices whose patch count comes closest to ``fraction``.

    ``z`` (N,) holds each patch's source slice; all views of a slice stay on one side.
    """
    slices, counts = np.unique(z, return_counts=True)
    c = np.concatenate([[0], np.cumsum(counts)])
    s = len(slices)
    i, j = np.triu_indices(s + 1, k=1)  # block of slices [i, j)
    keep = ~((i == 0) & (j == s))
    i, j = i[keep], j[keep]
    err = np.abs(c[j] - c[i] - fraction * c[-1])
    k = rng.choice(np.flatnonzero(err == err.min()))
    return int(slices[i[k]]), int(slices[j[k] - 1])


def split_patches(ps: PatchSet, by: str, fraction: float, seed: int) -> dict:
    """Train / validation indices (sorted (M,) int64 arrays) and a record of how they were chosen.

    by="volume": each source volume wholly on one side (one volume: contiguous slice ranges);
    by="patch": the paper's random split of all patches.
    """
    rng = np.random.default_rng(seed)
    n = len(ps)
    if n < 2:
        raise DataError(f"{n} patch(es); a train / validation split needs at least 2")
    out = {"by": by, "note": None}
    if by == "volume" and len(ps.volumes) > 1:
        counts = np.bincount(ps.volume, minlength=len(ps.volumes))
        folders = np.asarray(ps.volume_folders if ps.volume_folders else [0] * len(ps.volumes))
        val_vol = choose_volumes(counts, fraction, rng, folders)
        is_val = val_vol[ps.volume]
        out["val_volumes"] = [k for k, t in zip(ps.volumes, val_vol) if t]
        out["train_volumes"] = [k for k, t in zip(ps.volumes, val_vol) if not t]
        whole = [int(f) for f in np.unique(folders) if val_vol[folders == f].all()]
        if whole:
            out["note"] = (f"every volume of shard folder(s) {', '.join(str(f + 1) for f in whole)} (in the order "
                           f"given) validates: no split by volume keeps a volume of every folder in training")
    elif by == "volume" and len(np.unique(ps.origin[:, 0])) > 1:
        z0, z1 = choose_slices(ps.origin[:, 0], fraction, rng)
        is_val = (ps.origin[:, 0] >= z0) & (ps.origin[:, 0] <= z1)
        out.update(by="slices", val_slices=[z0, z1],
                   note=f"only one volume in the shards: split by slice ranges instead, validation = "
                        f"slices {z0}..{z1}")
    else:
        if by == "volume":
            out["note"] = "only one volume and one slice in the shards: split patches at random instead"
        out["by"] = "patch"
        n_val = min(max(1, round(fraction * n)), n - 1)
        is_val = np.zeros(n, dtype=bool)
        is_val[rng.permutation(n)[:n_val]] = True
    out["train"] = np.flatnonzero(~is_val)
    out["val"] = np.flatnonzero(is_val)
    return out


def split_record(split: dict, ps: PatchSet, fraction: float, seed: int) -> dict:
    """split.json: how the split was made, which volumes / slices / indices on each side, counts."""
    y = ps.y.cpu().numpy()
    record = {"by": split["by"], "val_fraction": fraction, "seed": seed, "note": split["note"],
              "shards": list(ps.files), "index_order": "patches in shard order, then in file order"}
    for side in ("train", "val"):
        idx = split[side]
        record[side] = {"patches": int(len(idx)),
                        "counts": [int(c) for c in np.bincount(y[idx], minlength=2)[:2]]}
        if f"{side}_volumes" in split:
            record[side]["volumes"] = split[f"{side}_volumes"]
    if split["by"] == "slices":
        record["val"]["slices"] = split["val_slices"]
        record["train"]["slices"] = "all others"
    if split["by"] == "patch":
        record["val"]["indices"] = split["val"].tolist()
        record["train"]["indices"] = "all others"
    return record
