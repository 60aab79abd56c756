"""`patchstore build`: dataset -> one verified shard (or a few) per volume -> manifest.json.

    discover cases -> hash image+mask (volume key) -> [--part K/N filter] -> per volume, in workers:
        skip if its shards are complete for these inputs and parameters        (resume)
        read_case -> pipeline.build_volume (window, smooth, views, patches, RUS) -> ShardWriter
    -> manifest.json (written last, atomically)

Per-volume randomness comes from (seed, volume key) only, so the bytes of a shard don't depend on
the worker count, the order of volumes, or where an interrupted build resumed.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from patchstore.config import BuildConfig, describe_differences
from patchstore.files import is_temp, write_json_atomic
from patchstore.io.discover import CasePaths, discover
from patchstore.io.volume import VolumeError, content_sha256, read_case
from patchstore.stages.pipeline import build_volume
from patchstore.stages.resample import plane_grid
from patchstore.store.manifest import MANIFEST, make_manifest, read_manifest, shard_entry
from patchstore.store.shard import ShardError, ShardReader, ShardWriter


class BuildError(RuntimeError):
    """The build stopped; the message names the file and the problem."""


@dataclass(frozen=True)
class Job:
    case: CasePaths
    image_rel: str
    mask_rel: str
    image_sha256: str
    mask_sha256: str

    @property
    def volume_key(self) -> str:
        return volume_key(self.image_sha256, self.mask_sha256)


@dataclass
class BuildResult:
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    manifest: dict | None = None


def volume_key(image_sha256: str, mask_sha256: str) -> str:
    return hashlib.sha256(f"{image_sha256}:{mask_sha256}".encode()).hexdigest()


def volume_seed(seed: int, key: str) -> np.random.SeedSequence:
    """Seed of one volume from the build seed and the volume's content hash (order-independent)."""
    return np.random.SeedSequence([seed] + [int(key[i:i + 8], 16) for i in range(0, 32, 8)])


def parse_part(spec: str | None) -> tuple[int, int] | None:
    """'2/3' -> (2, 3): build only the volumes whose key falls in part 2 of 3."""
    if not spec:
        return None
    k, _, n = spec.partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise ValueError(f"--part {spec!r}; expected K/N with 1 <= K <= N, e.g. 1/2")
    return int(k), int(n)


def in_part(key: str, part: tuple[int, int] | None) -> bool:
    return part is None or int(key[:16], 16) % part[1] == part[0] - 1


def shard_names(case_id: str, n_parts: int) -> list[str]:
    if n_parts == 1:
        return [f"{case_id}.h5"]
    return [f"{case_id}-p{k:03d}.h5" for k in range(n_parts)]


def n_parts_for(n_patches: int, cfg: BuildConfig) -> int:
    itemsize = 1 if cfg.dtype == "uint8" else 2
    nbytes = n_patches * cfg.patch * cfg.patch * itemsize
    return max(1, math.ceil(nbytes / (cfg.shard_mb * 1e6)))


# ---------------------------------------------------------------- one volume


def complete_shards(out: Path, job: Job, cfg: BuildConfig) -> list[Path] | None:
    """The shard files of ``job`` if all are present and built from these inputs and parameters."""
    case_id = job.case.case_id
    single = out / shard_names(case_id, 1)[0]
    found = [single] if single.exists() else sorted(out.glob(f"{case_id}-p[0-9][0-9][0-9].h5"))
    try:
        if not found:
            return None
        with ShardReader(found[0]) as r:
            paths = [out / n for n in shard_names(case_id, int(r.attrs.get("n_parts", 1)))]
        for p in paths:
            with ShardReader(p) as r:
                a = r.attrs
                if r.schema_problems() or a["build"] != cfg.to_dict() or a.get("image_sha256") != job.image_sha256 \
                        or a.get("mask_sha256") != job.mask_sha256:
                    return None
        return paths
    except (ShardError, OSError, KeyError):  # a missing part or a file that is not a shard: rebuild
        return None


def build_job(job: Job, out: Path, cfg: BuildConfig, progress: bool = False) -> tuple[str, list[dict]]:
    """Build (or skip, when complete) one volume's shards; returns ('built'|'skipped', entries)."""
    done = complete_shards(out, job, cfg)
    if done:
        return "skipped", [shard_entry(p) for p in done]
    case = read_case(job.case.image, job.case.mask, cfg.labels)
    bar = tqdm(total=case.image.shape[0] * 2, desc=job.case.case_id, unit="slice", leave=False,
               disable=not progress)
    spacing_yx = case.geometry.spacing_zyx[1:]
    grid = plane_grid(case.image.shape[1:], spacing_yx, cfg.pixel_mm)
    vp = build_volume(case.image, case.mask, cfg, volume_seed(cfg.seed, job.volume_key), bar.update, spacing_yx)
    bar.close()
    n_parts = n_parts_for(len(vp.labels), cfg)
    bounds = np.linspace(0, len(vp.labels), n_parts + 1).round().astype(int)
    attrs = {"build": cfg.to_dict(), "build_key": cfg.content_key(), "case_id": job.case.case_id,
             "source_image": job.image_rel, "source_mask": job.mask_rel,
             "image_sha256": job.image_sha256, "mask_sha256": job.mask_sha256,
             "volume_key": job.volume_key,
             "geometry": {"canonical": case.geometry.to_dict(), "source": case.source.to_dict(),
                          "working": {"shape_yx": list(grid.shape), "spacing_yx": list(grid.spacing)}},
             "label_values": list(case.label_values),
             "counts_before": [int(c) for c in vp.counts_before],
             "counts_after": [int(c) for c in vp.counts_after], "n_parts": n_parts}
    for stale in [out / shard_names(job.case.case_id, 1)[0], *out.glob(f"{job.case.case_id}-p[0-9][0-9][0-9].h5")]:
        stale.unlink(missing_ok=True)  # an earlier build of changed inputs
    entries = []
    for k, name in enumerate(shard_names(job.case.case_id, n_parts)):
        lo, hi = bounds[k], bounds[k + 1]
        path = out / name
        with ShardWriter(path, {**attrs, "part": k, "first_index": int(lo)}) as w:
            w.write(vp.patches[lo:hi], vp.labels[lo:hi], vp.origin[lo:hi])
        entries.append(shard_entry(path))
    return "built", entries


