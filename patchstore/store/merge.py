"""`patchstore merge A B ... -o C`: join shard folders built with identical parameters.

Built with ``--part K/N`` on N machines, the parts merge into exactly what one machine would have
built: each volume's shard depends only on its inputs and the parameters. Part folders (their
manifests record ``"part": [K, N]``) merge only all together: parts 1..N of one N, each once, so
a merged folder never looks complete while a part is missing.

The output folder is locked while merging (``patchstore.lock``); a file already there is kept when
it holds exactly the shard to be copied (a merge run again after a failure) and refused otherwise:
merge never overwrites a file it did not write.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from patchstore.config import describe_differences
from patchstore.files import atomic_path, ensure_writable, file_sha256, write_json_atomic
from patchstore.lock import folder_lock
from patchstore.store.manifest import MANIFEST, make_manifest, manifest_problems, read_manifest


class MergeError(ValueError):
    """Shard folders that can't be merged; the message names the folders and fields."""


def check_parts(inputs: list[Path], manifests: list[dict]) -> None:
    """Part folders merge only as a whole: parts 1..N of one N, each given once, and no whole build
    mixed in."""
    parts = [m.get("part") for m in manifests]
    if not any(parts):
        return
    whole = [str(p) for p, k in zip(inputs, parts) if not k]
    if whole:
        raise MergeError(f"{', '.join(whole)} hold(s) a whole build and the other folders parts of one; "
                         f"expected only the parts 1..N of one --part K/N build")
    splits = sorted({n for _, n in parts})
    if len(splits) > 1:
        raise MergeError(f"the folders hold parts of builds split {' and '.join(map(str, splits))} ways "
                         f"({', '.join(f'{p}: {k}/{n}' for p, (k, n) in zip(inputs, parts))}); expected one N")
    n = splits[0]
    given = Counter(k for k, _ in parts)
    twice = sorted(k for k, c in given.items() if c > 1)
    if twice:
        raise MergeError(f"part {twice[0]}/{n} is given {given[twice[0]]} times "
                         f"({', '.join(str(p) for p, (k, _) in zip(inputs, parts) if k == twice[0])}); expected once")
    missing = sorted(set(range(1, n + 1)) - set(given))
    if missing:
        raise MergeError(f"parts {sorted(given)} of {n} given; part(s) {missing} are missing: build them with "
                         f"--part K/{n} and merge all {n} parts")


def merge(inputs: list[str | Path], out: str | Path) -> dict:
    """Copy every shard of ``inputs`` into ``out`` (hash-checked) and write one manifest."""
    inputs, out = [Path(p) for p in inputs], Path(out)
    manifests = [read_manifest(p) for p in inputs]
    for path, m in zip(inputs, manifests):
        problems = manifest_problems(m)
        if problems:
            raise MergeError(f"{path}: {problems[0]}; run `patchstore verify {path}`")
    first = manifests[0]
    for path, m in zip(inputs[1:], manifests[1:]):
        if m["build"] != first["build"]:
            details = describe_differences(m["build"], first["build"], "there", "in the first folder")
            raise MergeError(f"Can't merge {path} into {inputs[0]}: built with different parameters ({details})")
    check_parts(inputs, manifests)
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
    ensure_writable(out)
    with folder_lock(out, "merge"):
        for name, (folder, e) in sorted(chosen.items()):
            dst = out / name
            if dst.exists():
                if dst.is_file() and file_sha256(dst) == e["sha256"]:
                    continue  # copied by an earlier merge into this folder that stopped before the manifest
                raise MergeError(f"{dst}: exists and is not {folder / name}; merge never overwrites a file it "
                                 f"did not write: expected a new or empty folder")
            src = folder / name
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
                if file_sha256(tmp) != e["sha256"]:
                    raise MergeError(f"{src}: SHA-256 differs from {folder / MANIFEST}; run `patchstore verify "
                                     f"{folder}`")
        manifest = make_manifest(first["build"], first["build_key"], [e for _, e in chosen.values()])
        write_json_atomic(out / MANIFEST, manifest)
    return manifest
