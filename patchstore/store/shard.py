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

A shard is built in memory (HDF5's core driver), then its bytes are written under a temporary name
and renamed when complete, so a final name always holds a complete shard, and a full disk is a plain
OSError from Python's write, never an HDF5 library error half-way through a file (which could leave
a broken file behind, or crash). Nothing time- or machine-dependent is stored: the same inputs give
the same bytes.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import h5py
import numpy as np

from patchstore import __version__
from patchstore.config import FORMAT_VERSION
from patchstore.files import atomic_path

DATASETS = ("patches", "labels", "origin")
CHUNK_PATCHES = 512
REQUIRED_ATTRS = ("format_version", "build", "build_key", "case_id", "volume_key", "counts_before",
                  "counts_after", "part", "n_parts", "first_index")
# How each structured attribute is stored is part of the format, so a reader never guesses from
# the value (a case named "[a]" stays a string): JSON text for JSON_ATTRS; int64 arrays for
# INT_LIST_ATTRS (an empty list as the JSON text "[]": HDF5 attributes can't be empty arrays);
# every other attribute a plain string or number.
JSON_ATTRS = ("build", "geometry", "mined")
INT_LIST_ATTRS = ("counts_before", "counts_after", "label_values")
_IN_MEMORY = itertools.count()  # distinct names for HDF5's in-memory files


class ShardError(ValueError):
    """A shard or manifest that is missing, damaged or does not match: the message says which."""


def tool_version() -> str:
    return f"patchstore {__version__}"


def _attr_value(key: str, v):
    """The stored form of attribute ``key`` (see JSON_ATTRS and INT_LIST_ATTRS)."""
    if key in JSON_ATTRS:
        return json.dumps(v, sort_keys=True)
    if key in INT_LIST_ATTRS:
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, (int, np.integer)) for x in v):
            raise ValueError(f"shard attribute {key!r} is {v!r}; expected a list of integers")
        return np.asarray(v, dtype=np.int64) if v else "[]"
    if isinstance(v, (list, tuple, dict)):
        raise ValueError(f"shard attribute {key!r} is a {type(v).__name__}; expected a string or a number "
                         f"(structured attributes are declared in JSON_ATTRS or INT_LIST_ATTRS)")
    return v


def _attr_read(key: str, v):
    """The value of attribute ``key`` as written: dicts, int lists, strings, numbers."""
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, str) and (key in JSON_ATTRS or key in INT_LIST_ATTRS):
        return json.loads(v)
    return v


class ShardWriter:
    """Write one shard atomically::

        with ShardWriter(path, attrs) as w:
            w.write(patches, labels, origin)

    The file is assembled in memory; its bytes appear under ``path`` only when the block exits
    without error (temporary file, fsync, rename). On error, a full disk included, no file and no
    temporary file is left and earlier shards are untouched.
    """

    def __init__(self, path: str | os.PathLike, attrs: dict, compression: int = 4) -> None:
        self.path = Path(path)
        self.attrs = attrs
        self.compression = compression
        self._file: h5py.File | None = None

    def __enter__(self) -> "ShardWriter":
        # The core driver keeps the whole file in memory: its image is byte-identical to the file
        # HDF5 would write on disk, and HDF5 itself never meets a disk error.
        self._file = h5py.File(f"{self.path.name}.{os.getpid()}.{next(_IN_MEMORY)}", "w", driver="core",
                               backing_store=False, libver="earliest", track_order=False)
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
            f.attrs[key] = _attr_value(key, self.attrs[key])

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            image = None
            if exc_type is None:
                self._file.flush()  # else the image lacks metadata still in HDF5's cache
                image = self._file.id.get_file_image()
        finally:
            self._file.close()
        if image is not None:
            with atomic_path(self.path) as tmp, open(tmp, "wb") as fh:
                fh.write(image)


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
        try:
            return {k: _attr_read(k, v) for k, v in self._file.attrs.items()}
        except json.JSONDecodeError as e:
            raise ShardError(f"{self.path}: a JSON attribute is not valid JSON ({e})") from e
        except OSError as e:
            raise ShardError(f"{self.path}: attributes unreadable ({e}); the file is damaged") from e

    def read(self, name: str, out: np.ndarray | None = None, rows: slice = slice(None)) -> np.ndarray:
        """Dataset ``name`` (rows ``rows``) as an array, or into ``out``; a damaged chunk (HDF5 or
        fletcher32 checksum error) is a ShardError naming this file and the dataset."""
        try:
            if out is None:
                return self._file[name][rows]
            if len(out):
                self._file[name].read_direct(out, source_sel=rows)
            return out
        except (OSError, KeyError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ShardError(f"{self.path}: dataset {name!r} unreadable ({reason}); the file is damaged: "
                             f"rebuild it or restore it from a copy") from e

    def schema_problems(self, build: dict | None = None) -> list[str]:
        """Everything that makes this file not a valid shard (empty list: valid); with ``build``, also
        patches of another dtype or size than those parameters say."""
        f, problems = self._file, []
        for name in DATASETS:
            if not isinstance(f.get(name), h5py.Dataset):
                problems.append(f"{self.path}: dataset {name!r} is missing")
        missing = [a for a in REQUIRED_ATTRS if a not in f.attrs]
        if missing:
            problems.append(f"{self.path}: attributes {missing} are missing")
        if problems:
            return problems
        p = f["patches"]
        n = p.shape[0] if p.ndim else 0
        size = (build.get("patch"),) * 2 if build else (p.shape[1],) * 2 if p.ndim == 3 else ("n", "n")
        dtypes = (build.get("dtype"),) if build else ("uint8", "float16")
        expect = [("patches", (n, *size), dtypes), ("labels", (n,), ("uint8",)), ("origin", (n, 4), ("int32",))]
        for name, shape, dtypes in expect:
            d = f[name]
            if d.shape != shape or str(d.dtype) not in dtypes:
                problems.append(f"{self.path}: {name} has shape {d.shape} dtype {d.dtype}; expected shape "
                                f"{shape} dtype {' or '.join(dtypes)}")
        if f.attrs["format_version"] != FORMAT_VERSION:
            problems.append(f"{self.path}: format_version {f.attrs['format_version']}; expected {FORMAT_VERSION}")
        return problems
