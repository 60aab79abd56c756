"""What ITK reads silently wrong, checked from a file's own bytes (no SimpleITK here).

    NIfTI .nii / .nii.gz   pixdim of x, y, z finite and > 0          (ITK reads 0 as 1 mm)
                           the file holds vox_offset + every voxel    (ITK fills a cut file with 0)
                             .nii.gz: the gzip trailer's length must say so, else the stream
                             is read to its end to tell how it ends
                           float data finite                          (ITK reads NaN, Inf as 0)
    MetaImage .mha / .mhd  the data (in the file or its ElementDataFile) holds every voxel
    NRRD / MetaImage       data_files: the files a header names for its pixels (hashed with it)

``header_problem`` runs before ITK reads a header (cheap: no decompression unless the file is
damaged); ``nonfinite_voxels`` runs after reading, for float NIfTI only.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLOCK = 1 << 22
NIFTI_FLOATS = {16: "f4", 64: "f8"}  # datatype code -> NumPy type (float16 is not a NIfTI type)
META_TYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def _is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


# ---------------------------------------------------------------- NIfTI


@dataclass(frozen=True)
class NiftiHeader:
    shape_xyz: tuple[int, ...]
    pixdim: tuple[float, ...]  # x, y, z (as many as there are spatial axes)
    datatype: int
    bitpix: int
    vox_offset: int
    endian: str  # "<" or ">"

    @property
    def needed_bytes(self) -> int:
        """Bytes the file must hold: up to the data, then every voxel."""
        return self.vox_offset + math.prod(self.shape_xyz) * self.bitpix // 8


def _head(path: Path, n: int) -> bytes:
    try:
        with (gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")) as f:
            return f.read(n)
    except (OSError, EOFError, zlib.error):
        return b""  # ITK will say it can't read the header


def nifti_header(path: Path) -> NiftiHeader | None:
    """The raw NIfTI-1 or NIfTI-2 header (None: not a NIfTI header; ITK will say why)."""
    raw = _head(path, 540)
    for endian in "<>":
        if len(raw) >= 348 and struct.unpack(endian + "i", raw[:4])[0] == 348:
            dim = struct.unpack(endian + "8h", raw[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", raw[70:74])
            pixdim = struct.unpack(endian + "8f", raw[76:108])
            offset = struct.unpack(endian + "f", raw[108:112])[0]
            break
        if len(raw) >= 540 and struct.unpack(endian + "i", raw[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "2h", raw[12:16])
            dim = struct.unpack(endian + "8q", raw[16:80])
            pixdim = struct.unpack(endian + "8d", raw[104:168])
            offset = struct.unpack(endian + "q", raw[168:176])[0]
            break
    else:
        return None
    ndim = min(max(int(dim[0]), 1), 7)
    shape = tuple(max(int(d), 1) for d in dim[1:ndim + 1])
    offset = int(offset) if math.isfinite(offset) else 0
    return NiftiHeader(shape, tuple(float(p) for p in pixdim[1:min(ndim, 3) + 1]), int(datatype), int(bitpix),
                       offset, endian)


def _gzip_trailer_size(path: Path) -> int | None:
    """ISIZE, the last 4 bytes of a gzip file: its uncompressed length modulo 2**32."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        if f.tell() < 18:
            return None
        f.seek(-4, 2)
        return struct.unpack("<I", f.read(4))[0]


def _gzip_blocks(path: Path) -> Iterator[bytes]:
    """The decompressed bytes of every gzip member, at most BLOCK at a time; raises EOFError
    where the stream is cut off and zlib.error at damaged data (or a wrong CRC)."""
    d, in_member = zlib.decompressobj(31), False
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            while block:
                in_member = True
                out = d.decompress(block, BLOCK)
                if out:
                    yield out
                if d.eof:  # a member ended: what follows may be another member
                    block, d, in_member = d.unused_data, zlib.decompressobj(31), False
                else:
                    block = d.unconsumed_tail
    if in_member:
        out = d.flush()
        if out:
            yield out
        if not d.eof:
            raise EOFError("the gzip stream ends before its end-of-stream marker")


