"""The HTTP service under hostile or careless use (issue 22, items 1-6): bombs, tokens, slow clients, store faults,
ids and run ids, bundle values that load but fail or lie."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import struct
import zlib

import pytest
from fastapi.testclient import TestClient

import common.images
import common.inspections
from common.errors import SteelsegError
from common.images import decode_image
from common.inspections import connect, query
from deploy.export import export_bundle
from deploy.serve import Limits, create_app, is_loopback, main, read_token, running_server
from ensemble.onnx_runtime import MANIFEST, load_bundle
from ensemble.predict import build_predictor
from ensemble_helpers import image_folder, save_tiny

TOKEN = "t0ken-for-the-tests-0123456789"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A one-segmenter bundle and a 256x1600 JPEG."""
    base = tmp_path_factory.mktemp("hostile")
    images, _ = image_folder(base / "images", 1)
    cfg = {
        "checkpoints": {"segmenter": [save_tiny(base / "seg.pt", "segmenter")]},
        "tta": {"classifier": ["none"], "segmenter": ["none"]},
        "ensemble": {"gating": {"mode": "none"}},
        "postprocess": {},
        "device": "cpu",
    }
    export_bundle(build_predictor(cfg), base / "bundle", log=lambda *_: None)
    return {
        "bundle": base / "bundle",
        "jpeg": (images / "img000.jpg").read_bytes(),
        "images": images,
        "predictor": load_bundle(base / "bundle", threads=1),
    }


def _png_claiming(height: int, width: int) -> bytes:
    """A small, complete grey PNG whose header claims height x width (its data holds a few rows only)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(4 * (width + 1))))
        + chunk(b"IEND", b"")
    )


def _jpeg_claiming(jpeg: bytes, height: int, width: int) -> bytes:
    """The JPEG with its frame header (SOF0) patched to claim height x width."""
    at = jpeg.index(b"\xff\xc0") + 5
    return jpeg[:at] + struct.pack(">HH", height, width) + jpeg[at + 4 :]


def test_bombs_are_refused_from_the_header_before_decoding(bundle, monkeypatch):
    bombs = {
        "png 30000x30000": _png_claiming(30000, 30000),
        "png 10000x10000": _png_claiming(10000, 10000),
        "jpeg 30000x30000": _jpeg_claiming(bundle["jpeg"], 30000, 30000),
        "png 256x1601": _png_claiming(256, 1601),
    }
    decoded = []
    monkeypatch.setattr(common.images.cv2, "imdecode", lambda *a: decoded.append(a) or None)
    for name, data in bombs.items():
        with pytest.raises(SteelsegError, match="expected 256x1600|decompression bomb"):
            decode_image(data, name)  # every reader (training too) refuses it from the header
    assert decoded == []
    monkeypatch.undo()
    with TestClient(create_app(bundle["predictor"], max_decodes=1)) as http:
        for name, data in bombs.items():
            answer = http.post("/predict", content=data)
            assert answer.status_code in (400, 422), (name, answer.text)
            assert (
                "refused from its header" in answer.json()["detail"] or "decompression bomb" in answer.json()["detail"]
            ), (name, answer.text)
        assert http.post("/predict", content=bundle["jpeg"]).status_code == 200  # the model's size still passes
        assert http.get("/health").json()["stats"]["requests"] == 1


def test_token_guards_every_endpoint_and_health_shows_no_paths(bundle, tmp_path):
    store = tmp_path / "store.sqlite"
    with TestClient(create_app(bundle["predictor"], store=str(store), token=TOKEN)) as http:
        for path in ("/health", "/docs", "/openapi.json", "/redoc"):
            answer = http.get(path)
            assert answer.status_code == 401 and "token" in answer.json()["detail"], (path, answer.text)
            assert http.get(path, headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
        for path in ("/docs", "/openapi.json", "/redoc"):  # off when a token is required
            assert http.get(path, headers={"X-Steelseg-Token": TOKEN}).status_code == 404
        assert http.post("/predict", content=bundle["jpeg"]).status_code == 401
        answer = http.post("/predict", content=bundle["jpeg"], headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200, answer.text
        health = http.get("/health", headers={"X-Steelseg-Token": TOKEN})
        assert health.status_code == 200 and health.json()["bundle"] == "bundle"
        assert health.json()["store"] == {"state": "ok", "name": "store.sqlite", "error": None, "failures": 0}
        assert str(tmp_path) not in health.text and str(bundle["bundle"]) not in health.text


def test_non_loopback_bind_needs_a_token_never_from_argv(bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("STEELSEG_TOKEN", raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::")
    short = tmp_path / "short"
    short.write_text("abc\n")
    cases = [
        (["--host", "0.0.0.0"], "--host 0.0.0.0: reachable from other machines"),
        (["--token", TOKEN], "--token: a token on the command line is visible"),
        (["--token-file", str(short)], f"--token-file {short}: the token must be 16-4096"),
        (["--token-file", str(tmp_path / "none")], f"--token-file {tmp_path / 'none'}: cannot read it"),
    ]
    for argv, message in cases:
        assert main([str(bundle["bundle"]), "--port", "0", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1, err
    good = tmp_path / "token"
    good.write_text(TOKEN + "\n")
    assert read_token(good) == TOKEN and read_token(None, {"STEELSEG_TOKEN": TOKEN}) == TOKEN
    assert read_token(None, {}) is None
    with pytest.raises(SteelsegError, match="environment variable STEELSEG_TOKEN: the token must be"):
        read_token(None, {"STEELSEG_TOKEN": "has spaces in the token value"})


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """(whether the server closed the connection within ``seconds``, what it sent before)."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
        return True, received
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        return True, received


