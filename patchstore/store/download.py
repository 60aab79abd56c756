"""Files from an fsspec file system into local files, resumed after an interruption and checked
against the size and SHA-256 a manifest gives before they get their final names.

    dest.parent/.<name>.download.tmp      grows by ranged reads, fs.cat_file(path, start, end)
      a dropped connection:               the read is asked again from the partial file's size,
                                          up to ATTEMPTS times
      a killed process:                   the next call resumes from the partial file's size
    -> size and SHA-256 equal the manifest's -> fsync -> renamed to dest
       otherwise: the partial file is deleted and the file refused, named (nothing of it is kept)

Many files go through a thread pool (the protocols' clients release the GIL while they wait), with
one progress bar in bytes. A server that ignores Range requests (``python -m http.server``)
answers every read with the whole file; that answer is taken as the whole file.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from patchstore.files import file_sha256, fsync_file

ATTEMPTS = 3  # per file and call: a dropped connection costs one more ranged read
BACKOFF_S = 0.5  # wait before attempt k + 1: k * BACKOFF_S
CHUNK_BYTES = 8 << 20  # one ranged read; what an interruption can lose
THREADS = 8
PARTIAL_SUFFIX = ".download.tmp"  # hidden, and a temporary file for `verify` and the build's clean-up


class RemoteError(RuntimeError):
    """A shard set at a URL that can't be used: the message names the URL and the problem."""


class Mismatch(RemoteError):
    """A file that is not what its manifest says (size or SHA-256): refused, never retried."""


@dataclass(frozen=True)
class Wanted:
    """One file to fetch: its path in the file system, its URL (for messages), where it goes, and
    the size and SHA-256 the manifest gives."""

    path: str
    url: str
    dest: Path
    size: int
    sha256: str


def retried(fn, *args):
    """``fn(*args)``, asked again up to ATTEMPTS times in all on a network error (a pooled connection
    the server closed, a timeout); FileNotFoundError is an answer, not an error to retry."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return fn(*args)
        except FileNotFoundError:
            raise
        except Exception:  # the protocols' network errors share no base class (aiohttp, botocore, OSError)
            if attempt == ATTEMPTS:
                raise
            time.sleep(BACKOFF_S * attempt)


def partial_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}{PARTIAL_SUFFIX}")


def _partial_size(dest: Path) -> int:
    try:
        return partial_path(dest).stat().st_size
    except FileNotFoundError:
        return 0


def _append_rest(fs, want: Wanted, chunk_bytes: int, advance: Callable[[int], None]) -> None:
    """Append the bytes the partial file lacks, one ranged read at a time."""
    part = partial_path(want.dest)
    have = _partial_size(want.dest)
    if have > want.size:  # left by another version of the file
        part.unlink()
        have = 0
    with open(part, "ab") as f:
        while have < want.size:
            end = min(have + chunk_bytes, want.size)
            data = fs.cat_file(want.path, start=have, end=end)
            if len(data) > end - have:  # the server ignored the Range header: this is the whole file
                if len(data) != want.size:
                    raise Mismatch(f"{want.url}: {len(data):,} bytes; the manifest says {want.size:,}")
                f.truncate(0)
                advance(len(data) - have)
                have = len(data)
            elif len(data) < end - have:
                raise Mismatch(f"{want.url}: ends after {have + len(data):,} bytes; the manifest says {want.size:,}")
            else:
                advance(len(data))
                have = end
            f.write(data)


def download(fs, want: Wanted, chunk_bytes: int = CHUNK_BYTES, advance: Callable[[int], None] = lambda n: None,
             read_only: bool = False) -> None:
    """Fetch ``want`` into ``want.dest`` through its partial file; RemoteError naming the URL when
    it can't be fetched (the bytes received stay for the next call), Mismatch when it is not what
    the manifest says (nothing stays)."""
    part = partial_path(want.dest)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _append_rest(fs, want, chunk_bytes, advance)
            break
        except Mismatch:
            part.unlink(missing_ok=True)
            raise
        except FileNotFoundError:
            part.unlink(missing_ok=True)
            raise RemoteError(f"{want.url}: not found (listed in the manifest)") from None
        except Exception as e:  # the protocols' network errors share no base class (aiohttp, botocore, OSError)
            if getattr(e, "status", None) == 416:  # HTTP: the range starts past the end of the file
                part.unlink(missing_ok=True)
                raise Mismatch(f"{want.url}: ends before byte {_partial_size(want.dest):,}; the manifest says "
                               f"{want.size:,} bytes") from None
            if attempt == ATTEMPTS:
                raise RemoteError(f"{want.url}: download failed {ATTEMPTS} times ({type(e).__name__}: {e}); the "
                                  f"{_partial_size(want.dest):,} bytes received are kept and the next run resumes "
                                  f"from them") from e
            time.sleep(BACKOFF_S * attempt)
    found = file_sha256(part)
    if found != want.sha256:
        part.unlink()
        raise Mismatch(f"{want.url}: SHA-256 is {found[:16]}...; the manifest says {want.sha256[:16]}... (changed "
                       f"after the manifest was written, or damaged on the way); refused, nothing of it kept")
    fsync_file(part)
    if read_only:
        os.chmod(part, 0o444)
    os.replace(part, want.dest)


def download_all(fs, wants: list[Wanted], threads: int = THREADS, chunk_bytes: int = CHUNK_BYTES,
                 progress: bool = False, read_only: bool = False) -> None:
    """Fetch every file of ``wants``, ``threads`` at a time. Every file that is not what the manifest
    says is reported; a file that can't be fetched stops the files not yet started."""
    if not wants:
        return
    lock = threading.Lock()
    bar = tqdm(total=sum(w.size for w in wants), initial=sum(_partial_size(w.dest) for w in wants), unit="B",
               unit_scale=True, unit_divisor=1024, desc=f"download {len(wants)} file(s)", disable=not progress)

    def advance(n: int) -> None:
        with lock:
            bar.update(n)

    failed: list[RemoteError] = []
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(wants)))) as pool:
        futures = [pool.submit(download, fs, w, chunk_bytes, advance, read_only) for w in wants]
        for fut in as_completed(futures):
            try:
                fut.result()
            except Mismatch as e:
                failed.append(e)
            except RemoteError as e:
                failed.append(e)
                for other in futures:
                    other.cancel()
    bar.close()
    failed.sort(key=str)
    if failed:
        more = f" (and {len(failed) - 1} more: {', '.join(str(e).split(': ', 1)[0] for e in failed[1:4])}" \
               f"{' ...' if len(failed) > 4 else ''})" if len(failed) > 1 else ""
        raise type(failed[0])(f"{failed[0]}{more}")