def _file_blocks(path: Path) -> Iterator[bytes]:
    if _is_gzip(path):
        yield from _gzip_blocks(path)
        return
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(BLOCK), b"")


def _blocks_until_damage(path: Path) -> Iterator[bytes]:
    """_file_blocks, ending quietly where the data is damaged (``nifti_problem`` reports that)."""
    try:
        yield from _file_blocks(path)
    except (EOFError, zlib.error):
        return


def _stream_size(path: Path) -> tuple[int, str | None]:
    """(bytes decompressed, why the stream ended badly or None)."""
    n = 0
    try:
        for block in _file_blocks(path):
            n += len(block)
    except EOFError:
        return n, "the gzip stream is cut off"
    except zlib.error as e:
        return n, f"the gzip data is damaged ({e})"
    return n, None


def nifti_problem(path: Path) -> str | None:
    """What is wrong with a NIfTI file that ITK would read anyway (None: nothing found)."""
    h = nifti_header(path)
    if h is None:
        return None
    bad = [p for p in h.pixdim if not (math.isfinite(p) and p > 0)]
    if bad:
        return f"pixdim (voxel size) {h.pixdim} in the NIfTI header; expected finite values > 0 mm"
    need = h.needed_bytes
    if not _is_gzip(path):
        size = path.stat().st_size
        if size < need:
            return (f"truncated: {size:,} bytes; the header needs {need:,} (vox_offset {h.vox_offset} + "
                    f"{math.prod(h.shape_xyz):,} voxels x {h.bitpix // 8} bytes)")
        return None
    if _gzip_trailer_size(path) == need % 2**32:
        return None  # the usual case: one gzip member whose length is what the header needs
    size, broken = _stream_size(path)
    needs = (f"the header needs {need:,} (vox_offset {h.vox_offset} + {math.prod(h.shape_xyz):,} voxels x "
             f"{h.bitpix // 8} bytes)")
    if broken:
        return f"truncated or damaged: {broken} after {size:,} decompressed bytes; {needs}"
    if size < need:
        return f"truncated: it decompresses to {size:,} bytes; {needs}"
    return None


