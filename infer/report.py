"""The evaluation of a folder of cases, as nnU-Net's summary gives it: per case, mean, standard deviation.

    <out>/metrics.csv     case,DSC,JAC,...,ASSD,label_rule_DSC,undefined   one row per case, then
                          rows "mean" and "std" (over the cases where the metric is defined)
                          and "n" (how many those are); an undefined value is "n/a"
    <out>/summary.json    {"metric_per_case": [the cases' report entries], "mean": {...},
                          "std": {...}, "n": {...}}; undefined values are null

The standard deviation is the sample one (ddof 1), undefined (n/a, null) for fewer than two cases.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from patchstore.console import json_text
from patchstore.files import write_text_atomic

METRICS = ("DSC", "JAC", "SEN", "PRE", "SPE", "ACC", "F1_PRE_SEN_eq5", "BF", "HD95", "ASSD")
COLUMNS = METRICS + ("label_rule_DSC",)
CSV_NAME, JSON_NAME = "metrics.csv", "summary.json"


def _values(entry: dict) -> dict[str, float | None]:
    return {**entry["metrics"], "label_rule_DSC": entry.get("label_rule_DSC")}


def summarize(entries: list[dict]) -> dict[str, dict]:
    """Mean, sample standard deviation and count of each column over the entries where it is defined."""
    mean, std, n = {}, {}, {}
    for key in COLUMNS:
        values = [v for e in entries if (v := _values(e).get(key)) is not None]
        n[key] = len(values)
        mean[key] = math.fsum(values) / len(values) if values else None
        std[key] = (math.sqrt(math.fsum((v - mean[key]) ** 2 for v in values) / (len(values) - 1))
                    if len(values) > 1 else None)
    return {"mean": mean, "std": std, "n": n}


def _cell(value) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def metrics_csv(entries: list[dict], summary: dict) -> str:
    """The text of metrics.csv (see the module docstring)."""
    text = io.StringIO()
    out = csv.writer(text, lineterminator="\n")
    out.writerow(("case",) + COLUMNS + ("undefined",))
    for e in entries:
        why = "; ".join(f"{k}: {reason}" for k, reason in e.get("undefined", {}).items())
        out.writerow([e["case"]] + [_cell(_values(e).get(k)) for k in COLUMNS] + [why])
    for row in ("mean", "std"):
        out.writerow([row] + [_cell(summary[row][k]) for k in COLUMNS] + [""])
    out.writerow(["n"] + [summary["n"][k] for k in COLUMNS] + [""])
    return text.getvalue()


def write_reports(folder: Path, entries: list[dict]) -> tuple[Path, Path, dict]:
    """Write metrics.csv and summary.json of the entries that have metrics into ``folder``;
    return both paths and the summary."""
    scored = [e for e in entries if "metrics" in e]
    summary = summarize(scored)
    csv_path = write_text_atomic(Path(folder) / CSV_NAME, metrics_csv(scored, summary))
    json_path = write_text_atomic(Path(folder) / JSON_NAME,
                                  json_text({"metric_per_case": scored, **summary}, indent=2) + "\n")
    return csv_path, json_path, summary


def format_summary(summary: dict, n_cases: int) -> str:
    """Plain-text lines: each metric's mean +- standard deviation over the cases where it is defined."""
    lines = [f"mean +- sd over {n_cases} case(s)"]
    for key in COLUMNS:
        mean, sd, n = summary["mean"][key], summary["std"][key], summary["n"][key]
        distance = key in ("HD95", "ASSD")
        fmt = (lambda v: f"{v:.2f} mm") if distance else (lambda v: f"{100 * v:.2f} %")
        cell = "n/a (undefined in every case)" if mean is None else fmt(mean) + (
            f" +- {fmt(sd)}" if sd is not None else " (one case: no sd)")
        note = f"   ({n} of {n_cases} cases)" if mean is not None and n < n_cases else ""
        lines.append(f"  {key:<15} {cell}{note}")
    return "\n".join(lines)