def test_slow_clients_are_closed(bundle):
    limits = Limits(header_timeout=1.0, body_timeout=1.0, keep_alive=1.0, max_connections=20)
    with running_server(create_app(bundle["predictor"], body_timeout=1.0), limits=limits) as url:
        host, port = url.removeprefix("http://").split(":")
        cases = {
            "half-sent headers": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le",
            "nothing sent": b"",
            "trickled body": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + bytes(10),
            "trickled body to /health": b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nab",
        }
        socks = {}
        for name, data in cases.items():
            socks[name] = socket.create_connection((host, int(port)))
            socks[name].sendall(data)
        for name, sock in socks.items():
            with sock:
                closed, received = _closed_within(sock, 15.0)
                assert closed, f"{name}: still open after 15 s"
                if name == "trickled body":
                    assert received.startswith(b"HTTP/1.1 408") and b"not received within 1 s" in received, received


def test_store_locked_or_full_answers_503_with_the_prediction(bundle, tmp_path, monkeypatch):
    store = tmp_path / "store.sqlite"
    connect(store).close()
    with TestClient(create_app(bundle["predictor"], store=str(store), run_id="live", store_timeout=0.3)) as http:
        locker = sqlite3.connect(str(store), isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # another process holding the store
        answer = http.post("/predict", content=bundle["jpeg"], params={"image_id": "locked.jpg"})
        assert answer.status_code == 503, answer.text
        body = answer.json()
        assert "store.sqlite: database is locked" in body["detail"] and "not stored" in body["detail"]
        assert body["image_id"] == "locked.jpg" and [c["class_id"] for c in body["classes"]] == [1, 2, 3, 4]
        assert body["stored"] is False and answer.headers["retry-after"] == "5" and str(tmp_path) not in answer.text
        health = http.get("/health").json()
        assert health["status"] == "degraded" and health["store"]["state"] == "degraded"
        assert health["store"]["failures"] == 1 and "locked" in health["store"]["error"]
        overlay = http.post("/overlay", content=bundle["jpeg"], params={"image_id": "locked2.jpg"})
        assert overlay.status_code == 503 and overlay.json()["overlay_png"]
        locker.execute("ROLLBACK")
        locker.close()
        answer = http.post("/predict", content=bundle["jpeg"], params={"image_id": "after.jpg"})
        assert answer.status_code == 200 and answer.json()["stored"] is True
        assert http.get("/health").json()["status"] == "ok"

        def full_disk(conn, *args, **kwargs):  # what append_rows raises when SQLite reports a full disk
            raise common.inspections.InspectionStoreError(
                f"{store}: cannot store the rows"
            ) from sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(common.inspections, "append_rows", full_disk)
        answer = http.post("/predict", content=bundle["jpeg"], params={"image_id": "full.jpg"})
        assert answer.status_code == 503 and "database or disk is full" in answer.json()["detail"], answer.text
        assert http.get("/health").json()["store"]["state"] == "degraded"
    assert set(query(connect(store))["image_id"]) == {"after.jpg"}  # nothing half-stored


BAD_IDS = [
    "..",
    ".",
    "a\nb.jpg",
    "a\x00b.jpg",
    "evil\u202egpj.exe",
    "x" * 20_000,
    " a.jpg",
    "../x.jpg",
    "a/b.jpg",
    "C:\\x.jpg",
    "a\rb.jpg",
    "a\u2028b.jpg",
    "\t",
]


def test_one_id_rule_for_every_entry_point(bundle, tmp_path, capsys):
    with TestClient(create_app(bundle["predictor"])) as http:
        for image_id in BAD_IDS:
            answer = http.post("/predict", content=bundle["jpeg"], params={"image_id": image_id})
            assert answer.status_code == 422 and answer.json()["detail"].startswith("query image_id: "), (
                image_id[:20],
                answer.text[:200],
            )
            assert len(answer.text) < 2000
        answer = http.post("/predict", files={"file": ("..", bundle["jpeg"], "image/jpeg")})
        assert answer.status_code == 422 and "multipart file name" in answer.json()["detail"], answer.text
        answer = http.post("/predict", content=bundle["jpeg"], params={"overlay": "maybe"})
        assert answer.status_code == 422 and answer.json()["detail"].startswith("query overlay: "), answer.text
        assert http.get("/health").json()["stats"]["requests"] == 0
    with running_server(create_app(bundle["predictor"])) as url:  # a 20,000-character id through uvicorn too
        import httpx

        answer = httpx.post(f"{url}/predict", content=bundle["jpeg"], params={"image_id": "y" * 20_000}, timeout=60)
        assert answer.status_code == 422 and "ImageId of 20000 characters" in answer.json()["detail"]
    from dashboard.importer import main as importer_main

    submission = tmp_path / "sub.csv"
    submission.write_text("ImageId,ClassId,EncodedPixels\na.jpg,1,1 3\n")
    for run_id in ['=HYPERLINK("http://x")<b>', "-cmd", "", "a b", "x" * 81, "a\nb"]:
        assert main([str(bundle["bundle"]), "--port", "0", f"--run-id={run_id}"]) == 2
        assert capsys.readouterr().err.startswith("error: --run-id: run id "), run_id
        assert importer_main([str(tmp_path / "db.sqlite"), "--submission", str(submission), f"--run-id={run_id}"]) == 2
        assert "--run-id: run id " in capsys.readouterr().err
    assert not (tmp_path / "db.sqlite").exists()
    with pytest.raises(SteelsegError, match="run id"):
        create_app(bundle["predictor"], run_id="<b>")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"weight": 1e308}, "member segmenter_0: weight 1e+308 must be 0 or between"),
        ({"weight": float("nan")}, "member segmenter_0: weight nan must be a finite number"),
        ({"weight": float("inf")}, "member segmenter_0: weight inf must be a finite number"),
        ({"weight": -1.0}, "member segmenter_0: weight -1.0 must be 0 or between"),
        ({"weight": 1e-320}, "must be 0 or between"),
        ({"weight": "1"}, "weight '1' must be a finite number"),
        ({"weight": 0}, "members[].weight: the masks members ['segmenter_0'] all have weight 0"),
        (
            {"preprocess": {"channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "size": [128, 800]}},
            "members[0] (segmenter_0): preprocess (channels 3, size [128, 800]) does not match the ONNX graph input",
        ),
        (
            {"preprocess": {"channels": 1, "mean": [0.5], "std": [0.25], "size": None}},
            "members[0] (segmenter_0): preprocess (channels 1, size [256, 1600]) does not match",
        ),
    ],
)
def test_bundle_values_that_load_but_fail_or_lie_are_refused_at_load(bundle, tmp_path, capsys, change, message):
    folder = tmp_path / "bundle"
    shutil.copytree(bundle["bundle"], folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["members"][0].update(change)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SteelsegError) as caught:
        load_bundle(folder, threads=1)
    assert str(folder / MANIFEST) in str(caught.value) and message in str(caught.value), str(caught.value)
    assert main([str(folder), "--load-test", "2", "--images", str(bundle["images"]), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_load_test_counts_refused_connections_instead_of_crashing():
    from deploy.serve import load_test

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    report = load_test(f"http://127.0.0.1:{port}", [b"x"], requests=3, concurrency=1, max_seconds=10)
    assert report["requests"] == 3 and report["errors"] == 3