def nonfinite_voxels(path: Path) -> tuple[int, tuple[int, ...]] | None:
    """(count, (x, y, z) of the first) of NaN / Inf voxels in a float NIfTI file's own data,
    which ITK reads as 0; None for other files or when every voxel is finite."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    h = nifti_header(path)
    if h is None or h.datatype not in NIFTI_FLOATS:
        return None
    dtype = np.dtype(h.endian + NIFTI_FLOATS[h.datatype])
    start, stop = h.vox_offset, h.needed_bytes
    count, first, pos, done, carry = 0, None, 0, 0, b""  # done: data bytes before this block's part
    for block in _blocks_until_damage(path):
        lo, hi = max(start - pos, 0), min(stop - pos, len(block))
        pos += len(block)
        if hi <= lo:
            continue
        data = carry + block[lo:hi]
        base = (done - len(carry)) // dtype.itemsize  # voxel index of data[0]
        done += hi - lo
        whole = len(data) - len(data) % dtype.itemsize
        bad = ~np.isfinite(np.frombuffer(data[:whole], dtype))
        carry = data[whole:]
        if bad.any():
            first = base + int(np.argmax(bad)) if first is None else first
            count += int(bad.sum())
    if not count:
        return None
    nx = h.shape_xyz[0]
    ny = h.shape_xyz[1] if len(h.shape_xyz) > 1 else 1
    return count, (first % nx, first // nx % ny, first // (nx * ny))


# ---------------------------------------------------------------- MetaImage and NRRD


def _meta_fields(path: Path) -> tuple[dict[str, str], list[str], int]:
    """MetaImage header fields, the lines after ElementDataFile, and the byte offset of the data."""
    with open(path, "rb") as f:
        raw = f.read(1 << 16)
    fields: dict[str, str] = {}
    lines = raw.split(b"\n")
    offset = 0
    for i, line in enumerate(lines):
        offset += len(line) + 1
        key, sep, value = line.decode("latin-1").partition("=")
        if not sep:
            continue
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            rest = [s.decode("latin-1").strip() for s in lines[i + 1:]] if path.suffix.lower() == ".mhd" else []
            return fields, [s for s in rest if s], offset
    return fields, [], offset


def _listed_files(folder: Path, value: str, rest: list[str]) -> list[Path]:
    """Data file names of a header field: one name, LIST (names on the lines after it), or a
    printf pattern with min max step ('slice%03d.raw 1 40 1')."""
    parts = value.split()
    if not parts or parts[0] == "LOCAL":
        return []
    if parts[0] == "LIST":
        return [folder / name for name in rest]
    if "%" in parts[0] and len(parts) >= 4:
        lo, hi, step = (int(v) for v in parts[1:4])
        return [folder / (parts[0] % i) for i in range(lo, hi + 1, step or 1)]
    return [folder / value]


def _nrrd_data_files(path: Path) -> list[Path]:
    with open(path, "rb") as f:
        text = f.read(1 << 16).decode("latin-1")
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            break  # the header ends at the first blank line
        key, sep, value = line.partition(":")
        if sep and key.strip().replace(" ", "") == "datafile":
            rest = [s.strip() for s in lines[i + 1:] if s.strip()]
            return _listed_files(path.parent, value.strip(), rest)
    return []


def data_files(path: Path) -> list[Path]:
    """The files a header names for its pixels (.mhd ElementDataFile, NRRD 'data file'), in order;
    [] for files that hold their own pixels."""
    name = path.name.lower()
    if name.endswith((".mha", ".mhd")):
        fields, rest, _ = _meta_fields(path)
        return _listed_files(path.parent, fields.get("ElementDataFile", "LOCAL"), rest)
    if name.endswith((".nrrd", ".nhdr")):
        return _nrrd_data_files(path)
    return []


def meta_problem(path: Path) -> str | None:
    """A MetaImage whose pixel data is missing or shorter than its header says (None: fine)."""
    fields, _, offset = _meta_fields(path)
    try:
        dims = [int(v) for v in fields.get("DimSize", "").split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        item = META_TYPES.get(fields.get("ElementType", ""), 0)
        header_size = int(fields.get("HeaderSize", "0"))
    except ValueError:
        return None  # ITK will say what it can't parse
    files = data_files(path)
    missing = [p for p in files if not p.is_file()]
    if missing:
        return f"data file {missing[0]} named in the header (ElementDataFile) does not exist"
    if not dims or not item:
        return None
    available = sum(p.stat().st_size for p in files) if files else path.stat().st_size - offset
    if header_size > 0:
        available -= header_size * max(len(files), 1)
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if compressed:
        need = int(fields.get("CompressedDataSize", "0") or 0)
        what = "compressed bytes (CompressedDataSize)"
    else:
        need = math.prod(dims) * channels * item
        what = f"bytes ({math.prod(dims):,} voxels x {channels * item} bytes)"
    if header_size != -1 and available < need:
        return f"truncated: the pixel data holds {available:,} bytes; the header needs {need:,} {what}"
    return None


def header_problem(path: Path) -> str | None:
    """What ITK would read wrongly or explain badly in this file's bytes (None: nothing)."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return nifti_problem(path)
    if name.endswith((".mha", ".mhd")):
        return meta_problem(path)
    if name.endswith((".nrrd", ".nhdr")):
        missing = [p for p in data_files(path) if not p.is_file()]
        if missing:
            return f"data file {missing[0]} named in the header ('data file') does not exist"
    return None
