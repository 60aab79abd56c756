"""`patchstore` console script: thin click wrappers over the library functions."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.core import ParameterSource

from patchstore import __version__
from patchstore.cli_errors import ErrorGroup
from patchstore.cli_params import ShardSource, cache_option
from patchstore.config import LABEL_RULES, PAPER, BuildConfig

DEFAULTS = BuildConfig()


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix (one line, exit 1): bad inputs and parameters, files that
    can't be written, another build in the folder. Imported late: `patchstore --help` stays light."""
    from patchstore.build import BuildError
    from patchstore.lock import LockError
    from patchstore.store.download import RemoteError
    return (ValueError, OSError, BuildError, LockError, RemoteError)


def _floats(spec: str) -> tuple[float, ...]:
    return tuple(float(a) for a in spec.replace(" ", "").split(",") if a)


def _ratio(spec: str) -> float:
    """'1:1' or '1:2' (minority:majority) or '2' -> majority patches kept per minority patch."""
    lo, sep, hi = spec.partition(":")
    try:
        return float(hi) / float(lo) if sep else float(spec)
    except (ValueError, ZeroDivisionError):
        raise click.BadParameter(f"{spec!r}; expected MINORITY:MAJORITY such as 1:1 or 1:2, or a number") from None


def _labels(spec: str | None) -> tuple[int, ...]:
    from patchstore.io.volume import parse_labels
    try:
        return parse_labels(spec)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _pixel_mm(spec: str) -> float | None:
    """'native' -> None; '0.4' -> 0.4."""
    if spec.strip().lower() == "native":
        return None
    try:
        return float(spec)
    except ValueError:
        raise click.BadParameter(f"{spec!r}; expected a pixel size in mm such as 0.4, or 'native'") from None


pixel_option = click.option(
    "--pixel-mm", "pixel_mm", default="native" if DEFAULTS.pixel_mm is None else f"{DEFAULTS.pixel_mm:g}",
    show_default=True, metavar="MM|native",
    help="Resample every axial slice in-plane to MM x MM pixels first (image bilinear, mask nearest); "
         "native keeps the scan's pixels (the paper).")
rule_option = click.option(
    "--label-rule", type=click.Choice(LABEL_RULES), default=DEFAULTS.label_rule, show_default=True,
    help="majority: a patch is vertebra when more than half its pixels are (the paper); centre: when its "
         "centre pixel is (the pixel stride-1 inference gives the patch's class to).")
paper_option = click.option(
    "--paper", is_flag=True,
    help="The paper's exact build: native pixels, majority rule, stride 12, no intensity augmentation "
         "(options given explicitly still apply).")


def _with_paper(ctx: click.Context, paper: bool, fields: dict) -> dict:
    """``fields`` with the paper's values (config.PAPER) where --paper is set and the user gave none."""
    if not paper:
        return fields
    return {**fields, **{k: v for k, v in PAPER.items()
                         if k in fields and ctx.get_parameter_source(k) == ParameterSource.DEFAULT}}


labels_option = click.option("--labels", default=None, metavar="SPEC",
                             help="Mask label values that mean vertebra, e.g. 26-50 (TotalSegmentator v2: S1..C1, "
                                  "without the sacrum, 25) or 1-25,28 (VerSe); default: every nonzero value.")


@click.group(cls=ErrorGroup, user_errors=user_errors,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="patchstore")
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="CPU threads of the numba kernels (in each --workers process); default: numba's own, one per "
                   "core.")
def main(threads: int | None) -> None:
    """Turn CT volumes and vertebra masks into verifiable OP-convNet patch shards.

    Typical use: `patchstore phantom data/ --cases 4`, `patchstore check data/`,
    `patchstore build data/ -o shards/`, `patchstore verify shards/`, then `train run shards/`.

    Options of the group go before the command: `patchstore --threads 2 build data/ -o shards/`.
    Progress bars written to a file or pipe (not a terminal) print one line every 30 s.
    """
    from patchstore.console import set_numba_threads, throttled_stderr
    from patchstore.memory import keep_freed_memory
    keep_freed_memory()  # volume after volume: reuse freed pages instead of page-faulting new ones
    click.get_current_context().with_resource(throttled_stderr())
    if threads is not None:
        set_numba_threads(threads)


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Shard folder to write.")
@click.option("--hu-min", default=DEFAULTS.hu_min, show_default=True, help="Lower bound of the bone window (HU).")
@click.option("--hu-max", default=DEFAULTS.hu_max, show_default=True, help="Upper bound of the bone window (HU).")
@click.option("--sigma", default=DEFAULTS.sigma, show_default=True, help="Gaussian smoothing sigma in pixels (0: off).")
@click.option("--patch", default=DEFAULTS.patch, show_default=True, help="Patch size n (n x n pixels).")
@click.option("--stride", default=DEFAULTS.stride, show_default=True, help="Patch grid stride in pixels.")
@click.option("--angles", default=",".join(f"{a:g}" for a in DEFAULTS.angles), show_default=True,
              help="Extra rotated copies of each slice, degrees, comma separated ('' for none).")