def is_disk_full(e: OSError) -> bool:
    return e.errno == errno.ENOSPC or "No space left" in str(e)


def _run_job(job: Job, out: Path, cfg: BuildConfig, progress: bool) -> tuple[str, list[dict]]:
    """Worker entry point: turns a full disk into a clear error (earlier shards stay intact)."""
    try:
        return build_job(job, out, cfg, progress)
    except OSError as e:
        if is_disk_full(e):
            raise BuildError(f"{out}: disk full while writing the shard of {job.case.image} ({e}); shards "
                             f"written before are intact: free space and run the same command to resume") from e
        raise


# ---------------------------------------------------------------- the whole build


def make_jobs(input_path: Path, part: tuple[int, int] | None) -> list[Job]:
    root = input_path if input_path.is_dir() else input_path.parent
    jobs = []
    for case in discover(input_path):
        job = Job(case, os.path.relpath(case.image, root), os.path.relpath(case.mask, root),
                  content_sha256(case.image), content_sha256(case.mask))
        if in_part(job.volume_key, part):
            jobs.append(job)
    return jobs


def prepare_output(out: Path, cfg: BuildConfig) -> None:
    """Create ``out``; refuse a folder built with other parameters; drop temp files of killed builds."""
    out.mkdir(parents=True, exist_ok=True)
    previous = None
    if (out / MANIFEST).exists():
        previous = read_manifest(out)["build"]
    else:
        for p in sorted(out.glob("*.h5"))[:1]:
            try:
                with ShardReader(p) as r:
                    previous = r.attrs.get("build")
            except ShardError:
                pass
    if previous is not None and previous != cfg.to_dict():
        raise BuildError(f"{out}: holds shards built with other parameters (differing: "
                         f"{describe_differences(previous, cfg.to_dict(), 'there', 'now')}); choose another output folder")
    for p in out.iterdir():
        if is_temp(p):
            p.unlink()


def build(input_path: str | Path, out: str | Path, cfg: BuildConfig, *, workers: int = 1,
          part: tuple[int, int] | None = None, keep_going: bool = False, quiet: bool = False) -> BuildResult:
    """Build the shard folder ``out`` from the dataset at ``input_path``; resumes an interrupted build."""
    input_path, out = Path(input_path), Path(out)
    prepare_output(out, cfg)
    jobs = make_jobs(input_path, part)
    result, entries = BuildResult(), []
    bar = tqdm(total=len(jobs), desc="volumes", unit="vol", disable=quiet)
    made = {"patches": 0, "t0": time.perf_counter()}

    def collect(job: Job, outcome) -> None:
        status, job_entries = outcome
        (result.built if status == "built" else result.skipped).append(job.case.case_id)
        entries.extend(job_entries)
        n = sum(e["patches"] for e in job_entries)
        made["patches"] += n if status == "built" else 0
        rate = made["patches"] / max(time.perf_counter() - made["t0"], 1e-9)
        bar.set_postfix_str(f"{job.case.case_id}: {status}, {n} patches; {rate:,.0f} patches/s")
        bar.update()

    def fail(job: Job, e: Exception) -> None:
        msg = str(e) if isinstance(e, (VolumeError, BuildError)) else f"{job.case.image}: {type(e).__name__}: {e}"
        if not keep_going:
            bar.close()
            raise BuildError(msg) from e
        result.failed.append((job.case.case_id, msg))
        bar.update()

    if workers <= 1:
        for job in jobs:
            try:
                collect(job, _run_job(job, out, cfg, not quiet))
            except (VolumeError, BuildError, ValueError) as e:
                fail(job, e)
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [(job, pool.submit(_run_job, job, out, cfg, False)) for job in jobs]
            try:
                for job, fut in futures:
                    try:
                        collect(job, fut.result())
                    except (VolumeError, BuildError, ValueError) as e:
                        fail(job, e)
            except BaseException:
                for _, fut in futures:
                    fut.cancel()
                raise
    bar.close()
    result.manifest = make_manifest(cfg.to_dict(), cfg.content_key(), entries, part)
    try:
        write_json_atomic(out / MANIFEST, result.manifest)
    except OSError as e:
        if is_disk_full(e):
            raise BuildError(f"{out}: disk full while writing {MANIFEST} ({e}); every shard is complete: "
                             f"free space and run the same command to write it") from e
        raise
    return result
