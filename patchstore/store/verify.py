"""`patchstore verify`: rehash and open every shard, check it against the manifest.

Problems reported, one line each: missing, extra, renamed, truncated, altered (hash), unreadable
(HDF5 or fletcher32 checksum error), schema, counts that disagree with the manifest, and shards
built with parameters other than the manifest's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from patchstore.files import file_sha256, is_temp
from patchstore.store.manifest import read_manifest
from patchstore.store.shard import ShardError, ShardReader


def _check_contents(path: Path, entry: dict, build: dict) -> list[str]:
    """Open the shard, read every chunk (fletcher32 checks each), compare with its manifest entry."""
    try:
        with ShardReader(path) as r:
            problems = r.schema_problems()
            if problems:
                return problems
            labels = r.labels[:]
            for start in range(0, len(labels), 1 << 14):
                r.patches[start:start + (1 << 14)]
            r.origin[:]
            attrs = r.attrs
    except (ShardError, OSError) as e:
        return [f"{path.name}: unreadable ({e})"]
    problems = []
    counts = [int(c) for c in np.bincount(labels, minlength=2)[:2]]
    if len(labels) != entry["patches"] or counts != entry["counts"]:
        problems.append(f"{path.name}: holds {len(labels)} patches with class counts {counts}; "
                        f"the manifest says {entry['patches']} with {entry['counts']}")
    if attrs.get("build") != build:
        problems.append(f"{path.name}: built with parameters other than the manifest's")
    return problems


def verify(folder: str | Path) -> list[str]:
    """Problems found in the shard folder (empty list: every shard is intact and listed)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    listed = {e["file"]: e for e in manifest["shards"]}
    present = {p.name for p in folder.glob("*.h5")}
    extra = sorted(present - set(listed))
    extra_hashes = {file_sha256(folder / name): name for name in extra}
    problems: list[str] = []
    for name, entry in listed.items():
        path = folder / name
        if not path.exists():
            if entry["sha256"] in extra_hashes:
                new = extra_hashes.pop(entry["sha256"])
                problems.append(f"{name}: renamed to {new} (same content); expected the name {name}")
            else:
                problems.append(f"{name}: missing (listed in the manifest)")
            continue
        size = path.stat().st_size
        if size != entry["bytes"]:
            kind = "truncated" if size < entry["bytes"] else "altered"
            problems.append(f"{name}: {kind}: {size:,} bytes; the manifest says {entry['bytes']:,}")
            continue
        if file_sha256(path) != entry["sha256"]:
            problems.append(f"{name}: altered: SHA-256 differs from the manifest's")
        problems.extend(_check_contents(path, entry, manifest["build"]))
    for name in sorted(extra_hashes.values()):
        problems.append(f"{name}: extra shard, not listed in the manifest")
    totals = manifest.get("totals", {})
    n = sum(e["patches"] for e in manifest["shards"])
    if totals and totals.get("patches") != n:
        problems.append(f"{folder / 'manifest.json'}: totals say {totals.get('patches')} patches; "
                        f"its shards sum to {n}")
    return problems


def leftover_temps(folder: str | Path) -> list[Path]:
    """Temporary files of an interrupted build (never listed; the next build removes them)."""
    return sorted(p for p in Path(folder).iterdir() if is_temp(p))
