"""Tests for patchstore.files: atomic writes and their file modes."""

from __future__ import annotations

import os
import stat

import pytest

from patchstore.files import atomic_path, is_temp, write_json_atomic, write_text_atomic


def test_atomic_path_replaces_only_on_success(tmp_path):
    """The final name gets the new content on success; on error it keeps the old and no temp is left."""
    final = tmp_path / "a.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert final.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    with atomic_path(final) as tmp:
        assert is_temp(tmp) and tmp.parent == tmp_path
        tmp.write_text("new")
    assert final.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_suffix_keeps_the_format_extension(tmp_path):
    """Writers that pick the format by extension see it on the temporary name."""
    with atomic_path(tmp_path / "m.nii.gz", ".nii.gz") as tmp:
        assert tmp.name.endswith(".tmp.nii.gz") and is_temp(tmp)
        tmp.write_bytes(b"x")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_mode_follows_the_umask(tmp_path, umask, mode):
    """Files get 0666 less the umask, as open() gives, not mkstemp's 0600."""
    old = os.umask(umask)
    try:
        path = write_text_atomic(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_json_is_sorted_with_a_final_newline(tmp_path):
    path = write_json_atomic(tmp_path / "d.json", {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
