"""A shard folder opened for reading: the manifest checked, then each shard read in bulk.

    ShardSet.open(folder)        manifest.json: format, fields; every listed shard present with
                                 its size (full_verify: `patchstore verify`, every byte rehashed)
    shards.read(i, out=buf)      shard i: patches straight into the caller's (n, 32, 32) buffer
                                 (a CPU tensor's memory, no copy), labels, origin, volume key;
                                 its build parameters must equal the manifest's

Callers (``train.data``) see arrays and typed records, never a manifest key or an h5py object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patchstore.config import PREPROCESSING_FIELDS, describe_differences, differing_fields
from patchstore.files import file_sha256
from patchstore.store.manifest import MANIFEST, read_manifest
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

    @classmethod
    def open(cls, folder: str | os.PathLike, full_verify: bool = False) -> "ShardSet":
        """Check the folder's manifest and that every listed shard is present with its size."""
        folder = Path(folder)
        manifest = read_manifest(folder)
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
        return cls(folder, manifest, file_sha256(folder / MANIFEST))

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
        sampling fields that differ (fine: e.g. test shards built with --no-rus)."""
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
        with ShardReader(path) as r:
            attrs = r.attrs
            if attrs.get("build") != self.build:
                raise ShardError(f"{path}: built with parameters other than the manifest's: "
                                 + describe_differences(attrs.get("build") or {}, self.build, "in the shard",
                                                        "in the manifest"))
            if len(r.labels) != n:
                raise ShardError(f"{path}: holds {len(r.labels)} patches; the manifest says {n}")
            if out is None:
                patches = r.patches[:]
            else:
                if out.shape != (n, *self.patch_shape) or out.dtype != self.patch_dtype or not out.flags.c_contiguous:
                    raise ValueError(f"buffer for {path} is {out.dtype} {out.shape}; expected a C-contiguous "
                                     f"{self.patch_dtype} {(n, *self.patch_shape)}")
                if n:
                    r.patches.read_direct(out)
                patches = out
            return ShardPart(patches, r.labels[:], r.origin[:], attrs["volume_key"], _working_spacing(attrs))


def _working_spacing(attrs: dict) -> tuple[float, float]:
    """(sy, sx) mm of the grid the patches were cut at (older shards: the canonical volume's)."""
    geometry = attrs.get("geometry") or {}
    if "working" in geometry:
        return tuple(float(v) for v in geometry["working"]["spacing_yx"])
    sx, sy = geometry.get("canonical", {}).get("spacing", (float("nan"),) * 2)[:2]
    return (float(sy), float(sx))
