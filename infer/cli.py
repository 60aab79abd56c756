"""`infer` console script: thin click wrappers over infer.cases, infer.batch, infer.report, infer.mine
and infer.metrics."""

from __future__ import annotations

import math
from pathlib import Path

import click

import patchstore
from patchstore.cli_errors import ErrorGroup

LABELS_HELP = ("Reference label values that mean vertebra, e.g. 26-50 (TotalSegmentator v2) or 1-25,28 (VerSe); "
               "default: nonzero.")
DEVICE_HELP = "auto: the GPU when there is one."


def _labels(spec: str | None) -> tuple[int, ...]:
    from patchstore.io.volume import parse_labels
    try:
        return parse_labels(spec)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix (a bad volume, checkpoint or output path): one line, exit 1;
    --debug shows the traceback. All the libraries' errors derive from ValueError."""
    return (ValueError, OSError)


def _number(spec: str) -> float:
    """``spec`` as a float, NaN where it is not a number."""
    try:
        return float(spec)
    except ValueError:
        return float("nan")


def _refine(spec: str) -> str | float | None:
    """``--refine``: "window" (the checkpoint's window floor), None for "none", or a HU value."""
    if spec == "window":
        return spec
    if spec == "none":
        return None
    value = _number(spec)
    if not math.isfinite(value):
        raise click.BadParameter(f"expected window, none or a HU value, got {spec!r}", param_hint="--refine")
    return value


def _distance(spec: str, option: str, zero: bool = False) -> float | None:
    """A distance option (``--midline-mm``, ``--z-sigma-mm``): None for "none", else mm > 0
    (>= 0 where ``zero``)."""
    if spec == "none":
        return None
    value = _number(spec)
    if not (math.isfinite(value) and (value > 0 or zero and value == 0)):
        raise click.BadParameter(f"expected none or a distance in mm {'of at least' if zero else 'above'} 0, "
                                 f"got {spec!r}", param_hint=option)
    return value


def check_outputs(paths: list[Path | None], folders: list[Path | None] = ()) -> None:
    """Refuse outputs that can't be written, before any inference runs: a volume format no writer
    knows (``-o x.txt``), or a folder that can't take files."""
    from patchstore.files import ensure_writable
    from patchstore.io.volume import output_suffix
    for path in paths:
        if path is not None:
            output_suffix(path)
            ensure_writable(path.parent)
    for folder in folders:
        if folder is not None:
            ensure_writable(folder)


@click.group(cls=ErrorGroup, user_errors=user_errors,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(patchstore.__version__, prog_name="infer")
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="CPU threads of torch (intra-op) and numba; default: the libraries' own (one per core).")
def main(threads: int | None) -> None:
    """Segment vertebrae in CT with a trained OP-convNet: every pixel's 32x32 patch, exactly.

    Typical use: `infer volume data/imagesTr/ -m runs/first/best.pt -o predictions/`.

    Options of the group go before the command: `infer --threads 4 volume ...`.
    Progress bars written to a file or pipe (not a terminal) print one line every 30 s.
    """
    from patchstore.console import set_numba_threads, throttled_stderr
    from patchstore.memory import keep_freed_memory
    keep_freed_memory()  # large per-slice and per-volume temporaries: reuse freed pages
    click.get_current_context().with_resource(throttled_stderr())
    if threads is not None:
        import torch
        torch.set_num_threads(threads)
        set_numba_threads(threads)


def _print_scores(entry: dict, cfg) -> None:
    """The metric table of a scored case, and what its label-rule DSC means."""
    from infer.metrics import format_table
    click.echo(format_table(entry["metrics"], title=f"{entry['case']} vs {entry['reference']}",
                            reasons=entry["undefined"]))
    rule = entry["label_rule_DSC"]
    if rule is None:
        click.echo("label-rule DSC n/a (the reference is empty)")
        return
    click.echo(f"label-rule DSC {rule:.2%}: an ideal classifier of the training labels ({cfg.label_rule} rule, "
               f"{cfg.patch}x{cfg.patch} patches of {entry['label_rule_pixel_mm']:.2f} mm pixels) would score "
               f"this; not a bound (see README)")


@main.command()
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-m", "--model", "checkpoint", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Checkpoint from `train run`, e.g. runs/NAME/best.pt.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="A single CT: the mask file (format from the extension). Otherwise a folder: one <case>.nii.gz "
                   "per case.")
