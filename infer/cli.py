"""`infer` console script: thin click wrappers over infer.predict and infer.metrics."""

from __future__ import annotations

import json
from pathlib import Path

import click

import patchstore
from patchstore.cli_errors import ErrorGroup

LABELS_HELP = "Reference label values that mean vertebra, e.g. 25-50; default: nonzero."


def _labels(spec: str | None) -> tuple[int, ...]:
    from patchstore.io.volume import parse_labels
    try:
        return parse_labels(spec)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _case_name(path: Path) -> str:
    from patchstore.io.discover import strip_volume_suffix
    return strip_volume_suffix(path.name) or path.name


def _outputs(inputs: list[Path], out: Path, suffix: str = ".nii.gz", tag: str = "") -> list[Path]:
    """One input: ``out`` is the file. Several: ``out`` is a folder of <case><tag><suffix>."""
    if len(inputs) == 1 and not out.is_dir():
        return [out]
    names = [_case_name(p) for p in inputs]
    if len(set(names)) != len(names):
        raise click.BadParameter(f"inputs share case names {names}; expected distinct names for {out}/")
    return [out / f"{n}{tag}{suffix}" for n in names]


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix (a bad volume, checkpoint or output path): one line, exit 1;
    --debug shows the traceback. All the libraries' errors derive from ValueError."""
    return (ValueError, OSError)


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
def main() -> None:
    """Segment vertebrae in CT with a trained OP-convNet: every pixel's 32x32 patch, exactly."""
    from patchstore.memory import keep_freed_memory
    keep_freed_memory()  # large per-slice and per-volume temporaries: reuse freed pages


@main.command()
@click.argument("cts", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-m", "--model", "checkpoint", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Checkpoint from `train run`, e.g. runs/NAME/best.pt.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Output mask file (one CT) or folder (several); format from the extension.")
@click.option("--engine", type=click.Choice(["dense", "patches"]), default="dense", show_default=True,
              help="dense: exact fully convolutional rewrite; patches: literal patch extraction (reference).")
@click.option("--skip-zero/--no-skip-zero", default=True, show_default=True,
              help="Pixels whose whole patch is zero after windowing get the zero patch's class (exact).")
@click.option("--body-mask", is_flag=True,
              help="Also skip pixels outside the body (per slice: HU > -500, opening, largest component, "
                   "holes filled): they get the zero patch's class. Faster; not exact.")
@click.option("--batch-slices", default=4, show_default=True, help="Axial slices per batch (bounds memory).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--bf16", is_flag=True, help="bf16 autocast (GPU opt-in; logits then agree only approximately).")
@click.option("--postprocess", "postprocess", type=click.Choice(["paper", "spine", "none"]), default="paper",
              show_default=True,
              help="paper: opening, hole filling, large 3-D components (the paper's final step); spine: also keep "
                   "only what lies along the spine (drops ribs, scapulae, vessels); none: the raw classification.")
@click.option("--threshold", default=0.5, show_default=True,
              help="Vertebra where the probability exceeds this (0.5: the network's argmax).")
@click.option("--probabilities", type=click.Path(path_type=Path), default=None,
              help="Also write the vertebra probability map (file for one CT, folder for several).")