@click.option("--translations", default=DEFAULTS.translations, show_default=True,
              help="Randomly shifted copies of each (rotated or original) slice.")
@click.option("--max-shift", default=DEFAULTS.max_shift, show_default=True, help="Largest random shift, pixels.")
@click.option("--hu-gain", default=DEFAULTS.hu_gain, show_default=True,
              help="Intensity augmentation of the augmented views: HU x a gain in [1-G, 1+G] (before windowing).")
@click.option("--hu-offset", default=DEFAULTS.hu_offset, show_default=True,
              help="... plus an offset uniform in [-O, O] HU.")
@click.option("--noise-hu", default=DEFAULTS.noise_hu, show_default=True,
              help="... plus Gaussian noise of an SD uniform in [0, N] HU (as in low-dose scans).")
@click.option("--blur-px", default=DEFAULTS.blur_px, show_default=True,
              help="... then a Gaussian blur of an SD uniform in [0, B] pixels (coarser scanners, thick slices).")
@click.option("--coarsen", default=DEFAULTS.coarsen, show_default=True,
              help="... then the view as pixels F times larger show it, F uniform in [1, C] (coarse scans).")
@click.option("--zoom", default=DEFAULTS.zoom, show_default=True,
              help="Zoom every augmented view by a factor log-uniform in [1/(1+Z), 1+Z] (vertebrae of other sizes).")
@click.option("--flip", default=DEFAULTS.flip, show_default=True,
              help="Mirror each augmented view left-right with this probability.")
@click.option("--rus/--no-rus", default=DEFAULTS.rus, show_default=True,
              help="Random under-sampling of the majority class; --no-rus keeps every patch (evaluation shards).")
@click.option("--ratio", default="1:1", show_default=True, help="Kept MINORITY:MAJORITY count ratio per volume.")
@click.option("--seed", default=DEFAULTS.seed, show_default=True, help="Seed of augmentation and RUS.")
@click.option("--dtype", type=click.Choice(["uint8", "float16"]), default=DEFAULTS.dtype, show_default=True,
              help="Stored patch type: uint8 = round(intensity * 255); float16 keeps more.")
@labels_option
@pixel_option
@rule_option
@click.option("--shard-mb", default=DEFAULTS.shard_mb, show_default=True,
              help="Split a volume's shard into files of at most this many MB (uncompressed).")
@click.option("--workers", default=1, show_default=True, help="Volumes built in parallel (processes).")
@click.option("--dask", "cluster", default=None, metavar="ADDRESS",
              help="Build on a Dask distributed cluster, one task per volume: local:N starts N worker processes "
                   "here; otherwise a scheduler address (tcp://host:8786). INPUT and -o must be at the same paths "
                   "on every worker (a shared file system). Needs pip install 'patchstore[dask]'.")
