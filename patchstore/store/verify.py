"""`patchstore verify`: rehash and open every shard, check it against the manifest.

Problems reported, one line each: missing, extra, renamed, truncated, altered (hash), unreadable
(HDF5 or fletcher32 checksum error), schema (dtype and shape against the build parameters),
identity attributes (case_id, volume_key, part, n_parts), counts and label values that disagree
with the manifest, shards built with parameters other than the manifest's, a file listed twice,
missing parts of a split volume, totals. A manifest whose entries are malformed or name a path
outside the folder is refused before any file is opened.
"""

from __future__ import annotations

from pathlib import Path

from patchstore.files import file_sha256, is_temp
from patchstore.store.manifest import entry_problems, manifest_problems, read_manifest
from patchstore.store.shard import ShardError, ShardReader


def _check_contents(path: Path, entry: dict, build: dict) -> list[str]:
    """Open the shard, read every chunk (fletcher32 checks each), compare with its manifest entry."""
    name = Path(path.name)
    try:
        with ShardReader(path) as r:
            problems = r.schema_problems(build)
            if problems:
                return [p.replace(str(path), path.name, 1) for p in problems]
            labels = r.read("labels")
            for start in range(0, len(labels), 1 << 14):
                r.read("patches", rows=slice(start, start + (1 << 14)))
            r.read("origin")
            return entry_problems(name, r.attrs, labels, entry, build)
    except ShardError as e:  # not HDF5, or a damaged chunk (fletcher32): the error names the dataset
        return [str(e).replace(str(path), path.name, 1)]


def verify(folder: str | Path) -> list[str]:
    """Problems found in the shard folder (empty list: every shard is intact and listed)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    listed = {e["file"]: e for e in manifest["shards"]}  # a file listed twice: manifest_problems
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
    problems.extend(manifest_problems(manifest))
    return problems


def leftover_temps(folder: str | Path) -> list[Path]:
    """Temporary files of an interrupted build (never listed; the next build removes them)."""
    return sorted(p for p in Path(folder).iterdir() if is_temp(p))