@click.option("--engine", type=click.Choice(["dense", "patches", "cascade"]), default="dense", show_default=True,
              help="dense: exact fully convolutional rewrite; patches: literal patch extraction (reference); cascade: "
                   "the dense engine on a lattice of every --cascade-step-th pixel, then exactly where the answer can "
                   "change, interpolated elsewhere (faster; not exact: see README).")
@click.option("--cascade-step", type=click.Choice(["2", "4", "8"]), default="4", show_default=True,
              help="--engine cascade: pixels between lattice lines (8 suits native pixels of about 0.7 mm: the same "
                   "5.6 mm as 4 at the 1.4 mm default).")
@click.option("--skip-zero/--no-skip-zero", default=True, show_default=True,
              help="Pixels whose whole patch is zero after windowing get the zero patch's class (exact).")
@click.option("--body-mask", is_flag=True,
              help="Also skip pixels outside the body (per slice: HU > -500, opening, largest component, "
                   "holes filled): they get the zero patch's class. Faster; not exact.")
@click.option("--batch-slices", default=4, show_default=True, help="Axial slices per batch (bounds memory).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help=DEVICE_HELP)
@click.option("--bf16", is_flag=True,
              help="The dense and cascade engines in bfloat16 (the patch engine under autocast); logits then agree "
                   "only approximately. Faster on GPUs and on CPUs with AVX512-BF16 or AMX (1.4-1.8x measured), "
                   "slower on other CPUs (a warning says so).")
@click.option("--tf32", is_flag=True, help="GPU only: TF32 matmuls and convolutions (faster, approximate).")
@click.option("--postprocess", "postprocess", type=click.Choice(["paper", "spine", "none"]), default="spine",
              show_default=True,
              help="paper: opening, hole filling, large 3-D components (the paper's final step); spine: also keep "
                   "only what lies along the spine (drops ribs, scapulae, vessels); none: the raw classification.")
@click.option("--refine", "refine", default="window", show_default=True, metavar="window|none|HU",
              help="After --postprocess paper or spine: keep only the mask's pixels at or above this HU (window: the "
                   "model's window floor, 100 HU by default; below it the network sees them as air), close one-pixel "
                   "gaps and fill each slice's holes of a median of at least 50 HU (dark marrow, not the spinal canal). "
                   "Trims the soft-tissue rim a patch classifier draws around bone; never adds a pixel. none: the "
                   "paper's steps alone.")
@click.option("--midline-mm", "midline", default="50", show_default=True, metavar="MM|none",
              help="--postprocess spine: where the spine track lies more than MM left or right of the body's midline "
                   "(a false positive below or beside the spine), keep nothing in that slice; none: no limit (a "
                   "severely scoliotic spine).")
@click.option("--z-sigma-mm", "z_sigma", default="2", show_default=True, metavar="MM|none",
              help="Smooth the vertebra probability along z with a Gaussian of MM before the threshold: a vertebra "
                   "continues across slices, the network's errors mostly do not (raised the DSC on every test scan "
                   "measured). Above 2 mm, discs thinner than 4 mm start to fill. none or 0: every slice decided "
                   "alone, as the paper does.")
@click.option("--threshold", default=0.5, show_default=True,
              help="Vertebra where the probability exceeds this (0.5: the network's argmax).")
@click.option("--probabilities", type=click.Path(path_type=Path), default=None,
              help="Also write the vertebra probability map (float32, 0..1, smoothed as --z-sigma-mm says): a file "
                   "for a single CT, else a folder of <case>_prob.nii.gz.")
@click.option("--reference", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Reference masks: a file per single CT (repeat in their order), or one folder of "
                   "<case>.nii.gz (or holding labelsTr/). A CSV's mask column needs none. Prints the paper's "
                   "metrics; into an output folder also metrics.csv and summary.json (mean and sd).")
@click.option("--labels", default=None, metavar="SPEC", help=LABELS_HELP)
@click.option("--tolerance-mm", default=2.0, show_default=True, help="Boundary F1 (BF) matching tolerance.")
@click.option("--overlay", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write pictures into this folder: <case>_summary.png (sagittal and coronal views through the "
                   "prediction's centre) and <case>/slice_ZZZZ.png (4 axial slices, like the paper's Fig. 14).")
@click.option("--overwrite", is_flag=True,
              help="Segment every case again, also those whose mask is already in the output folder (default: "
                   "skip them, to resume an interrupted run).")
@click.option("--json", "as_json", is_flag=True, help="Print each case's report as JSON (keyed by input image).")
@click.option("--quiet", is_flag=True, help="No progress bar or per-case timing lines.")
def volume(inputs, checkpoint, out, engine, cascade_step, skip_zero, body_mask, batch_slices, device, bf16, tf32,
           postprocess, refine, midline, z_sigma, threshold, probabilities, reference, labels, tolerance_mm, overlay,
           overwrite, as_json, quiet) -> None:
    """Segment the vertebrae of each CT into a mask (uint8, 1 = vertebra) with the CT's exact geometry.

    INPUT: a CT file (NIfTI, MHA/MHD, NRRD), a DICOM series folder, a folder of CTs (imagesTr/,
    with or without the _0000 suffix, or a dataset folder holding imagesTr/), or a CSV with the
    header image[,mask][,case] (paths relative to the CSV; the mask column gives references).

    \b
    Examples:
      infer volume ct.nii.gz -m runs/first/best.pt -o ct_vertebrae.nii.gz
      infer volume data/imagesTr/ -m runs/first/best.pt -o predictions/ --reference data/labelsTr/
      infer volume cases.csv -m runs/first/best.pt -o predictions/ --overlay predictions/png/
      infer --threads 4 volume series/ -m best.pt -o seg.nrrd --reference ref.nii.gz --labels 26-50

    \b
    Several cases (or a folder or CSV) write a folder, one <case>.nii.gz each (nnU-Net style);
    a case whose mask is there already is skipped (resume; --overwrite redoes it) and, with
    references, scored from that mask, so metrics.csv and summary.json cover every case.
    """
    from tqdm import tqdm

    from infer.batch import score_existing, segment_case
    from infer.cases import find_cases, plan_outputs, writes_folder
    from infer.predict import load_model, training_pixel_mm
    from infer.report import format_summary, write_reports
    from patchstore.console import json_text
    from train.model import cpu_has_native_bf16, pick_device
    label_values = _labels(labels)
    refine = _refine(refine)
    midline = _distance(midline, "--midline-mm")
    z_sigma = _distance(z_sigma, "--z-sigma-mm", zero=True)
    dev = pick_device(device)
    if tf32 and dev.type != "cuda":
        raise click.BadParameter(f"--tf32 is for GPUs only; the device is {dev}", param_hint="--tf32")
    if bf16 and dev.type == "cpu" and cpu_has_native_bf16() is False:
        click.echo("warning: --bf16: this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16 in /proc/cpuinfo); "
                   "bf16 is emulated and likely slower than fp32", err=True)
    cases = find_cases(inputs, reference)
    folder = writes_folder(inputs, out)
    plans = plan_outputs(cases, out, folder, probabilities, overlay)
    check_outputs([p.mask for p in plans] + [p.probability for p in plans], [overlay, out if folder else None])
    model, cfg = load_model(checkpoint, dev)
    trained_at = training_pixel_mm(checkpoint)
    entries = []
    for i, (case, plan) in enumerate(zip(cases, plans), start=1):
        if folder and plan.mask.exists() and not overwrite:
            click.echo(f"{case.case_id}: skipped, {plan.mask} exists (an earlier run's; --overwrite segments it "
                       f"again)", err=True)
            entry = score_existing(case, plan, cfg, labels=label_values, tolerance_mm=tolerance_mm)
        else:
            with tqdm(desc=f"{i}/{len(cases)} {case.case_id}", unit="slice", disable=quiet) as bar:
                def advance(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)
                entry = segment_case(case, plan, model, cfg, labels=label_values, tolerance_mm=tolerance_mm,
                                     trained_at=trained_at, warn=lambda s: click.echo(f"warning: {s}", err=True),
                                     progress=advance, postprocess_method=postprocess, threshold=threshold,
                                     refine=refine, midline_mm=midline, z_sigma_mm=z_sigma, engine=engine,
                                     cascade_step=int(cascade_step), skip_zero=skip_zero, body=body_mask,
                                     batch_slices=batch_slices, device=dev, bf16=bf16, tf32=tf32)
            if not quiet and not as_json:
                click.echo(f"{case.image} -> {plan.mask}: {entry['seconds']:.1f} s, {entry['pixels_per_s']:,} "
                           f"pixels/s, {entry['skipped_fraction']:.1%} of pixels skipped")
        if "metrics" in entry and not as_json:
            _print_scores(entry, cfg)
        entries.append(entry)
    if folder and any("metrics" in e for e in entries):
        csv_path, json_path, summary = write_reports(out, entries)
        if not as_json:
            click.echo(format_summary(summary, sum("metrics" in e for e in entries)))
            click.echo(f"per case: {csv_path}; summary: {json_path}")
    if folder:
        skipped = sum(e["skipped"] for e in entries)
        click.echo(f"{out}: {len(entries)} case(s), {len(entries) - skipped} segmented, {skipped} skipped (done "
                   f"before)", err=as_json)
    if as_json:
        click.echo(json_text({e["image"]: e for e in entries}, indent=2))


@main.command()
@click.argument("dataset", type=click.Path(exists=True, path_type=Path))
@click.option("-m", "--model", "checkpoint", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Checkpoint from `train run`, e.g. runs/NAME/best.pt.")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="New shard folder for the mistakes.")
@click.option("--per-volume", default=5000, show_default=True,
              help="At most this many patches per volume: half false positives, half false negatives.")
@click.option("--seed", default=0, show_default=True, help="Seed of the sampling (with each volume's content hash).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help=DEVICE_HELP)
@click.option("--quiet", is_flag=True, help="No progress bar or per-volume lines.")
def mine(dataset, checkpoint, out, per_volume, seed, device, quiet) -> None:
    """Hard examples: classify every pixel of the labelled volumes in DATASET (Decathlon folder or
    image,mask CSV, as `patchstore build` takes) with a trained model and write the patches it gets
    wrong (false positives and negatives) as shards with the checkpoint's build parameters.

    \b
    Examples:
      infer mine data/ -m runs/first/best.pt -o mined/
      train run shards/ mined/ -o runs/second       # the original shards plus the mistakes
    """
    from tqdm import tqdm

    from infer.mine import mine as run_mine
    from train.model import pick_device
    with tqdm(desc="slices", unit="slice", disable=quiet) as bar:
        manifest = run_mine(dataset, checkpoint, out, per_volume=per_volume, seed=seed, device=pick_device(device),
                            log=(lambda s: None) if quiet else bar.write, progress=bar.update)
    t = manifest["totals"]
    click.echo(f"{out}: {t['shards']} shards, {t['patches']:,} patches (false positives {t['counts'][0]:,}, "
               f"false negatives {t['counts'][1]:,})")


@main.command()
@click.argument("pred", type=click.Path(exists=True, path_type=Path))
@click.argument("ref", type=click.Path(exists=True, path_type=Path))
@click.option("--labels", default=None, metavar="SPEC", help=LABELS_HELP)
@click.option("--pred-labels", default=None, metavar="SPEC", help="Label values of PRED that mean vertebra; default nonzero.")
@click.option("--tolerance-mm", default=2.0, show_default=True, help="Boundary F1 (BF) matching tolerance.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON (undefined ones null, the reasons "
                                                      "under 'undefined').")
def evaluate(pred, ref, labels, pred_labels, tolerance_mm, as_json) -> None:
    """Compare a predicted mask PRED with a reference REF (same grid): DSC, JAC, SEN, PRE, SPE, ACC, BF, HD95, ASSD.

    \b
    Examples:
      infer evaluate pred.nii.gz ref.nii.gz
      infer evaluate totalseg.nii.gz verse_mask.nii.gz --pred-labels 26-50 --labels 1-25,28 --json
    """
    from infer.metrics import format_table, reasons_for, segmentation_metrics
    from infer.predict import read_reference
    from patchstore.console import json_text
    from patchstore.io.volume import binarize, read_volume
    p = read_volume(pred, dtype=None)
    r = read_reference(ref, p, _labels(labels))
    mask = binarize(p.array, _labels(pred_labels)).astype(bool)
    m = segmentation_metrics(mask, r, p.geometry.spacing_zyx, tolerance_mm)
    why = reasons_for(mask, r)
    click.echo(json_text({**m, "undefined": why}, indent=2) if as_json
               else format_table(m, title=f"{pred} vs {ref}", reasons=why))
