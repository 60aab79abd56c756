"""The files of a build's output folder: which are a case's shards, which the build may replace.

    out/
      <case>.h5, <case>-p000.h5 ...   a case's shards: names from the case name (confined to out),
                                      replaced or removed only when they are shards of that case
      .<name>.h5.<random>.tmp         temporary shard files: removed at start-up (under the lock)
      .manifest.json.<random>.tmp     a temporary manifest: the same
      anything else                   never touched

A file of a shard's name that is not that case's shard (someone's notes, another case's part) is
refused with FileExistsError, so the build never deletes or overwrites a file it did not write.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

from patchstore.files import confined, temp_target
from patchstore.store.manifest import MANIFEST, SHARD_SUFFIX
from patchstore.store.shard import ShardError, ShardReader


def shard_names(case_id: str, n_parts: int) -> list[str]:
    if n_parts == 1:
        return [f"{case_id}{SHARD_SUFFIX}"]
    return [f"{case_id}-p{k:03d}{SHARD_SUFFIX}" for k in range(n_parts)]


def shard_paths(out: Path, case_id: str, n_parts: int) -> list[Path]:
    """The shard files of a case, each confined to ``out`` (a case name is taken from an input)."""
    return [confined(out, name, f"shard name of case {case_id!r}") for name in shard_names(case_id, n_parts)]


def existing_shards(out: Path, case_id: str) -> list[Path]:
    """Files in ``out`` named as ``case_id``'s shards: <case>.h5 or <case>-pNNN.h5, sorted."""
    pattern = re.compile(re.escape(case_id) + r"(-p[0-9]{3})?" + re.escape(SHARD_SUFFIX))
    return sorted(p for p in out.iterdir() if pattern.fullmatch(p.name))


def is_own_shard(path: Path, case_id: str) -> bool:
    """Did a patchstore build write ``path`` as a shard of ``case_id``? (Only those are replaced.)"""
    try:
        with ShardReader(path) as r:
            a = r.attrs
            return a.get("case_id") == case_id and "build" in a and "volume_key" in a
    except (ShardError, OSError):
        return False


def clear_old_shards(out: Path, case_id: str, new: list[Path]) -> None:
    """Remove an earlier build's shards of ``case_id`` (inputs changed: maybe another split) before
    writing ``new``; refuse to touch a file of that name that is not such a shard."""
    for p in sorted(set(existing_shards(out, case_id)) | {p for p in new if p.exists() or p.is_symlink()}):
        if not is_own_shard(p, case_id):
            raise FileExistsError(errno.EEXIST, f"exists and is not a shard of case {case_id!r} written by "
                                  f"patchstore; refusing to replace a file the build did not write: move it or "
                                  f"choose another output folder", str(p))
    for p in existing_shards(out, case_id):
        p.unlink()


def remove_temp_files(out: Path) -> None:
    """Temporary shard and manifest files of killed builds (call with ``out`` locked: then none
    belongs to a live build); other hidden files stay."""
    for p in out.iterdir():
        target = temp_target(p)
        if target and (target.endswith(SHARD_SUFFIX) or target == MANIFEST) and p.is_file():
            p.unlink()
