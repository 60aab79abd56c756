"""Fault class 2: corrupt inputs are refused, never read silently; every byte a volume depends on is hashed.

ITK reads a cut-off NIfTI with the missing part as zeros, NaN / Inf in NIfTI as 0 and a pixdim of
0 as 1 mm; an .mhd's hash used to cover the header only. Each case below is refused by
``read_volume`` (so by `check`, `build` and `infer` alike) with the file and the problem named.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from infer.cli import main as infer_main
from patchstore.build import BuildError, build
from patchstore.cli import main
from patchstore.config import BuildConfig
from patchstore.io.volume import VolumeError, content_sha256, read_volume, write_volume
from tests.builders import bone_volume, lps_geometry, write_case, write_checkpoint

CFG = BuildConfig.paper(angles=(), translations=0)


def _volume(tmp_path: Path, name: str, dtype=np.int16, shape=(6, 40, 44)) -> Path:
    a = np.random.default_rng(0).normal(0, 300, shape).astype(dtype)
    return write_volume(tmp_path / name, a, lps_geometry(a.shape))


def _cut(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii", "ct.mha", "ct.nrrd"])
def test_truncated_volume_is_refused(tmp_path, name):
    """A file cut in half is refused naming the file (ITK fills a cut NIfTI with zeros)."""
    path = _cut(_volume(tmp_path, name))
    with pytest.raises(VolumeError, match=rf"{name}: (truncated|unreadable)"):
        read_volume(path)


def test_truncated_nifti_names_the_sizes(tmp_path):
    """The message gives what the data holds and what the header needs."""
    path = _cut(_volume(tmp_path, "ct.nii.gz"), 0.6)
    with pytest.raises(VolumeError, match=r"truncated or damaged: the gzip stream is cut off after [\d,]+ "
                                          r"decompressed bytes; the header needs 21,472 \(vox_offset 352"):
        read_volume(path)


def test_complete_multi_member_gzip_is_read(tmp_path):
    """A .nii.gz of two gzip members (complete) is not mistaken for a cut-off file."""
    path = _volume(tmp_path, "ct.nii.gz")
    raw = gzip.decompress(path.read_bytes())
    two = tmp_path / "two.nii.gz"
    two.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]))
    assert np.array_equal(read_volume(two).array, read_volume(path).array)


@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_in_nifti_are_refused(tmp_path, name, bad):
    """NaN / Inf in a float NIfTI are refused (ITK would read them as 0), with the count and the first voxel."""
    a = np.zeros((4, 8, 8), np.float32)
    a[2, 3, 5] = bad
    a[3, 0, 0] = bad
    path = write_volume(tmp_path / name, a, lps_geometry(a.shape))
    with pytest.raises(VolumeError, match=rf"{name}: 2 voxels are NaN or Inf .*first at x=5, y=3, z=2"):
        read_volume(path)


@pytest.mark.parametrize("value", [0.0, float("nan"), -0.7])
def test_nifti_pixdim_zero_is_refused(tmp_path, value):
    """pixdim 0 (or NaN, or negative) is refused rather than read as 1 mm."""
    path = _volume(tmp_path, "ct.nii")
    data = bytearray(path.read_bytes())
    data[80:84] = struct.pack("<f", value)  # pixdim[1], the x spacing
    path.write_bytes(bytes(data))
    with pytest.raises(VolumeError, match=r"ct\.nii: (pixdim|spacing).*expected (three )?finite values > 0"):
        read_volume(path)


def test_mhd_hash_covers_the_raw_data(tmp_path):
    """Changing the .raw/.zraw pixels of an .mhd changes its content hash (the header alone does not)."""
    path = _volume(tmp_path, "ct.mhd")
    raw = path.with_suffix(".zraw")
    before = content_sha256(path)
    data = bytearray(raw.read_bytes())
    data[len(data) // 2] ^= 0xFF
    raw.write_bytes(bytes(data))
    assert content_sha256(path) != before


def test_nhdr_hash_covers_its_data_file(tmp_path):
    """A detached NRRD header's 'data file' is hashed with it."""
    import SimpleITK as sitk
    path = tmp_path / "ct.nhdr"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.int16)), str(path))
    raw = next(p for p in tmp_path.iterdir() if p.name != "ct.nhdr")
    before = content_sha256(path)
    raw.write_bytes(b"\1" + raw.read_bytes()[1:])
    assert content_sha256(path) != before


def test_mhd_with_missing_data_file_is_refused(tmp_path):
    path = _volume(tmp_path, "ct.mhd")
    path.with_suffix(".zraw").unlink()
    with pytest.raises(VolumeError, match=r"ct\.mhd: data file .*ct\.zraw named in the header .* does not exist"):
        read_volume(path)
    with pytest.raises(VolumeError, match=r"ct\.zraw named in the header does not exist"):
        content_sha256(path)


def test_changed_raw_pixels_rebuild_the_shard(tmp_path):
    """A build from .mhd volumes whose .zraw changed rebuilds that volume instead of reusing its shard."""
    rng = np.random.default_rng(3)
    data = tmp_path / "data"
    img, msk = bone_volume(rng, shape=(5, 72, 76))
    image, _ = write_case(data, "c0", img, msk, suffix=".mhd")
    out = tmp_path / "out"
    assert build(data, out, CFG, quiet=True).built == ["c0"]
    img[:, 30:40, 30:40] += 300  # new pixels, same header
    write_volume(tmp_path / "new.mhd", img, lps_geometry(img.shape))
    image.with_suffix(".zraw").write_bytes((tmp_path / "new.zraw").read_bytes())
    result = build(data, out, CFG, quiet=True)
    assert result.built == ["c0"] and result.skipped == []


def test_truncated_mask_stops_build_and_check(build_dataset, tmp_path):
    """check reports the cut-off mask as a problem (exit 1); build stops naming it, writing no shard of it."""
    _cut(build_dataset / "labelsTr" / "case1.nii.gz")
    res = CliRunner().invoke(main, ["check", str(build_dataset)])
    assert res.exit_code == 1 and "PROBLEM" in res.output and "case1.nii.gz: truncated" in res.output
    with pytest.raises(BuildError, match=r"case1\.nii\.gz: truncated"):
        build(build_dataset, tmp_path / "out", CFG, quiet=True)
    assert not (tmp_path / "out" / "case1.h5").exists()


def test_truncated_ct_stops_infer_before_writing(tmp_path):
    """infer volume on a cut-off CT exits 1 with one line and writes no mask."""
    ct = _cut(_volume(tmp_path, "ct.nii.gz"))
    model = write_checkpoint(tmp_path / "m.pt")
    res = CliRunner().invoke(infer_main, ["volume", str(ct), "-m", str(model), "-o", str(tmp_path / "pred.nii.gz"),
                                          "--quiet"])
    assert res.exit_code == 1 and "ct.nii.gz: truncated" in res.output, res.output
    assert not (tmp_path / "pred.nii.gz").exists()
