"""``manifest.json``: the shard folder's table of contents, written last.

    {"format_version": 1, "tool_version": "patchstore 0.1.0",
     "build": {...every build parameter...}, "build_key": "<16 hex>",
     "shards": [{"file", "sha256", "bytes", "patches", "counts": [background, vertebra],
                 "case_id", "volume_key", "part", "n_parts"}, ...],       sorted by file
     "totals": {"shards", "patches", "counts"},
     "part": [K, N]}                                                       only for --part K/N builds

Only this module knows these keys; readers get them through ``read_manifest`` (checked) and
``ShardSet``. ``read_manifest`` (``parse_manifest`` for one fetched from a URL) checks every
field's type and that every ``file`` is a plain name inside the folder
(``patchstore.files.confined``); ``manifest_problems`` what a well-formed manifest can still get
wrong (a file listed twice, totals); ``entry_problems`` whether a shard is
what its entry says (identity attributes, counts, label values, build parameters).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from patchstore.config import FORMAT_VERSION, describe_differences
from patchstore.files import confined, file_sha256
from patchstore.store.shard import ShardError, ShardReader, tool_version

MANIFEST = "manifest.json"
SHARD_SUFFIX = ".h5"
# Each entry field: a test of its value and the words for what is expected.
_COUNT = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0")
ENTRY_FIELDS = {
    "file": (lambda v: isinstance(v, str) and v.endswith(SHARD_SUFFIX), f"a file name ending in {SHARD_SUFFIX}"),
    "sha256": (lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None, "64 hex digits"),
    "bytes": _COUNT, "patches": _COUNT, "part": _COUNT,
    "counts": (lambda v: isinstance(v, list) and len(v) == 2 and all(_COUNT[0](c) for c in v),
               "[background, vertebra] integers >= 0"),
    "case_id": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "volume_key": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "n_parts": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
}
IDENTITY_ATTRS = ("case_id", "volume_key", "part", "n_parts")  # shard attribute = manifest entry field


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of a shard folder, every field checked (ShardError naming the field, the value
    found and the value expected); every ``file`` a plain name inside ``folder``."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{folder}: no {MANIFEST}; expected a shard folder written by `patchstore build` "
                         f"(an interrupted build writes it only at the end: run the build again to resume)")
    return parse_manifest(path.read_bytes(), str(path), folder)


def parse_manifest(data: bytes, where: str, folder: str | os.PathLike) -> dict:
    """The manifest in ``data``, read from ``where`` (a file or a URL, for the messages), every field
    checked; every ``file`` a plain name inside ``folder``, the folder its shards are read from."""
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise ShardError(f"{where}: holds a JSON {type(manifest).__name__}; expected an object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardError(f"{where}: format_version {manifest.get('format_version')!r}; expected {FORMAT_VERSION}")
    for key, kind in (("build", dict), ("build_key", str), ("shards", list)):
        if key not in manifest:
            raise ShardError(f"{where}: field {key!r} is missing")
        if not isinstance(manifest[key], kind):
            raise ShardError(f"{where}: field {key!r} is a {type(manifest[key]).__name__}; expected a "
                             f"JSON {({dict: 'object', list: 'array', str: 'string'})[kind]}")
    for i, entry in enumerate(manifest["shards"]):
        check_entry(where, folder, i, entry)
    part = manifest.get("part")
    if part is not None and not (isinstance(part, list) and len(part) == 2 and all(isinstance(v, int) for v in part)
                                 and 1 <= part[0] <= part[1]):
        raise ShardError(f"{where}: field 'part' is {part!r}; expected [K, N] with 1 <= K <= N")
    return manifest


def check_entry(where: str, folder: str | os.PathLike, i: int, entry) -> None:
    """Refuse a malformed shard entry of the manifest at ``where``, naming the field, the value found
    and the one expected; its ``file`` must be a plain name inside ``folder``."""
    if not isinstance(entry, dict):
        raise ShardError(f"{where}: shards[{i}] is a {type(entry).__name__}; expected an object")
    for key, (ok, expected) in ENTRY_FIELDS.items():
        if key not in entry:
            raise ShardError(f"{where}: shards[{i}] has no field {key!r}; expected {expected}")
        if not ok(entry[key]):
            raise ShardError(f"{where}: shards[{i}].{key} is {entry[key]!r}; expected {expected}")
    confined(folder, entry["file"], f"{where}: shards[{i}].file")
    if sum(entry["counts"]) != entry["patches"]:
        raise ShardError(f"{where}: shards[{i}] ({entry['file']}) counts {entry['counts']} sum to "
                         f"{sum(entry['counts'])}; its patches field says {entry['patches']}")


def manifest_problems(manifest: dict) -> list[str]:
    """What a well-formed manifest can still get wrong: a file listed twice, one volume part
    listed under two names, parts of a split volume missing, totals that disagree."""
    problems = []
    files = Counter(e["file"] for e in manifest["shards"])
    problems += [f"{MANIFEST}: lists {name} {n} times; expected once" for name, n in sorted(files.items()) if n > 1]
    parts = Counter((e["volume_key"], e["part"]) for e in manifest["shards"])
    for (key, part), n in sorted(parts.items()):
        if n > 1:
            same = [e for e in manifest["shards"] if (e["volume_key"], e["part"]) == (key, part)]
            names = sorted({e["file"] for e in same})
            if len(names) > 1:
                problems.append(f"{MANIFEST}: part {part} of volume {same[0]['case_id']} (key {key[:12]}) is "
                                f"listed {n} times ({', '.join(names)}); expected once")
    by_volume: dict[str, set[int]] = {}
    for e in manifest["shards"]:
        by_volume.setdefault(e["volume_key"], set()).add(e["part"])
    for e in manifest["shards"]:
        missing = sorted(set(range(e["n_parts"])) - by_volume.get(e["volume_key"], set()))
        if missing and e["part"] == min(by_volume[e["volume_key"]]):
            problems.append(f"{MANIFEST}: volume {e['case_id']} is split into {e['n_parts']} files; parts "
                            f"{missing} are not listed")
    totals = manifest.get("totals")
    n = sum(e["patches"] for e in manifest["shards"])
    if isinstance(totals, dict) and totals.get("patches") != n:
        problems.append(f"{MANIFEST}: totals say {totals.get('patches')} patches; its shards sum to {n}")
    return problems


def entry_problems(path: Path, attrs: dict, labels: np.ndarray, entry: dict, build: dict) -> list[str]:
    """Is the shard at ``path`` (its attributes and labels) what its manifest entry says?"""
    problems = []
    for key in IDENTITY_ATTRS:
        if attrs.get(key) != entry[key]:
            problems.append(f"{path}: attribute {key} is {attrs.get(key)!r}; the manifest says {entry[key]!r}")
    if attrs.get("build") != build:
        found = attrs["build"] if isinstance(attrs.get("build"), dict) else {}
        problems.append(f"{path}: built with parameters other than the manifest's ("
                        + describe_differences(found, build, "in the shard", "in the manifest") + ")")
    if labels.size and labels.max() > 1:
        values = sorted(int(v) for v in np.unique(labels) if v > 1)
        problems.append(f"{path}: labels hold values {values[:5]}; expected 0 (background) and 1 (vertebra) only")
    counts = [int(c) for c in np.bincount(labels, minlength=2)[:2]]
    if len(labels) != entry["patches"] or counts != entry["counts"]:
        problems.append(f"{path}: holds {len(labels)} patches with class counts {counts}; "
                        f"the manifest says {entry['patches']} with {entry['counts']}")
    return problems


def unlisted_shards(folder: Path, manifest: dict) -> list[str]:
    """Names of .h5 files in ``folder`` that the manifest does not list."""
    listed = {e["file"] for e in manifest["shards"]}
    return sorted(p.name for p in folder.glob(f"*{SHARD_SUFFIX}") if p.name not in listed)


def shard_entry(path: Path, attrs: dict | None = None) -> dict:
    """The manifest entry of one shard file: name, SHA-256, bytes, patches per class."""
    with ShardReader(path) as r:
        attrs = attrs or r.attrs
        labels = r.read("labels")
    counts = np.bincount(labels, minlength=2)[:2]
    return {"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size,
            "patches": int(len(labels)), "counts": [int(c) for c in counts],
            "case_id": attrs["case_id"], "volume_key": attrs["volume_key"],
            "part": int(attrs["part"]), "n_parts": int(attrs["n_parts"])}


def make_manifest(build: dict, build_key: str, entries: list[dict], part: tuple[int, int] | None = None) -> dict:
    entries = sorted(entries, key=lambda e: e["file"])
    counts = [sum(e["counts"][c] for e in entries) for c in (0, 1)]
    manifest = {"format_version": FORMAT_VERSION, "tool_version": tool_version(), "build": build,
                "build_key": build_key, "shards": entries,
                "totals": {"shards": len(entries), "patches": sum(e["patches"] for e in entries),
                           "counts": counts}}
    if part is not None:
        manifest["part"] = list(part)
    return manifest
