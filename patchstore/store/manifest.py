"""``manifest.json``: the shard folder's table of contents, written last.

    {"format_version": 1, "tool_version": "patchstore 0.1.0",
     "build": {...every build parameter...}, "build_key": "<16 hex>",
     "shards": [{"file", "sha256", "bytes", "patches", "counts": [background, vertebra],
                 "case_id", "volume_key", "part", "n_parts"}, ...],       sorted by file
     "totals": {"shards", "patches", "counts"},
     "part": [K, N]}                                                       only for --part K/N builds

Only this module knows these keys; readers get them through ``read_manifest`` (checked) and
``ShardSet``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from patchstore.config import FORMAT_VERSION
from patchstore.files import file_sha256
from patchstore.store.shard import ShardError, ShardReader, tool_version

MANIFEST = "manifest.json"


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{folder}: no {MANIFEST}; expected a shard folder written by `patchstore build` "
                         f"(an interrupted build writes it only at the end: run the build again to resume)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ShardError(f"{path}: not valid JSON ({e})") from e
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardError(f"{path}: format_version {manifest.get('format_version')!r}; expected {FORMAT_VERSION}")
    for key in ("build", "shards"):
        if key not in manifest:
            raise ShardError(f"{path}: field {key!r} is missing")
    return manifest


def shard_entry(path: Path, attrs: dict | None = None) -> dict:
    """The manifest entry of one shard file: name, SHA-256, bytes, patches per class."""
    with ShardReader(path) as r:
        attrs = attrs or r.attrs
        labels = r.labels[:]
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
