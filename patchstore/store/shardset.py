"""A shard folder opened for reading: the manifest checked, then each shard read in bulk.

    ShardSet.open(folder | URL)  a URL is first fetched into the local cache, every file checked
                                 against the manifest's size and SHA-256 (patchstore.store.remote);
                                 then, for the local folder it gives or the folder given:
                                 manifest.json: format, every field, plain file names, no file
                                 listed twice; every listed shard present with its size
                                 (full_verify: `patchstore verify`, every byte rehashed);
                                 ``warnings``: .h5 files it does not list, a --part build
    shards.read(i, out=buf)      shard i, checked before any patch is used: schema, dtype and
                                 shape against the build parameters, identity attributes
                                 (case_id, volume_key, part, n_parts), counts and label values
                                 against its entry; then patches straight into the caller's
                                 (n, 32, 32) buffer (a CPU tensor's memory, no copy), labels,
                                 origin, volume key. A damaged chunk is an error naming the file.

A manifest that lists a file twice is refused, not deduplicated: the folder was edited by hand or
merged wrongly, and training on it as it is would weigh those patches twice. Extra .h5 files are
only warned about: the manifest is the table of contents, and a stray copy beside it is not
trained on.

Callers (``train.data``) see arrays and typed records, never a manifest key or an h5py object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patchstore.config import PREPROCESSING_FIELDS, describe_differences, differing_fields
from patchstore.files import file_sha256, is_url
from patchstore.store.manifest import MANIFEST, entry_problems, manifest_problems, read_manifest, unlisted_shards
from patchstore.store.remote import fetch
from patchstore.store.shard import ShardError, ShardReader
from patchstore.store.verify import verify


@dataclass(frozen=True)
class ShardPart:
    """One shard's arrays: patches (n, p, p) (the caller's buffer when one was given), labels (n,)
    uint8, origin (n, 4) int32, the key of the volume it was cut from, and the (sy, sx) mm of
    the pixels its patches were cut at."""

    patches: np.ndarray
    labels: np.ndarray
    origin: np.ndarray
    volume_key: str
    spacing_yx: tuple[float, float]


@dataclass(frozen=True)
class ShardSet:
    folder: Path
    manifest: dict
    manifest_sha256: str
    warnings: tuple[str, ...] = ()

    @classmethod
    def open(cls, source: str | os.PathLike, full_verify: bool = False, cache: str | os.PathLike | None = None,
             progress: bool = False) -> "ShardSet":
        """Check the folder's manifest and that every listed shard is present with its size.

        ``source``: a shard folder, or its URL, whose files are fetched into ``cache`` first (default
        ``patchstore.store.remote.default_cache()``; ``progress``: a download progress bar)."""
        warnings = []
        if is_url(source):
            fetched = fetch(source, cache, progress)
            folder = fetched.folder
            warnings.extend(fetched.warnings)
        else:
            folder = Path(source)
        manifest = read_manifest(folder)
        problems = manifest_problems(manifest)
        if problems:
            raise ShardError(f"{folder}: {problems[0]}" + (f" (and {len(problems) - 1} more problem(s))"
                                                            if len(problems) > 1 else ""))
        if full_verify:
            problems = verify(folder)
            if problems:
                raise ShardError(f"{folder}: `patchstore verify` found {len(problems)} problem(s):\n  "
                                 + "\n  ".join(problems))
        for entry in manifest["shards"]:
            path = folder / entry["file"]
            if not path.is_file():
                raise ShardError(f"{path}: missing (listed in {folder / MANIFEST})")
            size = path.stat().st_size
            if size != entry["bytes"]:
                raise ShardError(f"{path}: {size:,} bytes; the manifest says {entry['bytes']:,} "
                                 f"(truncated or altered: run `patchstore verify {folder}`)")
        if not manifest["shards"]:
            raise ShardError(f"{folder / MANIFEST}: lists no shards")
        extra = unlisted_shards(folder, manifest)
        if extra:
            warnings.append(f"{folder}: {len(extra)} .h5 file(s) not listed in {MANIFEST} are not used: "
                            f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
        if "part" in manifest:
            k, n = manifest["part"]
            warnings.append(f"{folder}: holds part {k} of {n} of a build (--part {k}/{n}), not the whole "
                            f"dataset; `patchstore merge` joins the parts")
        return cls(folder, manifest, file_sha256(folder / MANIFEST), tuple(warnings))

    @property
    def build(self) -> dict:
        """The build parameters every shard was made with."""
        return self.manifest["build"]

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(e["file"] for e in self.manifest["shards"])

    @property
    def sizes(self) -> tuple[int, ...]:
        """Patches per shard, in manifest order."""
        return tuple(int(e["patches"]) for e in self.manifest["shards"])

    def __len__(self) -> int:
        return sum(self.sizes)

    @property
    def patch_dtype(self) -> np.dtype:
        return np.dtype(self.build["dtype"])

    @property
    def patch_shape(self) -> tuple[int, int]:
        return (self.build["patch"], self.build["patch"])

    @property
    def patch_bytes(self) -> int:
        """Bytes of all patches in their stored dtype."""
        return len(self) * int(np.prod(self.patch_shape)) * self.patch_dtype.itemsize

    def check_preprocessing(self, expected: dict, what: str) -> list[str]:
        """Refuse shards preprocessed otherwise than ``expected`` (naming the fields); return the
        other fields that differ (fine: sampling, e.g. test shards built with --no-rus, or the
        source's --labels)."""
        fields = differing_fields(self.build, expected)
        bad = [k for k in fields if k in PREPROCESSING_FIELDS]
        if bad:
            raise ShardError(f"{self.folder / MANIFEST}: preprocessed with other parameters ("
                             + describe_differences(self.build, expected, "in the shards", f"in {what}", bad) + ")")
        return [k for k in fields if k not in PREPROCESSING_FIELDS]

    def read(self, i: int, out: np.ndarray | None = None) -> ShardPart:
        """Shard ``i`` (manifest order); patches go straight into ``out`` ((n, p, p), C-contiguous,
        the stored dtype) when given."""
        entry = self.manifest["shards"][i]
        path = self.folder / entry["file"]
        n = int(entry["patches"])
        if out is not None and (out.shape != (n, *self.patch_shape) or out.dtype != self.patch_dtype
                                or not out.flags.c_contiguous):
            raise ValueError(f"buffer for {path} is {out.dtype} {out.shape}; expected a C-contiguous "
                             f"{self.patch_dtype} {(n, *self.patch_shape)}")
        with ShardReader(path) as r:
            problems = r.schema_problems(self.build)
            if not problems:
                attrs = r.attrs
                labels, origin = r.read("labels"), r.read("origin")
                problems = entry_problems(path, attrs, labels, entry, self.build)
            if problems:
                raise ShardError(problems[0] + (f" (and {len(problems) - 1} more problem(s): run `patchstore "
                                                f"verify {self.folder}`)" if len(problems) > 1 else ""))
            patches = r.read("patches", out)
        return ShardPart(patches, labels, origin, attrs["volume_key"], _working_spacing(attrs))


def _working_spacing(attrs: dict) -> tuple[float, float]:
    """(sy, sx) mm of the grid the patches were cut at (older shards: the canonical volume's)."""
    geometry = attrs.get("geometry") or {}
    if "working" in geometry:
        return tuple(float(v) for v in geometry["working"]["spacing_yx"])
    sx, sy = geometry.get("canonical", {}).get("spacing", (float("nan"),) * 2)[:2]
    return (float(sy), float(sx))
