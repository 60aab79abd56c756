"""`patchstore build`: dataset -> one verified shard (or a few) per volume -> manifest.json.

    discover cases -> hash image+mask (volume key) -> [--part K/N filter] -> per volume, in workers
    (processes here, or tasks on a Dask cluster: patchstore.cluster):
        skip if its shards are complete for these inputs and parameters        (resume)
        read_case -> pipeline.build_volume (window, smooth, views, patches, RUS) -> ShardWriter
    -> manifest.json (written last, atomically, by this process)

Per-volume randomness comes from (seed, volume key) only, so the bytes of a shard don't depend on
the worker count, the order of volumes, or where an interrupted build resumed.

What a build may touch: it holds ``out``'s lock (``patchstore.lock``) from start to end, so a
second build into the same folder is refused and start-up cleanup can never remove the temporary
files of a live build; it removes only temporary files of shards and the manifest, and replaces or
removes only shard files of the same case that it (or an earlier build) wrote; shard names come
from case names through ``patchstore.files.confined``. Worker processes end with the build, even
when it is killed with SIGKILL.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from patchstore.config import BuildConfig, describe_differences
from patchstore.files import ensure_writable, write_json_atomic
from patchstore.io.discover import CasePaths, discover
from patchstore.io.volume import VolumeError, content_sha256, read_case
from patchstore.lock import folder_lock, takeover_note
from patchstore.output import clear_old_shards, existing_shards, remove_temp_files, shard_paths
from patchstore.stages.pipeline import build_volume
from patchstore.stages.resample import plane_grid
from patchstore.store.manifest import MANIFEST, SHARD_SUFFIX, make_manifest, read_manifest, shard_entry
from patchstore.store.shard import ShardError, ShardReader, ShardWriter
from patchstore.workers import die_with_parent

MAX_FILES_PER_VOLUME = 1000  # shard_names numbers parts with 3 digits; more files help nobody


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
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
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


def patch_bytes(cfg: BuildConfig) -> int:
    return cfg.patch * cfg.patch * (1 if cfg.dtype == "uint8" else 2)


def n_parts_for(n_patches: int, cfg: BuildConfig) -> int:
    """Files for a volume of ``n_patches``: each at most shard_mb MB uncompressed, none empty."""
    return max(1, min(math.ceil(n_patches * patch_bytes(cfg) / (cfg.shard_mb * 1e6)), n_patches))


def check_shard_size(cfg: BuildConfig) -> None:
    """Refuse a shard size below one patch: every file would hold a single patch."""
    if cfg.shard_mb * 1e6 < patch_bytes(cfg):
        raise BuildError(f"Build parameter 'shard_mb' is {cfg.shard_mb:g}; one {cfg.patch}x{cfg.patch} {cfg.dtype} "
                         f"patch alone is {patch_bytes(cfg) / 1e6:g} MB: expected at least that (default "
                         f"{BuildConfig().shard_mb:g})")


# ---------------------------------------------------------------- one volume


def complete_shards(out: Path, job: Job, cfg: BuildConfig) -> list[Path] | None:
    """The shard files of ``job`` if all are present and built from these inputs and parameters."""
    case_id = job.case.case_id
    found = existing_shards(out, case_id)
    try:
        if not found:
            return None
        with ShardReader(found[0]) as r:
            paths = shard_paths(out, case_id, int(r.attrs.get("n_parts", 1)))
        for p in paths:
            with ShardReader(p) as r:
                a = r.attrs
                if r.schema_problems() or a["build"] != cfg.to_dict() or a.get("image_sha256") != job.image_sha256 \
                        or a.get("mask_sha256") != job.mask_sha256 or a.get("case_id") != case_id:
                    return None
        return paths
    except (ShardError, OSError, KeyError, ValueError):  # a missing part or a file that is not a shard: rebuild
        return None


def empty_warning(case_id: str, counts_before) -> str:
    """Why a volume gave no patch, from its candidate counts [background, vertebra] before RUS."""
    bg, vert = (int(c) for c in counts_before)
    why = ("no candidate patch" if bg + vert == 0 else
           "its mask has no vertebra patch, so RUS keeps nothing" if vert == 0 else
           "every patch is vertebra, so RUS keeps nothing" if bg == 0 else "RUS kept nothing")
    return f"{case_id}: 0 patches ({why}; candidates before RUS: background {bg:,}, vertebra {vert:,})"


def build_job(job: Job, out: Path, cfg: BuildConfig, progress: bool = False) -> tuple[str, list[dict], list[str]]:
    """Build (or skip, when complete) one volume's shards; returns ('built'|'skipped', entries, warnings)."""
    done = complete_shards(out, job, cfg)
    if done:
        entries = [shard_entry(p) for p in done]
        if sum(e["patches"] for e in entries):
            return "skipped", entries, []
        with ShardReader(done[0]) as r:
            return "skipped", entries, [empty_warning(job.case.case_id, r.attrs["counts_before"])]
    case = read_case(job.case.image, job.case.mask, cfg.labels)
    spacing_yx = case.geometry.spacing_zyx[1:]
    grid = plane_grid(case.image.shape[1:], spacing_yx, cfg.pixel_mm)
    if cfg.patch > min(grid.shape):
        at = "" if grid.identity else f" at {cfg.pixel_mm:g} mm pixels"
        raise BuildError(f"{job.case.image}: patch {cfg.patch} is larger than the axial slice ({grid.shape[1]}x"
                         f"{grid.shape[0]} pixels{at}); expected a patch of at most {min(grid.shape)} pixels")
    bar = tqdm(total=case.image.shape[0] * 2, desc=job.case.case_id, unit="slice", leave=False,
               disable=not progress)
    vp = build_volume(case.image, case.mask, cfg, volume_seed(cfg.seed, job.volume_key), bar.update, spacing_yx)
    bar.close()
    n_parts = n_parts_for(len(vp.labels), cfg)
    if n_parts > MAX_FILES_PER_VOLUME:
        raise BuildError(f"{job.case.image}: shard_mb {cfg.shard_mb:g} splits its {len(vp.labels):,} patches into "
                         f"{n_parts:,} files; expected at most {MAX_FILES_PER_VOLUME} per volume (shard_mb >= "
                         f"{math.ceil(len(vp.labels) * patch_bytes(cfg) / MAX_FILES_PER_VOLUME / 1e3) / 1e3:g})")
    paths = shard_paths(out, job.case.case_id, n_parts)
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
    clear_old_shards(out, job.case.case_id, paths)  # an earlier build of changed inputs
    entries = []
    for k, path in enumerate(paths):
        lo, hi = bounds[k], bounds[k + 1]
        with ShardWriter(path, {**attrs, "part": k, "first_index": int(lo)}) as w:
            w.write(vp.patches[lo:hi], vp.labels[lo:hi], vp.origin[lo:hi])
        entries.append(shard_entry(path))
    warnings = [] if len(vp.labels) else [empty_warning(job.case.case_id, vp.counts_before)]
    return "built", entries, warnings


