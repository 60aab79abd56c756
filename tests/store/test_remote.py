"""Tests for patchstore.store.remote and .download: shard folders served by a real HTTP server on
127.0.0.1 (tests/conftest.py ``serve``), fetched into a cache, resumed, refused, pulled."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pytest
from click.testing import CliRunner

from patchstore.cli import main
from patchstore.files import UnsafePathError, file_sha256
from patchstore.lock import folder_lock
from patchstore.store.download import ATTEMPTS, RemoteError, partial_path
from patchstore.store.manifest import MANIFEST
from patchstore.store.remote import fetch, object_path
from patchstore.store.shardset import ShardSet
from tests.builders import make_shards

SMALL = 16 << 10  # ranged reads of 16 KiB: a shard of ~70 kB takes several


@pytest.fixture
def shards(tmp_path):
    return make_shards(tmp_path / "served", volumes=3, per_volume=64)


def test_fetched_set_equals_the_folder_and_a_second_fetch_downloads_nothing(shards, tmp_path, serve):
    """Every shard lands in the cache under its SHA-256; the set's folder opens like the original;
    a second fetch asks the server for the manifest only."""
    server = serve(shards)
    got = fetch(server.url, tmp_path / "cache", chunk_bytes=SMALL)
    assert got.files == 3 and got.bytes == sum(p.stat().st_size for p in shards.glob("*.h5"))
    for name in ("case0.h5", "case1.h5", "case2.h5", MANIFEST):
        assert (got.folder / name).read_bytes() == (shards / name).read_bytes()
        if name != MANIFEST:
            assert (got.folder / name).resolve() == object_path(tmp_path / "cache", file_sha256(shards / name))
    assert {name for name, _ in server.asked()} == {"case0.h5", "case1.h5", "case2.h5"}
    server.requests.clear()
    opened = ShardSet.open(server.url, cache=tmp_path / "cache")
    assert server.requests == [("GET", MANIFEST, None)]
    assert opened.manifest_sha256 == file_sha256(shards / MANIFEST) and opened.warnings == ()


def test_a_second_process_waits_for_the_cache(shards, tmp_path, serve):
    """While another process fetches into the cache (its lock held), a fetch says whom it waits for,
    downloads nothing meanwhile, and completes once the lock is free."""
    server = serve(shards)
    cache, notes = tmp_path / "cache", []
    with folder_lock(cache, "fetch"):
        waiting = threading.Thread(target=fetch, args=(server.url, cache), kwargs={"log": notes.append})
        waiting.start()
        deadline = time.monotonic() + 10
        while not notes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert waiting.is_alive() and server.asked() == []
    waiting.join(timeout=30)
    assert f"waiting for patchstore fetch (pid {os.getpid()} on host" in notes[0] and len(server.asked()) == 3


def test_dropped_connection_resumes_where_it_stopped(shards, tmp_path, serve):
    """The server drops the connection half-way through case1.h5: the next read starts at the
    bytes already received (never at 0 again), and the file verifies."""
    server = serve(shards)
    size = (shards / "case1.h5").stat().st_size
    server.drop("case1.h5", at=size // 2)
    got = fetch(server.url, tmp_path / "cache", chunk_bytes=SMALL)
    starts = [start for name, start in server.asked() if name == "case1.h5"]
    cut = size // 2 // SMALL * SMALL
    assert starts.count(cut) == 2 and starts == sorted(starts) and cut > 0, starts
    assert file_sha256(got.folder / "case1.h5") == file_sha256(shards / "case1.h5")


def test_interrupted_fetch_resumes_in_the_next_run(shards, tmp_path, serve):
    """A file whose every attempt is cut stops the fetch naming its URL; the bytes received stay, and
    the next run asks only for the rest."""
    server = serve(shards)
    size = (shards / "case1.h5").stat().st_size
    server.drop("case1.h5", at=size // 2, times=ATTEMPTS)
    with pytest.raises(RemoteError, match=rf"{server.url}/case1.h5: download failed {ATTEMPTS} times .* bytes "
                                          r"received are kept"):
        fetch(server.url, tmp_path / "cache", chunk_bytes=SMALL)
    partial = partial_path(object_path(tmp_path / "cache", file_sha256(shards / "case1.h5")))
    kept = partial.stat().st_size
    assert 0 < kept < size
    server.requests.clear()
    got = fetch(server.url, tmp_path / "cache", chunk_bytes=SMALL)
    assert [start for _, start in server.asked()] == list(range(kept, size, SMALL))
    assert file_sha256(got.folder / "case1.h5") == file_sha256(shards / "case1.h5") and not partial.exists()


@pytest.mark.parametrize("damage, message", [("altered", r"SHA-256 is [0-9a-f]{16}\.\.\.; the manifest says"),
                                             ("truncated", r"ends after [0-9,]+ bytes; the manifest says")])
def test_shard_changed_after_the_manifest_is_refused_and_not_kept(shards, tmp_path, serve, damage, message):
    """A served shard that is not what the manifest says is refused naming it; nothing of it is kept."""
    path = shards / "case1.h5"
    data = bytearray(path.read_bytes())
    if damage == "altered":
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(data if damage == "altered" else data[:-100])
    server = serve(shards)
    cache = tmp_path / "cache"
    with pytest.raises(RemoteError, match=rf"{server.url}/case1.h5: {message}"):
        fetch(server.url, cache, chunk_bytes=SMALL)
    entry = next(e for e in json.loads((shards / MANIFEST).read_text())["shards"] if e["file"] == "case1.h5")
    assert not object_path(cache, entry["sha256"]).exists()
    assert not partial_path(object_path(cache, entry["sha256"])).exists()
    assert not (cache / "sets").exists()  # no set folder: nothing can open it


def test_server_without_range_requests(shards, tmp_path, serve):
    """A server that answers every read with the whole file (python -m http.server) still works."""
    server = serve(shards, ranges=False)
    got = fetch(server.url, tmp_path / "cache", chunk_bytes=SMALL)
    assert all(file_sha256(got.folder / n) == file_sha256(shards / n) for n in ("case0.h5", "case1.h5", "case2.h5"))
    assert len(server.asked()) == 3


@pytest.mark.parametrize("name", ["../../escaped.h5", "/tmp/escaped.h5", "sub/escaped.h5"])
def test_manifest_entry_outside_the_cache_is_refused(shards, tmp_path, serve, name):
    """A served manifest naming a file outside its folder is refused before anything is written."""
    manifest = json.loads((shards / MANIFEST).read_text())
    manifest["shards"][0]["file"] = name
    (shards / MANIFEST).write_text(json.dumps(manifest))
    server = serve(shards)
    with pytest.raises(UnsafePathError, match=rf"{server.url}/manifest.json: shards\[0\]\.file is '{name}'"):
        fetch(server.url, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "escaped.h5").exists()
    assert server.asked() == []


@pytest.mark.slow
def test_unreachable_url_uses_the_cached_copy_with_a_warning(shards, tmp_path, serve):
    """With the server gone, the set last fetched from the URL opens, with a warning naming the URL."""
    server = serve(shards)
    url = server.url
    fetch(url, tmp_path / "cache")
    server.close()
    opened = ShardSet.open(url, cache=tmp_path / "cache")
    assert len(opened.warnings) == 1 and f"{url}/manifest.json: can't be read" in opened.warnings[0]
    assert "using the copy cached from it" in opened.warnings[0] and len(opened) == 64 + 80 + 96
    with pytest.raises(RemoteError, match=r"can't be read .*, and the cache .* holds no copy of it"):
        fetch(url, tmp_path / "empty-cache")


def test_pull_makes_a_plain_folder_that_verifies(shards, tmp_path, serve):
    """`patchstore pull URL -o out`: real files, byte for byte the served folder; `verify` passes;
    pulling again downloads nothing; a foreign file of a shard's name is never overwritten."""
    server = serve(shards)
    out = tmp_path / "pulled"
    res = CliRunner().invoke(main, ["pull", server.url, "-o", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("case0.h5", "case1.h5", "case2.h5", MANIFEST):
        assert not (out / name).is_symlink() and (out / name).read_bytes() == (shards / name).read_bytes()
    assert sorted(os.listdir(out)) == ["case0.h5", "case1.h5", "case2.h5", MANIFEST]
    assert "OK, 3 shards intact" in CliRunner().invoke(main, ["verify", str(out)]).output
    server.requests.clear()
    assert CliRunner().invoke(main, ["pull", server.url, "-o", str(out)]).exit_code == 0
    assert server.asked() == []
    other = tmp_path / "other"
    other.mkdir()
    (other / "case1.h5").write_text("my notes")
    res = CliRunner().invoke(main, ["pull", server.url, "-o", str(other)])
    assert res.exit_code == 1 and f"Error: {other / 'case1.h5'}: exists and is not the shard" in res.output
    assert (other / "case1.h5").read_text() == "my notes"


def test_verify_and_info_accept_a_url(shards, tmp_path, serve):
    """`patchstore verify URL --cache DIR` checks the fetched copy; an altered shard is one line naming
    it; `patchstore info URL` reads the manifest only."""
    server = serve(shards)
    res = CliRunner().invoke(main, ["verify", server.url, "--cache", str(tmp_path / "cache")])
    assert res.exit_code == 0 and f"{server.url}: OK, 3 shards intact" in res.output, res.output
    server.requests.clear()
    res = CliRunner().invoke(main, ["info", server.url])
    assert res.exit_code == 0 and "total (3 shards)" in res.output and server.asked() == []
    altered = tmp_path / "altered"
    shutil.copytree(shards, altered)
    data = bytearray((altered / "case2.h5").read_bytes())
    data[-1] ^= 1
    (altered / "case2.h5").write_bytes(data)
    url = serve(altered).url
    res = CliRunner().invoke(main, ["verify", url, "--cache", str(tmp_path / "cache2")])
    last = res.output.strip().splitlines()[-1]  # after the download's progress bar
    assert res.exit_code == 1 and "Traceback" not in res.output and res.output.count("Error:") == 1
    assert last.startswith(f"Error: {url}/case2.h5: SHA-256 is") and "refused" in last
