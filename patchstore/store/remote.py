"""A shard folder at a URL: fetched into a local content-addressed cache, or pulled into a folder.

    URL  (https://host/shards, s3://bucket/shards, file:///mnt/shards: any fsspec protocol installed)
      manifest.json   fetched on every open (a few kB) and checked like a local one: every field,
                      every ``file`` a plain name; unreachable, the copy last fetched from the URL
                      is used, with a warning
      <file>.h5 ...   only those the cache lacks, in parallel, resumed after an interruption, each
                      checked against the manifest's size and SHA-256 before it is stored
                      (``patchstore.store.download``)

    cache/                                     default $XDG_CACHE_HOME/patchstore, ~/.cache/patchstore
      objects/ab/ab12...                       a verified shard, named by its SHA-256, read-only
      objects/ab/.ab12....download.tmp         a partial download: the next attempt resumes it
      sets/<manifest SHA-256>/                 a plain shard folder, which ShardSet opens:
        manifest.json                            the bytes fetched (so its hash is the URL's)
        <file>.h5 -> ../../objects/ab/ab12...    one link per shard
      urls/<SHA-256 of the URL>.json           which set the URL gave last, and when
      .patchstore.lock                         one process fetches at a time; the others wait

Shards shared by several sets (a build and a merge of its parts) are stored once. Nothing is
written outside the cache: names come from the manifest only through ``confined``, object names
only from its checked SHA-256 fields. ``pull`` writes a plain shard folder instead (real files,
manifest last), which ``patchstore verify`` passes.

fsspec is imported only here, and only when a URL is opened.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from patchstore.files import atomic_path, ensure_writable, file_sha256, write_json_atomic
from patchstore.lock import folder_lock
from patchstore.store.download import CHUNK_BYTES, THREADS, RemoteError, Wanted, download_all, retried
from patchstore.store.manifest import MANIFEST, manifest_problems, parse_manifest
from patchstore.store.shard import ShardError

HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Fetched:
    """A URL's shard set in the cache: the local folder, files and bytes downloaded this time, and
    warnings (the URL was unreachable and an earlier copy is used)."""

    folder: Path
    files: int
    bytes: int
    warnings: tuple[str, ...] = ()


def default_cache() -> Path:
    """$XDG_CACHE_HOME/patchstore, else ~/.cache/patchstore (the XDG base-directory convention)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "patchstore"


def object_path(cache: Path, sha256: str) -> Path:
    """Where the cache keeps the file of this SHA-256 (64 hex digits, checked by the manifest)."""
    assert HEX64.fullmatch(sha256), sha256
    return cache / "objects" / sha256[:2] / sha256


def _filesystem(url: str):
    """(fsspec file system, the folder's path in it) for ``url``."""
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise RemoteError(f"{url}: reading shards from a URL needs fsspec; expected it installed "
                          f"(pip install fsspec)") from None
    try:
        fs, root = url_to_fs(url)
    except (ImportError, ValueError) as e:  # a protocol fsspec doesn't know, or whose package is missing
        raise RemoteError(f"{url}: can't be read here ({e}); expected a URL of an installed fsspec protocol "
                          f"(https://, http://, file://, s3:// with pip install 'patchstore[s3]', ...)") from None
    return fs, root.rstrip("/")


def _manifest_bytes(fs, root: str, url: str) -> bytes:
    """The bytes of the folder's manifest.json (FileNotFoundError becomes a RemoteError; the other
    errors are the protocol's own, for the caller to judge)."""
    try:
        return retried(fs.cat_file, f"{root}/{MANIFEST}")
    except FileNotFoundError:
        raise RemoteError(f"{url}/{MANIFEST}: not found; expected the URL of a shard folder written by "
                          f"`patchstore build`") from None


def _checked(data: bytes, url: str, folder: str | Path) -> dict:
    """The manifest in ``data``: every field checked, files confined to ``folder``, no file twice."""
    manifest = parse_manifest(data, f"{url}/{MANIFEST}", folder)
    problems = manifest_problems(manifest)
    if problems:
        raise ShardError(f"{url}: {problems[0]}" + (f" (and {len(problems) - 1} more problem(s))"
                                                     if len(problems) > 1 else ""))
    if not manifest["shards"]:
        raise ShardError(f"{url}/{MANIFEST}: lists no shards")
    return manifest


def _unreachable(url: str, e: Exception) -> str:
    return f"{url}/{MANIFEST}: can't be read ({type(e).__name__}: {e})"


def _reachable_manifest_bytes(fs, root: str, url: str) -> bytes:
    """``_manifest_bytes``, a network error becoming a RemoteError naming the URL."""
    try:
        return _manifest_bytes(fs, root, url)
    except RemoteError:
        raise
    except Exception as e:  # the protocols' network errors share no base class
        raise RemoteError(_unreachable(url, e)) from e


def remote_manifest(url: str) -> dict:
    """The manifest of the shard folder at ``url``, every field checked (nothing is downloaded but it)."""
    url = url.rstrip("/")
    fs, root = _filesystem(url)
    data = _reachable_manifest_bytes(fs, root, url)
    return _checked(data, url, url)


