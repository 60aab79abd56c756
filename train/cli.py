"""`train` console script: thin click wrappers over ``train.loop.train`` and ``evaluate_checkpoint``.

Every `train run` option is one TrainConfig field (same name, dashes for underscores); the output
folder and --resume say where, not how.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import click
from click.core import ParameterSource

import patchstore
from patchstore.cli_errors import ErrorGroup
from patchstore.cli_params import ShardSource, cache_option
from train.config import AMPS, DEVICES, INITS, PAPER, RESUMABLE_CHANGES, SPLITS, TrainConfig

D = TrainConfig()


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix: one line, no traceback (--debug shows it). Imported here,
    not at the top, so `train --help` answers without loading torch."""
    from patchstore.lock import LockError
    from patchstore.store.download import RemoteError
    from patchstore.store.shard import ShardError
    from train.checkpoint import CheckpointError
    from train.data import DataError
    return (DataError, CheckpointError, ShardError, RemoteError, LockError, ValueError, OSError)


@click.group(cls=ErrorGroup, user_errors=user_errors,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(patchstore.__version__, prog_name="train")
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="CPU threads of torch (intra-op) and numba in each process; default: the libraries' own "
                   "(one per core).")
def main(threads: int | None) -> None:
    """Train and evaluate the OP-convNet vertebra patch classifier on patchstore shards.

    Typical use: `train run shards/ -o runs/first`, then `train evaluate runs/first/best.pt test-shards/`.
    Several processes: `torchrun --nproc-per-node 2 $(which train) run shards/ -o runs/ddp`.

    Options of the group go before the command: `train --threads 4 run shards/ -o runs/first`.
    Progress bars written to a file or pipe (not a terminal) print one line every 30 s.
    """
    from patchstore.console import set_numba_threads, throttled_stderr
    click.get_current_context().with_resource(throttled_stderr())
    if threads is not None:
        import torch
        torch.set_num_threads(threads)
        set_numba_threads(threads)


@main.command()
@click.argument("shards", nargs=-1, required=True, type=ShardSource())
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder to write (default: runs/<timestamp>).")
@click.option("--resume", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Continue the run in this folder from its last.pt. Its options are kept; those given here "
                   f"override them, but only {', '.join(RESUMABLE_CHANGES)} may change.")
@click.option("--val-fraction", default=D.val_fraction, show_default=True, help="Share of patches for validation.")
@click.option("--split-by", type=click.Choice(SPLITS), default=D.split_by, show_default=True,
              help="volume: each source volume wholly on one side (one volume: slice ranges); "
                   "patch: the paper's random split of patches.")
@click.option("--epochs", default=D.epochs, show_default=True, help="Training epochs.")
@click.option("--batch-size", default=D.batch_size, show_default=True,
              help="Mini-batch size (over all processes together).")
@click.option("--lr", default=D.lr, show_default=True, help="Initial learning rate (SGD).")
@click.option("--lr-step", default=D.lr_step, show_default=True, help="Epochs between learning-rate drops.")
@click.option("--lr-gamma", default=D.lr_gamma, show_default=True, help="Learning-rate drop factor.")
@click.option("--momentum", default=D.momentum, show_default=True, help="SGD momentum.")
@click.option("--weight-decay", default=D.weight_decay, show_default=True, help="L2 weight decay.")
@click.option("--dropout", default=D.dropout, show_default=True, help="Dropout after fc1 and fc2.")
@click.option("--init", type=click.Choice(INITS), default=D.init, show_default=True,
              help="paper: weights N(0, init-std), zero biases; kaiming: He normal (starts faster on small data).")
@click.option("--init-std", default=D.init_std, show_default=True, help="Standard deviation of --init paper.")
@click.option("--seed", default=D.seed, show_default=True, help="Seed of initialisation, split, order and dropout.")
@click.option("--max-steps", default=D.max_steps, show_default=True,
              help="At most this many training (and validation) batches per epoch; 0: all. For smoke tests.")
@click.option("--eval-batch-size", default=D.eval_batch_size, show_default=True, help="Validation batch size.")
@click.option("--device", type=click.Choice(DEVICES), default=D.device, show_default=True,
              help="auto: the GPU when there is one.")
@click.option("--amp", type=click.Choice(AMPS), default=D.amp, show_default=True,
              help="bf16: autocast on the GPU (not on CPU).")
@click.option("--channels-last/--no-channels-last", default=D.channels_last, show_default=True,
              help="Channels-last memory format for model and batches (faster for OP-convNet's small convolutions; "
                   "deterministic on CPU either way).")