def is_disk_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e)


def file_system_error(e: OSError, job: Job, out: Path) -> BuildError:
    """One clear line for a file-system error while building ``job`` (earlier shards stay intact)."""
    reason = f"{e.filename}: {e.strerror}" if e.filename else (e.strerror or str(e))
    if is_disk_full(e):
        return BuildError(f"{out}: disk full while writing the shard of {job.case.image} ({reason}); shards "
                          f"written before are intact: free space and run the same command to resume")
    return BuildError(f"{reason} (while building {job.case.image} into {out}); shards written before are intact")


def _run_job(job: Job, out: Path, cfg: BuildConfig, progress: bool) -> tuple[str, list[dict], list[str]]:
    """Worker entry point: file-system errors become one clear line (earlier shards stay intact)."""
    try:
        return build_job(job, out, cfg, progress)
    except OSError as e:
        raise file_system_error(e, job, out) from None


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
    """Refuse a folder built with other parameters; drop temporary shard and manifest files of
    killed builds (called with ``out`` locked, so none belongs to a live build)."""
    previous = None
    if (out / MANIFEST).exists():
        previous = read_manifest(out)["build"]
    else:
        for p in sorted(out.glob(f"*{SHARD_SUFFIX}"))[:1]:
            try:
                with ShardReader(p) as r:
                    previous = r.attrs.get("build")
            except ShardError:
                pass
    if previous is not None and previous != cfg.to_dict():
        raise BuildError(f"{out}: holds shards built with other parameters (differing: "
                         f"{describe_differences(previous, cfg.to_dict(), 'there', 'now')}); choose another output folder")
    remove_temp_files(out)