def _stderr(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def fetch(url: str, cache: str | os.PathLike | None = None, progress: bool = False, threads: int = THREADS,
          chunk_bytes: int = CHUNK_BYTES, log=_stderr) -> Fetched:
    """The shard folder at ``url`` as a local folder of verified files in ``cache`` (downloading
    only what the cache lacks). RemoteError or ShardError naming the URL or file otherwise."""
    cache = Path(cache) if cache is not None else default_cache()
    url = url.rstrip("/")
    fs, root = _filesystem(url)
    try:
        data = _manifest_bytes(fs, root, url)
    except RemoteError:
        raise
    except Exception as e:  # unreachable: the protocols' network errors share no base class
        return _cached_copy(url, cache, e)
    digest = hashlib.sha256(data).hexdigest()
    folder = cache / "sets" / digest
    manifest = _checked(data, url, folder)
    try:
        ensure_writable(cache)
    except OSError as e:
        raise RemoteError(f"{e.filename}: {e.strerror} (the download cache)") from None
    with folder_lock(cache, "fetch", on_wait=log):
        unique = {e["sha256"]: e for e in manifest["shards"]}.values()  # one download per content
        wants = [Wanted(f"{root}/{e['file']}", f"{url}/{e['file']}", object_path(cache, e["sha256"]), e["bytes"],
                        e["sha256"])
                 for e in unique if not _is_cached(object_path(cache, e["sha256"]), e["bytes"])]
        for w in wants:
            w.dest.parent.mkdir(parents=True, exist_ok=True)
        download_all(fs, wants, threads, chunk_bytes, progress, read_only=True)
        _write_set(cache, folder, data, manifest)
        write_json_atomic(_url_record(cache, url), {"url": url, "manifest_sha256": digest,
                                                    "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return Fetched(folder, len(wants), sum(w.size for w in wants))


def _is_cached(path: Path, size: int) -> bool:
    """Stored in the cache, where it was checked against its SHA-256 (a file of another size is
    fetched again)."""
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _write_set(cache: Path, folder: Path, data: bytes, manifest: dict) -> None:
    """The set's folder: one link per shard to its object, then manifest.json (last: a folder with a
    manifest is complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    for e in manifest["shards"]:
        link = folder / e["file"]  # a plain name: parse_manifest confined it to ``folder``
        target = os.path.relpath(object_path(cache, e["sha256"]), folder)
        if link.is_symlink() and os.readlink(link) == target:
            continue
        link.unlink(missing_ok=True)
        os.symlink(target, link)
    path = folder / MANIFEST
    if not path.is_file() or path.read_bytes() != data:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)


def _url_record(cache: Path, url: str) -> Path:
    return cache / "urls" / f"{hashlib.sha256(url.encode()).hexdigest()}.json"


def _cached_copy(url: str, cache: Path, error: Exception) -> Fetched:
    """The set ``url`` gave last, when it can't be reached now (a warning says so)."""
    try:
        record = json.loads(_url_record(cache, url).read_text(encoding="utf-8"))
        digest = record["manifest_sha256"]
        folder = cache / "sets" / digest
        usable = HEX64.fullmatch(digest) is not None and (folder / MANIFEST).is_file()
    except (OSError, ValueError, KeyError, TypeError):
        usable = False
    if not usable:
        raise RemoteError(f"{_unreachable(url, error)}, and the cache {cache} holds no copy of it") from error
    return Fetched(folder, 0, 0, (f"{_unreachable(url, error)}; using the copy cached from it on "
                                  f"{record.get('fetched', '?')} (manifest SHA-256 {digest[:16]}...)",))


def pull(url: str, out: str | os.PathLike, progress: bool = False, threads: int = THREADS,
         chunk_bytes: int = CHUNK_BYTES) -> dict:
    """Copy the shard folder at ``url`` into the plain folder ``out`` (each file checked, the
    manifest written last, byte for byte the URL's); an interrupted pull resumes. Returns the
    manifest. A file already in ``out`` is kept only when it is exactly the shard listed."""
    out, url = Path(out), url.rstrip("/")
    fs, root = _filesystem(url)
    data = _reachable_manifest_bytes(fs, root, url)
    manifest = _checked(data, url, out)
    ensure_writable(out)
    with folder_lock(out, "pull"):
        if (out / MANIFEST).exists() and (out / MANIFEST).read_bytes() != data:
            raise RemoteError(f"{out}: holds another shard set ({out / MANIFEST} differs from {url}/{MANIFEST}); "
                              f"expected a new or empty folder")
        wants = []
        for e in manifest["shards"]:
            dest = out / e["file"]  # a plain name: parse_manifest confined it to ``out``
            if dest.exists() or dest.is_symlink():
                if dest.is_file() and not dest.is_symlink() and dest.stat().st_size == e["bytes"] \
                        and file_sha256(dest) == e["sha256"]:
                    continue  # pulled by an earlier run that stopped before the manifest
                raise FileExistsError(errno.EEXIST, f"exists and is not the shard {url}/{e['file']}; pull never "
                                      f"overwrites a file it did not write: expected a new or empty folder",
                                      str(dest))
            wants.append(Wanted(f"{root}/{e['file']}", f"{url}/{e['file']}", dest, e["bytes"], e["sha256"]))
        download_all(fs, wants, threads, chunk_bytes, progress)
        with atomic_path(out / MANIFEST) as tmp:
            tmp.write_bytes(data)
    return manifest
