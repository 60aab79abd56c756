"""infer.report: per-case metrics, mean and standard deviation (metrics.csv, summary.json)."""

from __future__ import annotations

import csv
import json

import pytest

from infer.report import metrics_csv, summarize, write_reports


def _entry(case: str, dsc, hd95) -> dict:
    metrics = {"DSC": dsc, "HD95": hd95}
    undefined = {} if hd95 is not None else {"HD95": "the prediction is empty: no surface to measure from"}
    return {"case": case, "metrics": metrics, "undefined": undefined, "label_rule_DSC": 0.5}


def test_mean_and_sd_skip_undefined_values():
    """Means and sample SDs are over the cases where a metric is defined; n counts those."""
    s = summarize([_entry("a", 0.6, 2.0), _entry("b", 0.8, None), _entry("c", 1.0, 4.0)])
    assert s["mean"]["DSC"] == pytest.approx(0.8) and s["std"]["DSC"] == pytest.approx(0.2)
    assert (s["mean"]["HD95"], s["n"]["HD95"]) == (pytest.approx(3.0), 2)
    assert s["mean"]["ASSD"] is None and s["std"]["ASSD"] is None


def test_csv_has_a_row_per_case_then_mean_sd_and_n(tmp_path):
    """metrics.csv: header, cases (n/a and the reason where undefined), then mean, std, n rows."""
    entries = [_entry("a", 0.6, 2.0), _entry("b", 0.8, None)]
    rows = list(csv.DictReader(metrics_csv(entries, summarize(entries)).splitlines()))
    assert [r["case"] for r in rows] == ["a", "b", "mean", "std", "n"]
    assert rows[1]["HD95"] == "n/a" and rows[1]["undefined"].startswith("HD95: the prediction is empty")
    assert float(rows[2]["DSC"]) == pytest.approx(0.7) and rows[4]["HD95"] == "1"


def test_summary_json_is_strict_json(tmp_path):
    """summary.json holds null, never NaN or Infinity, for undefined values."""
    write_reports(tmp_path, [_entry("a", 0.6, None), {"case": "b", "skipped": True}])

    def refuse(constant):
        raise ValueError(constant)
    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse)
    assert [e["case"] for e in summary["metric_per_case"]] == ["a"]
    assert summary["mean"]["HD95"] is None and summary["std"]["DSC"] is None
    assert (tmp_path / "metrics.csv").exists()
