"""Shard files (HDF5) and the shard folder's manifest: the format anyone can read with plain h5py.

    shards/
      manifest.json            written last, atomically: format, build parameters, one entry per shard
      <case>.h5                one per input volume (<case>-p000.h5, -p001.h5 ... when split)
        patches (N, n, n)      uint8 = round(intensity * 255) (or float16), chunked along N,
                               gzip + shuffle + fletcher32
        labels  (N,)           uint8, 1 = vertebra (more than n*n/2 vertebra pixels)
        origin  (N, 4)         int32: source slice z, top-left row, top-left col (canonical LPS
                               grid, in the augmented view), view index (0 = original slice)
        attrs                  format_version, tool_version, build (JSON), build_key, case_id,
                               source_image/source_mask (relative to the dataset), their SHA-256,
                               volume_key, geometry (JSON), counts_before/counts_after [n0, n1],
                               part, n_parts, first_index

Files are written under a temporary name and renamed when complete, so a final name always holds a
complete shard. Nothing time- or machine-dependent is stored: the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np

from patchstore import __version__
from patchstore.config import FORMAT_VERSION

MANIFEST = "manifest.json"
DATASETS = ("patches", "labels", "origin")
CHUNK_PATCHES = 512
REQUIRED_ATTRS = ("format_version", "build", "build_key", "case_id", "volume_key", "counts_before",
                  "counts_after", "part", "n_parts", "first_index")


class ShardError(ValueError):
    """A shard or manifest that is missing, damaged or does not match: the message says which."""


def tool_version() -> str:
    return f"patchstore {__version__}"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def temp_path(final: Path) -> Path:
    """A unique temporary name beside ``final`` (same folder, so rename is atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would make shared shard folders unreadable to others
    os.close(fd)
    return Path(tmp)


def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _attr_value(v):
    """Integer lists as HDF5 arrays, other containers as JSON text, scalars and strings as they are."""
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, np.integer)) for x in v):
        return np.asarray(v, dtype=np.int64)
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True)
    return v


class ShardWriter:
    """Write one shard atomically::

        with ShardWriter(path, attrs) as w:
            w.write(patches, labels, origin)

    The file appears under ``path`` only when the block exits without error; on error the
    temporary file is removed and earlier shards are untouched.
    """

    def __init__(self, path: str | os.PathLike, attrs: dict, compression: int = 4) -> None:
        self.path = Path(path)
        self.attrs = attrs
        self.compression = compression
        self._tmp: Path | None = None
        self._file: h5py.File | None = None

    def __enter__(self) -> "ShardWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_path(self.path)
        self._file = h5py.File(self._tmp, "w", libver="earliest", track_order=False)
        return self

    def write(self, patches: np.ndarray, labels: np.ndarray, origin: np.ndarray) -> None:
        """patches (N, n, n) uint8|float16, labels (N,) uint8, origin (N, 4) int32."""
        n = len(patches)
        if patches.ndim != 3 or patches.shape[1] != patches.shape[2] or labels.shape != (n,) \
                or origin.shape != (n, 4):
            raise ValueError(f"shard arrays have shapes patches {patches.shape}, labels {labels.shape}, "
                             f"origin {origin.shape}; expected (N, n, n), (N,), (N, 4)")
        f = self._file
        opts = dict(compression="gzip", compression_opts=self.compression, shuffle=True,
                    fletcher32=True, track_times=False)
        # maxshape None along N lets an empty shard (a volume without vertebra) keep a valid chunk shape
        for name, data, rows in (("patches", patches, CHUNK_PATCHES), ("labels", labels.astype(np.uint8), 1 << 16),
                                 ("origin", origin.astype(np.int32), 1 << 14)):
            f.create_dataset(name, data=data, chunks=(max(1, min(n, rows)),) + data.shape[1:],
                             maxshape=(None,) + data.shape[1:], **opts)
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["tool_version"] = tool_version()
        for key in sorted(self.attrs):
            f.attrs[key] = _attr_value(self.attrs[key])

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._file.close()
            if exc_type is None:
                with open(self._tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(self._tmp, self.path)
        finally:
            if self._tmp is not None and self._tmp.exists():
                self._tmp.unlink()


class ShardReader:
    """Read one shard: ``patches``/``labels``/``origin`` are h5py datasets, ``attrs`` a plain dict."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None

    def __enter__(self) -> "ShardReader":
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as e:
            raise ShardError(f"{self.path}: not a readable HDF5 file ({e})") from e
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    @property
    def patches(self) -> h5py.Dataset:
        return self._file["patches"]

    @property
    def labels(self) -> h5py.Dataset:
        return self._file["labels"]

    @property
    def origin(self) -> h5py.Dataset:
        return self._file["origin"]

    @property
    def attrs(self) -> dict:
        out = {}
        for k, v in self._file.attrs.items():
            if isinstance(v, bytes):
                v = v.decode()
            if isinstance(v, str) and v[:1] in "{[":
                v = json.loads(v)
            elif isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, np.generic):
                v = v.item()
            out[k] = v
        return out

    def schema_problems(self) -> list[str]:
        """Everything that makes this file not a valid shard (empty list: valid)."""
        f, problems = self._file, []
        for name in DATASETS:
            if name not in f:
                problems.append(f"{self.path}: dataset {name!r} is missing")
        missing = [a for a in REQUIRED_ATTRS if a not in f.attrs]
        if missing:
            problems.append(f"{self.path}: attributes {missing} are missing")
        if problems:
            return problems
        p, lab, org = f["patches"], f["labels"], f["origin"]
        n = p.shape[0]
        expect = [("patches", p, 3, ("uint8", "float16")), ("labels", lab, 1, ("uint8",)),
                  ("origin", org, 2, ("int32",))]
        for name, d, ndim, dtypes in expect:
            if d.ndim != ndim or d.shape[0] != n or str(d.dtype) not in dtypes:
                problems.append(f"{self.path}: {name} has shape {d.shape} dtype {d.dtype}; expected "
                                f"{ndim}-D with {n} rows and dtype in {dtypes}")
        if p.ndim == 3 and p.shape[1:] != (p.shape[1], p.shape[1]):
            problems.append(f"{self.path}: patches are {p.shape[1:]}; expected square patches")
        if f.attrs["format_version"] != FORMAT_VERSION:
            problems.append(f"{self.path}: format_version {f.attrs['format_version']}; expected {FORMAT_VERSION}")
        return problems


# ---------------------------------------------------------------- manifest


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


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = temp_path(path)
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