def build(input_path: str | Path, out: str | Path, cfg: BuildConfig, *, workers: int = 1,
          part: tuple[int, int] | None = None, keep_going: bool = False, quiet: bool = False,
          cluster: str | None = None) -> BuildResult:
    """Build the shard folder ``out`` from the dataset at ``input_path``; resumes an interrupted build.

    ``cluster``: build the volumes on the Dask cluster at that address ("local:N" starts one of N
    processes here; ``patchstore.cluster``) instead of in ``workers`` processes. Holds ``out``'s lock
    throughout; raises BuildError (LockError when another build holds it)."""
    input_path, out = Path(input_path), Path(out)
    check_shard_size(cfg)
    try:
        ensure_writable(out)
    except OSError as e:
        raise BuildError(f"{e.filename}: {e.strerror}") from None
    with folder_lock(out, "build") as stale:
        prepare_output(out, cfg)
        result, entries = run_jobs(make_jobs(input_path, part), out, cfg, workers, keep_going, quiet, cluster)
        result.notes = takeover_note(stale)
        result.manifest = make_manifest(cfg.to_dict(), cfg.content_key(), entries, part)
        try:
            write_json_atomic(out / MANIFEST, result.manifest)
        except OSError as e:
            if is_disk_full(e):
                raise BuildError(f"{out}: disk full while writing {MANIFEST} ({e}); every shard is complete: "
                                 f"free space and run the same command to write it") from None
            raise BuildError(f"{out / MANIFEST}: {e.strerror or e}; every shard is complete: run the same "
                             f"command again to write it") from None
    totals = result.manifest["totals"]
    if result.manifest["shards"] and totals["patches"] == 0:
        raise BuildError(f"{out}: no volume gave a patch ({'; '.join(result.warnings[:3])}); expected vertebra "
                         f"and background patches: check the masks and --labels (patchstore check)")
    if totals["patches"] and min(totals["counts"]) == 0:
        only = "background" if totals["counts"][1] == 0 else "vertebra"
        result.warnings.append(f"{out}: every patch is {only} ({totals['patches']:,}); a classifier needs both "
                               f"classes, and `train run` refuses these shards")
    return result


def run_jobs(jobs: list[Job], out: Path, cfg: BuildConfig, workers: int, keep_going: bool,
             quiet: bool, cluster: str | None = None) -> tuple[BuildResult, list[dict]]:
    """Build every job (in ``workers`` processes, or on the Dask ``cluster``): what happened, and the
    manifest entries."""
    result, entries = BuildResult(), []
    bar = tqdm(total=len(jobs), desc="volumes", unit="vol", disable=quiet)
    made = {"patches": 0, "t0": time.perf_counter()}

    def collect(job: Job, outcome) -> None:
        status, job_entries, warnings = outcome
        (result.built if status == "built" else result.skipped).append(job.case.case_id)
        entries.extend(job_entries)
        result.warnings.extend(warnings)
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

    if cluster is not None:
        from patchstore.cluster import run_on_cluster
        for job, outcome in run_on_cluster(cluster, jobs, out, cfg):
            if isinstance(outcome, (VolumeError, BuildError, ValueError)):
                fail(job, outcome)
            elif isinstance(outcome, OSError):
                fail(job, file_system_error(outcome, job, out))
            elif isinstance(outcome, Exception):
                bar.close()
                raise BuildError(f"{out}: the Dask workers building {job.case.image} kept failing "
                                 f"({type(outcome).__name__}: {outcome}); shards written before are intact: run "
                                 f"the same command to resume") from outcome
            else:
                collect(job, outcome)
        remove_temp_files(out)  # of workers killed mid-write: every task has ended, and out is locked
    elif workers <= 1:
        for job in jobs:
            try:
                collect(job, _run_job(job, out, cfg, not quiet))
            except (VolumeError, BuildError, ValueError) as e:
                fail(job, e)
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                 initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            futures = [(job, pool.submit(_run_job, job, out, cfg, False)) for job in jobs]
            try:
                for job, fut in futures:
                    try:
                        collect(job, fut.result())
                    except (VolumeError, BuildError, ValueError) as e:
                        fail(job, e)
                    except BrokenProcessPool as e:
                        raise BuildError(f"{out}: a worker process died while building {job.case.image} (killed, "
                                         f"or out of memory?); shards written before are intact: run the same "
                                         f"command to resume") from e
            except BaseException:
                for _, fut in futures:
                    fut.cancel()
                raise
    bar.close()
    return result, entries
