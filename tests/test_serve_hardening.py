"""The web server against hostile files, pages and clients, and a database that goes away.

Swapped indexed files (FIFO, device, link elsewhere), decode memory, DNS rebinding (Host),
slow or lying clients (raw sockets), a database restart, a busy port. See docs/RELIABILITY.md.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import select
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import TINY_MODEL, index_images, make_images, own_server
from PIL import Image

from clipdb.db import Database
from clipdb.db.embedded import EmbeddedServer, ensure_server, stop_server
from clipdb.db.registry import list_models
from clipdb.db.store import ImageRecord, upsert_images
from clipdb.serve import create_app, running
from clipdb.serve.__main__ import build_parser, main


@pytest.fixture
def pictures(tmp_path: Path) -> list[Path]:
    return make_images(tmp_path / "lib", 4, seed=5)


@pytest.fixture
def ids(database: Database, tiny_encoder: Any, pictures: list[Path]) -> dict[str, int]:
    return index_images(database, tiny_encoder, pictures)


@pytest.fixture
def server(database: Database, tiny_encoder: Any, ids: dict) -> Iterator[str]:
    with running(create_app(database, encoder=tiny_encoder)) as url:
        yield url


@pytest.fixture
def impatient(database: Database, tiny_encoder: Any, ids: dict) -> Iterator[str]:
    """A server that gives clients 1 s for their headers and for each piece of a body."""
    app = create_app(database, encoder=tiny_encoder, header_timeout_s=1, body_timeout_s=1)
    with running(app) as url:
        yield url


def thumbnail(url: str, image_id: int) -> httpx.Response:
    return httpx.get(f"{url}/api/images/{image_id}/thumbnail", timeout=5)


# --- 1. the file at an indexed path is not the indexed file any more ------------------------


def test_swapped_files_are_410_and_never_read(server: str, ids: dict, pictures: list, tmp_path):
    fifo, device, link, rewritten = (path.resolve() for path in pictures)
    assert thumbnail(server, ids[str(fifo)]).status_code == 200

    fifo.unlink()
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    device.unlink()
    device.symlink_to("/dev/zero")  # endless
    # A link to a file outside the indexed tree, forged to the row's size and mtime.
    stat = link.stat()
    outside = tmp_path / "private.jpg"
    small = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(small, "JPEG")
    assert len(small.getvalue()) < stat.st_size
    outside.write_bytes(small.getvalue().ljust(stat.st_size, b"\0"))
    os.utime(outside, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    link.unlink()
    link.symlink_to(outside)
    Image.new("RGB", (50, 50), "blue").save(rewritten, "JPEG")  # edited after indexing

    for path in (fifo, device, link, rewritten):
        try:  # reading the FIFO or /dev/zero would never end: the timeout is a hang-guard
            response = httpx.get(f"{server}/api/images/{ids[str(path)]}/thumbnail", timeout=60)
        except httpx.TimeoutException:
            pytest.fail(f"no answer for {path.name}: the server is reading the swapped file")
        assert response.status_code == 410, (path, response.text)
        assert "changed since it was indexed" in response.json()["detail"]
    assert httpx.get(f"{server}/api/health", timeout=5).status_code == 200


def test_original_file_is_served_only_while_it_is_the_indexed_one(
    server: str, ids: dict, pictures: list
) -> None:
    path = pictures[0].resolve()
    original = httpx.get(f"{server}/api/images/{ids[str(path)]}/file", timeout=10)
    assert original.status_code == 200 and original.content == path.read_bytes()
    assert original.headers["content-type"] == "image/jpeg"
    assert original.headers["x-content-type-options"] == "nosniff"
    path.write_bytes(path.read_bytes() + b"\0")  # edited after indexing
    changed = httpx.get(f"{server}/api/images/{ids[str(path)]}/file", timeout=10)
    assert changed.status_code == 410 and "changed since it was indexed" in changed.text
    assert httpx.get(f"{server}/api/images/999999/file", timeout=10).status_code == 404


def test_a_deleted_file_is_404(server: str, ids: dict, pictures: list):
    path = pictures[0].resolve()
    path.unlink()
    response = thumbnail(server, ids[str(path)])
    assert response.status_code == 404 and "file is gone" in response.json()["detail"]


# --- 2. decode memory -------------------------------------------------------------------------


def flat_png(width: int, height: int) -> bytes:
    """A valid RGB PNG of one colour, written row by row: no full-size image in this process."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    compressor = zlib.compressobj(9)
    row = b"\0" + bytes([40, 90, 160]) * width  # filter byte, then the pixels
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def rss_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