@click.option("--reference", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Reference mask per CT (repeat in the order of the CTs): prints the paper's metrics.")
@click.option("--labels", default=None, metavar="SPEC", help=LABELS_HELP)
@click.option("--tolerance-mm", default=2.0, show_default=True, help="Boundary F1 (BF) matching tolerance.")
@click.option("--overlay", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write PNGs of a few slices with CT, reference and prediction (like the paper's Fig. 14).")
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def volume(cts, checkpoint, out, engine, skip_zero, body_mask, batch_slices, device, bf16, postprocess, threshold,
           probabilities, reference, labels, tolerance_mm, overlay, as_json, quiet) -> None:
    """Segment each CT (NIfTI, MHA/MHD, NRRD or a DICOM series folder) into a vertebra mask."""
    from tqdm import tqdm

    from infer.metrics import format_table, segmentation_metrics
    from infer.overlay import write_overlays
    from infer.predict import load_model, pixel_warning, read_reference, segment, training_pixel_mm
    from patchstore.io.volume import read_volume, write_mask, write_oriented
    from patchstore.stages.patches import rule_dsc
    from patchstore.stages.resample import plane_grid
    from train.model import pick_device
    if reference and len(reference) != len(cts):
        raise click.BadParameter(f"{len(reference)} --reference for {len(cts)} CTs; expected one per CT")
    cts = list(cts)
    if len(cts) > 1:
        out.mkdir(parents=True, exist_ok=True)
    outs = _outputs(cts, out)
    probs = _outputs(cts, probabilities, tag="_prob") if probabilities else [None] * len(cts)
    if probabilities and len(cts) > 1:
        probabilities.mkdir(parents=True, exist_ok=True)
    check_outputs(outs + probs, [overlay])
    dev = pick_device(device)
    model, cfg = load_model(checkpoint, dev)
    trained_at = training_pixel_mm(checkpoint)
    report = {}
    for i, (ct, dst, prob_dst) in enumerate(zip(cts, outs, probs)):
        vol = read_volume(ct)
        ref = read_reference(reference[i], vol, _labels(labels)) if reference else None
        spacing_yx = vol.geometry.spacing_zyx[1:]
        warning = pixel_warning(cfg, trained_at, spacing_yx)
        if warning:
            click.echo(f"warning: {ct}: {warning}", err=True)
        plane = vol.array.shape[1] * vol.array.shape[2]
        with tqdm(total=vol.array.size, desc=_case_name(ct), unit="px", unit_scale=True, disable=quiet) as bar:
            pred = segment(model, cfg, vol, postprocess_method=postprocess, threshold=threshold, engine=engine,
                           skip_zero=skip_zero,
                           body=body_mask, batch_slices=batch_slices, device=dev, bf16=bf16,
                           progress=lambda slices: bar.update(slices * plane))
        if not pred.mask.any():
            click.echo(f"warning: {ct}: the predicted mask is empty (no pixel classified vertebra"
                       + (" after post-processing" if pred.raw.any() else "") + ")", err=True)
        write_mask(dst, pred.mask, vol.geometry, vol.source)
        if prob_dst:
            write_oriented(prob_dst, pred.probability, vol.geometry, vol.source)
        pixels = vol.array.size
        entry = {"output": str(dst), "seconds": round(pred.seconds, 3),
                 "pixels_per_s": round(pixels / pred.seconds), "skipped_fraction": round(pred.skipped_fraction, 4)}
        if not quiet and not as_json:
            click.echo(f"{ct} -> {dst}: {pred.seconds:.1f} s, {pixels / pred.seconds:,.0f} pixels/s, "
                       f"{pred.skipped_fraction:.1%} of pixels skipped")
        if ref is not None:
            sp = vol.geometry.spacing_zyx
            entry["metrics"] = segmentation_metrics(pred.mask, ref, sp, tolerance_mm)
            if postprocess != "none":
                entry["metrics_raw"] = segmentation_metrics(pred.raw, ref, sp, tolerance_mm)
            grid = plane_grid(ref.shape[1:], spacing_yx, cfg.pixel_mm)
            entry["label_rule_DSC"] = rule_dsc(ref, cfg.patch, cfg.label_rule, grid)
            if not as_json:
                click.echo(format_table(entry["metrics"], title=f"{_case_name(ct)} vs {reference[i]}"))
                click.echo(f"label-rule DSC {entry['label_rule_DSC']:.2%}: an ideal classifier of the training "
                           f"labels ({cfg.label_rule} rule, {cfg.patch}x{cfg.patch} patches of "
                           f"{grid.spacing[1]:.2f} mm pixels) would score this; not a bound (see README)")
        if overlay:
            write_overlays(overlay / _case_name(ct), vol.array, pred.mask, ref, vol.geometry.spacing_zyx)
        report[str(ct)] = entry
    if as_json:
        click.echo(json.dumps(report, indent=2, default=float))


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
              help="auto: the GPU when there is one.")
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
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON.")
def evaluate(pred, ref, labels, pred_labels, tolerance_mm, as_json) -> None:
    """Compare a predicted mask PRED with a reference REF (same grid): DSC, JAC, SEN, PRE, SPE, ACC, BF, HD95, ASSD."""
    from infer.metrics import format_table, segmentation_metrics
    from infer.predict import read_reference
    from patchstore.io.volume import binarize, read_volume
    p = read_volume(pred, dtype=None)
    r = read_reference(ref, p, _labels(labels))
    m = segmentation_metrics(binarize(p.array, _labels(pred_labels)).astype(bool), r, p.geometry.spacing_zyx,
                             tolerance_mm)
    click.echo(json.dumps(m, indent=2, default=float) if as_json else format_table(m, title=f"{pred} vs {ref}"))
