"""`patchstore merge A B ... -o C`: join shard folders built with identical parameters.

Built with ``--part K/N`` on N machines, the parts merge into exactly what one machine would have
built: each volume's shard depends only on its inputs and the parameters.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from patchstore.config import describe_differences
from patchstore.files import atomic_path, file_sha256, write_json_atomic
from patchstore.store.manifest import MANIFEST, make_manifest, read_manifest


class MergeError(ValueError):
    """Shard folders that can't be merged; the message names the folders and fields."""


def merge(inputs: list[str | Path], out: str | Path) -> dict:
    """Copy every shard of ``inputs`` into ``out`` (hash-checked) and write one manifest."""
    inputs, out = [Path(p) for p in inputs], Path(out)
    manifests = [read_manifest(p) for p in inputs]
    first = manifests[0]
    for path, m in zip(inputs[1:], manifests[1:]):
        if m["build"] != first["build"]:
            details = describe_differences(m["build"], first["build"], "there", "in the first folder")
            raise MergeError(f"Can't merge {path} into {inputs[0]}: built with different parameters ({details})")
    if (out / MANIFEST).exists():
        raise MergeError(f"{out}: already holds a shard set; expected a new or empty folder")
    chosen: dict[str, tuple[Path, dict]] = {}
    for folder, m in zip(inputs, manifests):
        for e in m["shards"]:
            seen = chosen.get(e["file"])
            if seen and seen[1]["sha256"] != e["sha256"]:
                raise MergeError(f"{e['file']} is in {seen[0]} and {folder} with different contents "
                                 f"(two different volumes named {e['case_id']!r}?)")
            chosen[e["file"]] = (folder, e)
    out.mkdir(parents=True, exist_ok=True)
    for name, (folder, e) in sorted(chosen.items()):
        src = folder / name
        with atomic_path(out / name) as tmp:
            shutil.copyfile(src, tmp)
            if file_sha256(tmp) != e["sha256"]:
                raise MergeError(f"{src}: SHA-256 differs from {folder / MANIFEST}; run `patchstore verify {folder}`")
    manifest = make_manifest(first["build"], first["build_key"], [e for _, e in chosen.values()])
    write_json_atomic(out / MANIFEST, manifest)
    return manifest