class PeakSampler:
    """VmRSS sampled every 10 ms: the peak where VmHWM cannot be reset."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes("VmRSS"))
            time.sleep(0.01)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def burst_growth(requests: Any, count: int) -> tuple[int, list[httpx.Response]]:
    """Run ``requests(i)`` for i < count at once; how far RSS rose above where it started."""
    before = rss_bytes("VmRSS")
    exact = reset_peak()
    with PeakSampler() as sampler, ThreadPoolExecutor(count) as pool:
        responses = list(pool.map(requests, range(count)))
    peak = rss_bytes("VmHWM") if exact else sampler.peak
    return peak - before, responses


@pytest.mark.slow
def test_a_burst_of_huge_uploads_and_thumbnails_stays_bounded(
    database: Database, tiny_encoder: Any, ids: dict, tmp_path: Path
):
    huge = flat_png(9400, 9400)  # 88 MP: under ingest's limit, 265 MB as RGB
    assert len(huge) < 400_000
    big_path = tmp_path / "lib" / "huge.png"
    big_path.write_bytes(huge)
    with database.connect() as conn:
        (model,) = list_models(conn)
        record = ImageRecord(
            path=str(big_path), sha256=hashlib.sha256(huge).digest(), size=len(huge),
            mtime_ns=big_path.stat().st_mtime_ns, width=9400, height=9400,
            embedding=np.ones(model.dim, np.float32) / np.sqrt(model.dim),
        )  # fmt: skip
        upsert_images(conn, model, [record])
        conn.commit()
        (big_id,) = conn.execute("SELECT id FROM clipdb.images WHERE path = %s", (str(big_path),))
    limit = 1_500_000_000
    with running(create_app(database, encoder=tiny_encoder)) as url:
        http = httpx.Client(base_url=url, timeout=120)

        def post(_: int) -> httpx.Response:
            return http.post("/api/search", files={"image": ("huge.png", huge, "image/png")})

        grown, responses = burst_growth(post, 8)
        assert grown < limit, f"8 uploads grew the server by {grown / 1e6:.0f} MB"
        for response in responses:
            assert response.status_code == 400
            assert "uploads are limited to 40 MP" in response.json()["detail"]

        sizes = [16, 100, 128, 200, 256, 300, 512, 1024]  # each a different ?size=

        def get(i: int) -> httpx.Response:
            return http.get(f"/api/images/{big_id[0]}/thumbnail", params={"size": sizes[i]})

        grown, responses = burst_growth(get, 8)
        assert grown < limit, f"8 thumbnails grew the server by {grown / 1e6:.0f} MB"
        assert [r.status_code for r in responses] == [200] * 8
        longest = [max(Image.open(io.BytesIO(r.content)).size) for r in responses]
        assert longest == [128, 128, 128, 256, 256, 256, 512, 512]
        assert http.get("/api/stats").json()["thumbnail_cache"]["entries"] == 3
        assert http.get("/api/health", timeout=5).json()["status"] == "ok"
        http.close()


# --- 3. DNS rebinding: only local Host names ----------------------------------------------------


def test_foreign_host_headers_are_refused(server: str, ids: dict):
    port = server.rsplit(":", 1)[1]
    image_id = next(iter(ids.values()))
    for path in ("/api/search?text=cat", f"/api/images/{image_id}/thumbnail", "/"):
        evil = httpx.get(server + path, headers={"Host": "evil.example"}, timeout=5)
        assert evil.status_code == 400, path
        assert b"JFIF" not in evil.content and "image_path" not in evil.text
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]"):
        ok = httpx.get(f"{server}/api/search?text=cat", headers={"Host": host}, timeout=10)
        assert ok.status_code == 200, host


def test_allowed_hosts_are_accepted_too(database: Database, tiny_encoder: Any, ids: dict):
    app = create_app(database, encoder=tiny_encoder, allowed_hosts=["Photos.LAN", "::2"])
    with running(app) as url:
        for host, status in (("photos.lan:80", 200), ("[::2]:8000", 200), ("other.lan", 400)):
            response = httpx.get(f"{url}/api/health", headers={"Host": host}, timeout=10)
            assert response.status_code == status, host


def test_cli_allowed_hosts_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch):
    from clipdb.serve.__main__ import allowed_hosts as cli_allowed_hosts

    monkeypatch.setenv("CLIPDB_ALLOWED_HOSTS", "a.lan, b.lan")
    args = build_parser().parse_args(["--host", "0.0.0.0", "--allow-host", "photos.lan"])
    assert cli_allowed_hosts(args) == ["photos.lan", "a.lan", "b.lan"]
    args = build_parser().parse_args(["--host", "192.168.1.5"])
    assert cli_allowed_hosts(args) == ["192.168.1.5", "a.lan", "b.lan"]


# --- 4. slow or lying clients (raw sockets) -----------------------------------------------------


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if it was still open after ``seconds``."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


def dribble_until_closed(sockets: list[socket.socket], rounds: int = 200) -> None:
    """Send each socket one more header byte every 0.3 s until the server closes it.

    0.3 s is under the server's 1 s header deadline, so a timer that any byte re-arms (as
    uvicorn's keep-alive one) would never fire: the sockets would outlast ``rounds``.
    """
    left = set(sockets)
    for _ in range(rounds):
        readable, _, _ = select.select(list(left), [], [], 0.3)
        left -= {sock for sock in readable if closed_within(sock, 30) is not None}
        for sock in list(left):
            try:
                sock.sendall(b"b")
            except OSError:  # closed between the select and the send
                left.discard(sock)
        if not left:
            return
    pytest.fail(f"{len(left)} dribbling clients still connected after {rounds} bytes each")


def test_slow_headers_are_cut_off(impatient: str):
    server = impatient
    sockets = [socket.create_connection(address(server), timeout=5) for _ in range(50)]
    try:
        for index, sock in enumerate(sockets):
            if index % 2:  # half say nothing, half dribble a header that never ends
                sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
        dribble_until_closed(sockets[1::2])
        silent_open = [sock for sock in sockets[::2] if closed_within(sock, 60) is None]
        assert not silent_open, f"{len(silent_open)} silent clients still connected after 60 s"
        assert httpx.get(f"{server}/api/health", timeout=30).status_code == 200
    finally:
        for sock in sockets:
            sock.close()


def raw_request(url: str, head: bytes, body: bytes = b"", wait: float = 8) -> bytes | None:
    with socket.create_connection(address(url), timeout=5) as sock:
        sock.sendall(head + body)
        return closed_within(sock, wait)


def test_a_body_shorter_than_its_content_length_is_408(impatient: str):
    head = (
        b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n"
        b"Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
    )
    partial = b"--xyz\r\nContent-Disposition: form-data; name="
    answer = raw_request(impatient, head, partial, wait=60)  # hang-guard only
    assert answer is not None, "the server waited 60 s for a body that never came"
    assert answer.startswith(b"HTTP/1.1 408 ") and b"not received within" in answer


def test_an_oversized_chunked_upload_is_413(database: Database, tiny_encoder: Any, ids: dict):
    app = create_app(database, encoder=tiny_encoder, max_upload_bytes=1000)
    part = (
        b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + b"\1" * 200_000 + b"\r\n--xyz--\r\n"
    )
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(part[i : i + 8192]), part[i : i + 8192])
        for i in range(0, len(part), 8192)
    )
    head = (
        b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
    )
    with running(app) as url:
        answer = raw_request(url, head, chunks + b"0\r\n\r\n")
    assert answer is not None and answer.startswith(b"HTTP/1.1 413 "), answer
    assert b"upload too large" in answer


# --- 5. the database restarts under a running server --------------------------------------------


@pytest.fixture
def restart_server() -> Iterator[EmbeddedServer]:
    """An embedded server of this test's own, so stopping it disturbs no other test."""
    with own_server("clipdb-serve-restart-") as server:
        yield server


