"""HTTP serving of a bundle, through a real server on 127.0.0.1 and a real HTTP client (httpx)."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from common.inspections import connect, query
from common.rle import decode
from deploy.export import export_bundle
from deploy.serve import create_app, load_test, main, running_server
from ensemble.onnx_runtime import load_bundle
from ensemble.predict import build_predictor
from ensemble_helpers import image_folder, save_tiny

IDS = [f"img{i:03d}.jpg" for i in range(3)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A two-member bundle (tiny classifier at 96x600 + tiny segmenter, veto gating) and its images."""
    base = tmp_path_factory.mktemp("serve")
    images, _ = image_folder(base / "images", 3)
    cfg = {
        "checkpoints": {
            "classifier": [save_tiny(base / "cls.pt", "classifier", size=[96, 600])],
            "segmenter": [save_tiny(base / "seg.pt", "segmenter")],
        },
        "tta": {"classifier": ["none"], "segmenter": ["none", "hflip"]},
        "ensemble": {"gating": {"mode": "veto"}},
        "postprocess": {"classifier_threshold": [0.1, 0.1, 0.1, 0.1]},
        "device": "cpu",
    }
    export_bundle(build_predictor(cfg), base / "bundle", log=lambda *_: None)
    return {"bundle": base / "bundle", "images": images, "base": base}


def serve(bundle, **kwargs):
    return running_server(create_app(load_bundle(bundle["bundle"], threads=1), **kwargs))


def test_predict_overlay_health(bundle, tmp_path):
    expected = load_bundle(bundle["bundle"], threads=1).predict_files([bundle["images"] / i for i in IDS])
    data = (bundle["images"] / IDS[0]).read_bytes()
    with serve(bundle) as url, httpx.Client(base_url=url, timeout=60) as http:
        answer = http.post("/predict", content=data, params={"image_id": "a.jpg", "overlay": "true"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["image_id"] == "a.jpg" and body["batch"] == 1 and body["stored"] is False
        assert [c["class_id"] for c in body["classes"]] == [1, 2, 3, 4]
        for c, mask in zip(body["classes"], expected[0].masks):
            np.testing.assert_array_equal(decode(c["rle"]), mask)  # the server gives the runtime's masks
            assert c["area"] == int(mask.sum())
            assert c["max_probability"] is None or 0 <= c["max_probability"] <= 1
            assert 0 <= c["classifier_probability"] <= 1
        overlay = cv2.imdecode(np.frombuffer(base64.b64decode(body["overlay_png"]), np.uint8), cv2.IMREAD_COLOR)
        assert overlay.shape == (256, 1600, 3)
        # multipart upload: the file name becomes the image id
        files = {"file": (IDS[1], (bundle["images"] / IDS[1]).read_bytes(), "image/jpeg")}
        answer = http.post("/predict", files=files)
        assert answer.status_code == 200 and answer.json()["image_id"] == IDS[1]
        assert [c["rle"] for c in answer.json()["classes"]] == [r for _, _, r in expected[1].rows()]
        png = http.post("/overlay", content=data)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_COLOR).shape == (256, 1600, 3)
        health = http.get("/health").json()
        assert health["status"] == "ok" and health["members"] == ["classifier_0", "segmenter_0"]
        assert health["stats"]["requests"] == 3 and health["rules"]["gating"] == "veto"


def test_bad_requests_get_clear_4xx(bundle, tmp_path):
    small = cv2.imencode(".png", np.zeros((100, 200), np.uint8))[1].tobytes()
    jpeg = (bundle["images"] / IDS[0]).read_bytes()
    with serve(bundle, max_bytes=200_000) as url, httpx.Client(base_url=url, timeout=60) as http:
        cases = [
            (http.post("/predict", content=b"hello, not an image"), 400, "not a JPEG or PNG"),
            (http.post("/predict", content=jpeg[: len(jpeg) // 2]), 400, "truncated JPEG"),
            (http.post("/predict", content=b""), 400, "empty body"),
            (http.post("/predict", content=small), 422, "image is 100x200"),
            (http.post("/predict", content=jpeg, params={"image_id": "../../etc/x.jpg"}), 422, "plain file name"),
            (http.post("/predict", content=b"\x89PNG" + bytes(300_000)), 413, "over the limit of 200000 bytes"),
            (http.post("/predict", files={"other": ("a.jpg", jpeg, "image/jpeg")}), 400, "no file field"),
        ]
        # a chunked upload has no Content-Length: the limit is enforced while reading
        chunked = http.post("/predict", content=iter([bytes(100_000)] * 3))
        cases.append((chunked, 413, "over the limit"))
        for answer, status, message in cases:
            assert answer.status_code == status, (status, answer.text)
            assert message in answer.json()["detail"], answer.text
        assert http.get("/health").json()["stats"]["requests"] == 0  # nothing bad reached the model


def test_concurrent_requests_are_batched_and_stored(bundle, tmp_path):
    store = tmp_path / "store.sqlite"
    payloads = [(bundle["images"] / i).read_bytes() for i in IDS]
    answers: list[httpx.Response] = []
    with serve(bundle, max_batch=4, max_wait_ms=300, store=str(store), run_id="live") as url:

        def send(k: int) -> None:
            with httpx.Client(base_url=url, timeout=120) as http:
                answers.append(http.post("/predict", content=payloads[k % 3], params={"image_id": f"c{k}.jpg"}))

        threads = [threading.Thread(target=send, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = httpx.get(f"{url}/health").json()["stats"]
    assert sorted(a.status_code for a in answers) == [200] * 8
    assert stats["requests"] == 8 and stats["largest_batch"] > 1 and stats["batches"] < 8
    assert max(a.json()["batch"] for a in answers) == stats["largest_batch"]
    stored = query(connect(store), source="pred:live")
    assert set(stored["image_id"]) == {f"c{k}.jpg" for k in range(8)} and set(stored["run_id"]) == {"live"}


def test_load_test_and_cli(bundle, capsys):
    with serve(bundle, max_batch=4) as url:
        report = load_test(url, [(bundle["images"] / IDS[0]).read_bytes()], requests=6, concurrency=3, max_seconds=60)
    assert report["requests"] == 6 and report["errors"] == 0 and report["p95_s"] >= report["p50_s"] > 0
    assert (
        main(
            [
                str(bundle["bundle"]),
                "--load-test",
                "6",
                "--concurrency",
                "2",
                "--images",
                str(bundle["images"]),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "requests/s" in out and "p95" in out and "0 errors" in out
    assert main([str(bundle["base"] / "missing")]) == 2
    assert "not a bundle folder" in capsys.readouterr().err
    assert main([str(bundle["bundle"]), "--load-test", "3", "--images", str(Path("/nonexistent"))]) == 2