@click.option("--part", default=None, metavar="K/N", help="Build only part K of N of the volumes (by content hash).")
@click.option("--keep-going", is_flag=True, help="Build the other volumes when one is bad; list the bad ones at the end.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@paper_option
@click.pass_context
def build(ctx, input_path, out, hu_min, hu_max, sigma, patch, stride, angles, translations, max_shift, hu_gain,
          hu_offset, noise_hu, blur_px, coarsen, zoom, flip, rus, ratio, seed, dtype, labels, pixel_mm, label_rule, shard_mb, workers,
          cluster, part, keep_going, quiet, paper) -> None:
    """Build RUS-balanced, augmented patch shards from INPUT (a Decathlon folder or an image,mask CSV).

    \b
    Examples:
      patchstore build data/ -o shards/ --workers 2
      patchstore build cases.csv -o shards/ --labels 26-50        # TotalSegmentator v2 vertebrae
      patchstore build data/ -o test-shards/ --angles "" --translations 0 --no-rus   # evaluation shards
      patchstore build data/ -o part1/ --part 1/2                  # then `patchstore merge part1/ part2/ -o shards/`
      patchstore build data/ -o shards/ --dask local:4             # a Dask cluster (tcp://scheduler:8786)
    """
    if cluster is not None and workers > 1:
        raise click.UsageError(f"--workers {workers} and --dask {cluster}: give one of them (the Dask cluster's "
                               f"workers build the volumes)")
    from patchstore.build import build as run_build
    from patchstore.build import parse_part
    cfg = BuildConfig(**_with_paper(ctx, paper, dict(
        hu_min=hu_min, hu_max=hu_max, sigma=sigma, patch=patch, stride=stride, angles=_floats(angles),
        translations=translations, max_shift=max_shift, rus=rus, ratio=_ratio(ratio), seed=seed, dtype=dtype,
        labels=_labels(labels), shard_mb=shard_mb, pixel_mm=_pixel_mm(pixel_mm), label_rule=label_rule,
        hu_gain=hu_gain, hu_offset=hu_offset, noise_hu=noise_hu, blur_px=blur_px, coarsen=coarsen, zoom=zoom, flip=flip)))
    result = run_build(input_path, out, cfg, workers=workers, part=parse_part(part), keep_going=keep_going,
                       quiet=quiet, cluster=cluster)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    t = result.manifest["totals"]
    click.echo(f"{out}: {t['shards']} shards, {t['patches']:,} patches (background {t['counts'][0]:,}, "
               f"vertebra {t['counts'][1]:,}); built {len(result.built)}, already complete {len(result.skipped)}")
    if result.failed:
        click.echo(f"{len(result.failed)} volume(s) failed and are not in the manifest:", err=True)
        for case_id, msg in result.failed:
            click.echo(f"  {case_id}: {msg}", err=True)
        sys.exit(1)


@main.command()
@click.argument("folder", metavar="FOLDER|URL", type=ShardSource())
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def info(folder, as_json) -> None:
    """Show what a shard FOLDER (or the one at URL) holds: shards, patches per class, build parameters.

    \b
    Examples:
      patchstore info shards/
      patchstore info shards/ --json > shards.json
      patchstore info https://data.example.org/spine/shards      # reads only its manifest.json
    """
    from patchstore.console import json_text
    from patchstore.store.info import format_info
    from patchstore.store.manifest import read_manifest
    from patchstore.store.remote import remote_manifest
    manifest = remote_manifest(folder) if isinstance(folder, str) else read_manifest(folder)
    click.echo(json_text(manifest, indent=2, sort_keys=True) if as_json else format_info(manifest))


@main.command()
@click.argument("source", metavar="FOLDER|URL", type=ShardSource())
@cache_option
def verify(source, cache) -> None:
    """Rehash and open every shard of FOLDER, check it against the manifest; exit 1 on any problem.

    A URL's files are fetched into the cache first (only those it lacks), each refused unless its
    size and SHA-256 are the manifest's; then its cached copy is verified as a folder is.

    \b
    Examples:
      patchstore verify shards/
      patchstore verify https://data.example.org/spine/shards --cache /scratch/cache
    """
    from patchstore.store.manifest import read_manifest
    from patchstore.store.remote import fetch
    from patchstore.store.verify import leftover_temps
    from patchstore.store.verify import verify as run_verify
    folder = source
    if isinstance(source, str):
        fetched = fetch(source, cache, progress=True)
        folder = fetched.folder
        for warning in fetched.warnings:  # the URL could not be reached: its cached copy is verified
            click.echo(f"warning: {warning}", err=True)
    problems = run_verify(folder)
    manifest = read_manifest(folder)
    n = len(manifest["shards"])
    if "part" in manifest:
        k, parts = manifest["part"]
        click.echo(f"note: part {k} of {parts} of a build (--part {k}/{parts}); `patchstore merge` joins all {parts}")
    for p in problems:
        click.echo(f"PROBLEM {p}")
    temps = leftover_temps(folder)
    if temps:
        click.echo(f"note: {len(temps)} temporary file(s) of an interrupted build (not listed; removed by the next build)")
    if problems:
        click.echo(f"{source}: {len(problems)} problem(s) in {n} listed shards")
        sys.exit(1)
    click.echo(f"{source}: OK, {n} shards intact")


@main.command()
@click.argument("url")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to copy the shard set into (new or empty, or a pull that stopped).")
def pull(url, out) -> None:
    """Copy the shard folder at URL into a plain local shard folder OUT (-o), every file checked
    against the manifest's size and SHA-256, the manifest written last; run again to resume.

    \b
    Examples:
      patchstore pull https://data.example.org/spine/shards -o shards/
      patchstore pull s3://bucket/spine/shards -o shards/       # pip install 'patchstore[s3]'
    """
    from patchstore.store.remote import pull as run_pull
    manifest = run_pull(url, out, progress=True)
    t = manifest["totals"]
    click.echo(f"{out}: {len(manifest['shards'])} shards, {t['patches']:,} patches from {url}")


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="New shard folder.")
def merge(inputs, out) -> None:
    """Merge the shard folders INPUTS, built with identical parameters (e.g. --part 1/2 and 2/2), into
    the new folder given by -o OUT.

    \b
    Example:
      patchstore merge part1/ part2/ -o shards/
    """
    from patchstore.store.merge import merge as run_merge
    manifest = run_merge(list(inputs), out)
    t = manifest["totals"]
    click.echo(f"{out}: {t['shards']} shards, {t['patches']:,} patches from {len(inputs)} folders")


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@labels_option
@click.option("--patch", default=DEFAULTS.patch, show_default=True, help="Patch size the vertebra patches are counted for.")
@click.option("--stride", default=DEFAULTS.stride, show_default=True, help="Grid stride the vertebra patches are counted at.")
@pixel_option
@rule_option
@paper_option
@click.pass_context
def check(ctx, input_path, labels, patch, stride, pixel_mm, label_rule, paper) -> None:
    """Validate a dataset (Decathlon folder or image,mask CSV) before building; exit 1 on any problem.

    Per case: size, spacing, orientation, labels, the vertebra patches a build would get at the
    pixel size and label rule given, and the DSC an ideal classifier of those labels reaches
    (warning below 0.8, with a pixel size that lifts it).

    \b
    Examples:
      patchstore check data/
      patchstore check cases.csv --labels 26-50 --pixel-mm 0.4
    """
    from patchstore.io.check import check_dataset
    given = _with_paper(ctx, paper, dict(stride=stride, pixel_mm=_pixel_mm(pixel_mm), label_rule=label_rule))
    n_cases, problems, warnings = 0, [], []
    for report in check_dataset(input_path, _labels(labels), patch, given["stride"], given["pixel_mm"],
                                given["label_rule"]):
        n_cases += 1
        click.echo(report.line())
        for p in report.problems:
            click.echo(f"  PROBLEM {p}")
        for w in report.warnings:
            click.echo(f"  WARNING {w}")
        problems.extend(report.problems)
        warnings.extend(report.warnings)
    click.echo(f"{n_cases} case(s), {len(problems)} problem(s), {len(warnings)} warning(s)")
    if problems:
        sys.exit(1)


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--cases", default=4, show_default=True, help="Number of cases.")
@click.option("--seed", default=0, show_default=True, help="Seed; case i depends only on (seed, i).")
@click.option("--size", default=128, show_default=True, help="In-plane size (512 for CSI-sized volumes).")
@click.option("--slices", default=48, show_default=True, help="Axial slices (550 for CSI-sized volumes).")
# The choices of patchstore.phantom.contrast (CONTRASTS, FOVS), spelled out so --help needs no numpy.
@click.option("--contrast", type=click.Choice(["none", "arterial", "venous", "mixed"]), default="none",
              show_default=True,
              help="IV contrast phase: none, late arterial, portal venous, or mixed (one of the three per case). "
                   "Any phase (or --fov body) adds liver, spleen, kidneys, pancreas, bowel and portal system "
                   "at that phase's HU, with low-dose noise; none with --fov spine is the original spine phantom.")
@click.option("--fov", type=click.Choice(["spine", "body"]), default="spine", show_default=True,
              help="Field of view: spine-centred (0.31-0.45 mm pixels at 512) or the whole torso cross-section "
                   "plus a margin (1.1-1.3 x the body width, 0.6-0.85 mm pixels at 512).")
def phantom(out, cases, seed, size, slices, contrast, fov) -> None:
    """Write synthetic spine CT phantoms (HU, with vertebra masks) in the Decathlon layout to OUT.

    \b
    Examples:
      patchstore phantom data/ --cases 4
      patchstore phantom test/ --cases 1 --seed 1000                 # a case no training phantom shares
      patchstore phantom big/ --size 512 --slices 550 --contrast mixed --fov body
    """
    from patchstore.phantom.generate import write_dataset
    paths = write_dataset(out, cases=cases, seed=seed, size=size, slices=slices, contrast=contrast, fov=fov)
    click.echo(f"{out}: {len(paths)} phantom case(s), {size}x{size}x{slices}, contrast {contrast}, field of view {fov}")