@pytest.mark.slow
def test_database_outage_is_json_503_then_recovers(
    restart_server: EmbeddedServer,
    tiny_encoder: Any,
    tmp_path: Path,
    caplog: Any,
    monkeypatch: pytest.MonkeyPatch,
):
    from psycopg_pool import ConnectionPool

    database = Database(url=restart_server.url())
    image_id = next(iter(index_images(database, tiny_encoder, make_images(tmp_path, 3)).values()))
    pool_waits: list[float] = []  # the timeout of each wait for a pooled connection
    connection = ConnectionPool.connection

    def counted(pool: ConnectionPool, timeout: float | None = None) -> Any:
        pool_waits.append(timeout or 0.0)
        return connection(pool, timeout)

    monkeypatch.setattr(ConnectionPool, "connection", counted)
    caplog.set_level(logging.WARNING, logger="clipdb.serve")
    with running(create_app(database, encoder=tiny_encoder, pool_size=4)) as url:
        http = httpx.Client(base_url=url, timeout=30)
        for _ in range(4):  # several pooled connections, all to go stale
            assert http.get(f"/api/similar/{image_id}").status_code == 200
        stop_server(restart_server.home)
        waited = None
        for path in (f"/api/similar/{image_id}", "/api/search?text=x", "/api/health"):
            for _ in range(3):
                response = http.get(path)
                assert response.status_code == 503, response.text
                assert response.headers["content-type"] == "application/json"
                assert "Traceback" not in response.text
                if path != "/api/health":  # health answers its own status body
                    assert response.headers["retry-after"] == "2"
                # The first request finds the pool dead (one bounded wait); from then on the
                # outage is known and no request waits on the pool, each answers at once.
                waited = len(pool_waits) if waited is None else waited
                assert len(pool_waits) == waited, f"{path} waited on the pool of a dead database"
        outages = [r for r in caplog.records if "database unreachable" in r.getMessage()]
        assert len(outages) == 1  # one line per outage, not per request
        ensure_server(restart_server.home)
        assert http.get(f"/api/similar/{image_id}").status_code == 200
        assert http.get("/api/search", params={"text": "x"}).status_code == 200
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        http.close()


# --- 6. a busy port -------------------------------------------------------------------------


def test_busy_port_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code = main(["--port", str(port), "--model", TINY_MODEL, "--pretrained", "none"])
    err = capsys.readouterr().err
    assert code == 1
    assert err == f"error: cannot listen on 127.0.0.1:{port}: address already in use\n"