@click.option("--compile", is_flag=True, help="torch.compile the model (slow start, faster steps).")
@click.option("--tf32", is_flag=True, help="CUDA: TF32 matmuls and convolutions (faster, about 10 mantissa bits); "
                                           "off: true fp32. No effect on CPU.")
@click.option("--deterministic", is_flag=True,
              help="CUDA: deterministic kernels and no cudnn.benchmark autotuning (bit-reproducible runs, slower). "
                   "The CPU is deterministic anyway.")
@click.option("--verify", is_flag=True, help="Rehash and read every shard first (patchstore verify).")
@cache_option
@click.option("--quiet", is_flag=True, help="No progress bars or epoch lines.")
@click.option("--paper", is_flag=True,
              help="The paper's training: N(0, 0.01) initialisation and a random split of patches "
                   "(options given explicitly still apply).")
@click.pass_context
def run(ctx: click.Context, shards: tuple[Path | str, ...], out: Path | None, resume: Path | None, cache: Path | None,
        paper: bool, **fields) -> None:
    """Train OP-convNet on the shard folder SHARDS (or several, e.g. a build and `infer mine`'s output,
    concatenated; they must agree on preprocessing). A folder may be a URL: its files are fetched into
    the cache (--cache) once, each checked against the manifest's SHA-256.

    \b
    Examples:
      train run shards/ -o runs/first --init kaiming
      train run shards/ mined/ -o runs/second          # with the hard negatives of `infer mine`
      train run shards/ --resume runs/first --epochs 40
      train run https://data.example.org/spine/shards -o runs/remote
    """
    from train.checkpoint import load_checkpoint
    from train.loop import train
    if resume is not None and out is not None and out.resolve() != resume.resolve():
        raise click.BadParameter(f"-o {out} differs from --resume {resume}; give one of them", param_hint="-o")
    if resume is not None:
        old = load_checkpoint(resume / "last.pt")["config"]
        given = {k: v for k, v in fields.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
        cfg = dataclasses.replace(TrainConfig.from_dict(old), **given)
    else:
        if paper:
            fields.update({k: v for k, v in PAPER.items() if ctx.get_parameter_source(k) == ParameterSource.DEFAULT})
        cfg = TrainConfig(**fields)
    run_dir = resume or out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    result = train(list(shards), run_dir, cfg, resume=resume is not None, cache=cache)
    if result.get("confusion") and not cfg.quiet:
        c = result["confusion"]
        click.echo(f"best epoch {c['epoch']}: val loss {c['val_loss']:.4f}, " +
                   ", ".join(f"{k} {c[k]:.4f}" for k in ("PRE", "SPE", "ACC", "F-score", "SEN")) + f" -> {run_dir}")


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("shards", type=ShardSource())
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="auto: the GPU when there is one.")
@click.option("--batch-size", default=1024, show_default=True, help="Patches per forward pass.")
@click.option("--verify", is_flag=True, help="Rehash and read every shard first (patchstore verify).")
@cache_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def evaluate(checkpoint: Path, shards: Path | str, device: str, batch_size: int, verify: bool, cache: Path | None,
             as_json: bool) -> None:
    """Patch metrics of CHECKPOINT on every patch in SHARDS, a folder or its URL (the paper's Table 2,
    plus SEN).

    \b
    Examples:
      train evaluate runs/first/best.pt test-shards/
      train evaluate runs/first/best.pt test-shards/ --json > table2.json
      train evaluate runs/first/best.pt https://data.example.org/spine/test-shards
    """
    from patchstore.console import json_text
    from train.loop import evaluate_checkpoint
    log = (lambda s: click.echo(s, err=True)) if as_json else click.echo
    r = evaluate_checkpoint(checkpoint, shards, device, batch_size, verify, log=log, cache=cache)
    if as_json:
        click.echo(json_text(r, indent=2))
        return
    (tn, fp), (fn, tp) = r["confusion"]
    click.echo(f"{r['patches']:,} patches ({r['counts'][0]:,} background, {r['counts'][1]:,} vertebra), "
               f"loss {r['loss']:.4f}")
    click.echo("  ".join(f"{k} {100 * r[k]:.2f}%" for k in ("PRE", "SPE", "ACC", "F-score", "SEN")))
    click.echo(f"confusion (rows true, cols predicted):\n  background  TN {tn:>10,}  FP {fp:>10,}\n"
               f"  vertebra    FN {fn:>10,}  TP {tp:>10,}")


if __name__ == "__main__":
    sys.exit(main())
