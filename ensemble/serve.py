"""``python -m ensemble.serve BUNDLE``: a deploy bundle behind an HTTP API (FastAPI + uvicorn, 127.0.0.1 by default).

Endpoints:

* ``POST /predict`` with the image file as the body (raw bytes, or multipart field ``file``); query
  ``image_id=`` (default: the multipart file name, else ``upload-<sha1>.png``) and ``overlay=true``.
  Answer: ``{"image_id", "segmented", "defects", "classes": [{"class_id", "rle", "area", "max_probability",
  "classifier_probability"}], "batch", "stored"}`` plus ``"overlay_png"`` (base64) with ``overlay=true``.
* ``POST /overlay``: the same input, answered with the image and the predicted contours as a PNG.
* ``GET /health``: the bundle, its members and rules, and the request/batch counters.

Bad input gets a 4xx with one line saying what is wrong: 413 over ``--max-mb``, 400 for a body that is not a
complete JPEG/PNG, 422 for an image that is not 256x1600 or an image id that is a path. Concurrent requests
are micro-batched: the model thread takes up to ``--max-batch`` queued images, waiting at most
``--max-wait-ms`` after the first, and runs them as one ONNX Runtime batch. With ``--store`` every prediction
is appended to the inspections store (``common.inspections``; source ``pred:<run-id>``), so a dashboard on
that store shows it.

``--load-test N --images DIR`` serves on a free 127.0.0.1 port, sends N requests from ``--concurrency``
clients (stopping after ``--load-seconds`` at the latest), prints requests/s and latency percentiles and exits.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from starlette.formparsers import MultiPartException, MultiPartParser

from common.constants import IMAGE_SHAPE, LONG_COLUMNS
from common.errors import ImageError, SteelsegError
from common.images import decode_image
from ensemble.core import ImagePrediction
from ensemble.onnx_runtime import OnnxPredictor, load_bundle

__all__ = ["COUNTERS", "ServeError", "MicroBatcher", "create_app", "running_server", "load_test", "main"]

MiB = 1 << 20
COUNTERS = ("requests", "batches", "largest_batch", "stored")  # what /health reports of the model thread


class ServeError(SteelsegError, ValueError):
    """Server options that cannot work (port, sizes, a missing image folder for the load test)."""


@dataclass
class _Job:
    rgb: np.ndarray
    image_id: str
    future: asyncio.Future


@dataclass
class MicroBatcher:
    """Queues decoded images and runs them through the predictor in batches on one model thread."""

    predictor: OnnxPredictor
    max_batch: int = 8
    max_wait_s: float = 0.02
    store: str | None = None
    run_id: str = "serve"
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    def __post_init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="steelseg-model")
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._conn = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    async def submit(self, rgb: np.ndarray, image_id: str) -> tuple[ImagePrediction, int]:
        """(the image's prediction, the size of the batch it ran in)."""
        assert self._queue is not None, "MicroBatcher.start() was not awaited"
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(rgb, image_id, future))
        return await future

    async def _collect(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(jobs) < self.max_batch:
            try:
                jobs.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            try:
                results = await loop.run_in_executor(self._executor, self._predict, jobs)
            except Exception as exc:  # handed to every waiting request (a 500 with its traceback in the log)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, result in zip(jobs, results):
                if not job.future.done():
                    job.future.set_result((result, len(jobs)))

    def _predict(self, jobs: list[_Job]) -> list[ImagePrediction]:
        """Runs on the model thread: one batch through the predictor, then the store append."""
        results = self.predictor.predict_images([j.rgb for j in jobs], [j.image_id for j in jobs])
        self.stats["batches"] += 1
        self.stats["requests"] += len(jobs)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(jobs))
        if self.store:
            self._append(results)
        return results

    def _append(self, results: list[ImagePrediction]) -> None:
        import pandas as pd

        from common.inspections import append_rows, connect

        if self._conn is None:  # created on the model thread, the only one that uses it
            self._conn = connect(self.store)
        rows = pd.DataFrame([row for r in results for row in r.rows()], columns=LONG_COLUMNS)
        self.stats["stored"] += append_rows(self._conn, rows, f"pred:{self.run_id}", self.run_id,
                                         image_ids=[r.image_id for r in results])

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _image_id(requested: str | None, filename: str | None, data: bytes) -> str:
    """The id a prediction is stored under: as asked, else the upload's file name, else a content hash."""
    image_id = requested or (Path(filename).name if filename else f"upload-{hashlib.sha1(data).hexdigest()[:12]}.png")
    if not image_id or Path(image_id).name != image_id or "\\" in image_id:
        raise ValueError(f"image_id {image_id!r} must be a plain file name, not a path")
    return image_id


def create_app(predictor: OnnxPredictor, max_batch: int = 8, max_wait_ms: float = 20.0, max_bytes: int = 8 * MiB,
               store: str | None = None, run_id: str = "serve") -> FastAPI:
    """The FastAPI application serving ``predictor`` (see the module docstring for the endpoints)."""
    batcher = MicroBatcher(predictor, max_batch, max_wait_ms / 1000.0, store, run_id)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="steelseg", summary="Severstal steel defect segmentation (ONNX bundle)", lifespan=lifespan)
    app.state.batcher = batcher

    async def read_body(request: Request) -> tuple[bytes, str | None]:
        """The image bytes (raw body or multipart field 'file') and the upload's file name, within the size limit."""
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise HTTPException(413, f"request body of {int(length)} bytes is over the limit of {max_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise HTTPException(413, f"request body is over the limit of {max_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return body, None

        async def replay():
            yield body

        try:
            form = await MultiPartParser(request.headers, replay(), max_files=1, max_fields=10,
                                         max_part_size=max_bytes).parse()
        except MultiPartException as exc:
            raise HTTPException(400, f"bad multipart body: {exc.message}") from exc
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "multipart body has no file field named 'file'")
        return await upload.read(), upload.filename

    async def predict_upload(request: Request, image_id: str | None) -> tuple[np.ndarray, ImagePrediction, int]:
        data, filename = await read_body(request)
        if not data:
            raise HTTPException(400, "empty body: send the image file (JPEG or PNG) as the body or as field 'file'")
        try:
            name = _image_id(image_id, filename, data)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        try:
            rgb = await run_in_threadpool(decode_image, data, name, 3, None)
        except ImageError as exc:
            raise HTTPException(400, str(exc)) from exc
        if rgb.shape[:2] != IMAGE_SHAPE:
            raise HTTPException(422, f"{name}: image is {rgb.shape[0]}x{rgb.shape[1]}, the models take "
                                     f"{IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} steel images")
        result, batch = await batcher.submit(rgb, name)
        return rgb, result, batch

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "bundle": str(predictor.folder), "members": [m.name for m in predictor.members],
                "rules": predictor.rules.to_dict(), "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                "max_bytes": max_bytes, "store": store, "stats": dict(batcher.stats)}

    @app.post("/predict")
    async def predict(request: Request, image_id: str | None = None, overlay: bool = False) -> dict[str, Any]:
        rgb, result, batch = await predict_upload(request, image_id)
        answer = {**result.to_dict(), "batch": batch, "stored": bool(store)}
        if overlay:
            answer["overlay_png"] = base64.b64encode(await run_in_threadpool(_overlay_png, rgb, result)).decode()
        return answer

    @app.post("/overlay")
    async def overlay(request: Request, image_id: str | None = None) -> Response:
        rgb, result, _ = await predict_upload(request, image_id)
        png = await run_in_threadpool(_overlay_png, rgb, result)
        return Response(png, media_type="image/png", headers={"X-Defects": ",".join(map(str, result.to_dict()["defects"]))})

    return app


def _overlay_png(rgb: np.ndarray, result: ImagePrediction) -> bytes:
    """PNG of the image with the predicted defect contours in their class colours (``analysis.viz``)."""
    from common.viz import contour_overlay, png_bytes, stack_masks

    return png_bytes(contour_overlay(rgb, stack_masks(result.masks)))


@contextmanager
def running_server(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a background thread for the block; yields its base URL (port 0: a free one)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="steelseg-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ServeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def load_test(url: str, payloads: Sequence[bytes], requests: int = 100, concurrency: int = 4,
              max_seconds: float = 60.0) -> dict[str, float]:
    """POST ``requests`` images (cycling through ``payloads``) from ``concurrency`` threads, stopping at
    ``max_seconds``; requests/s, latency percentiles (s) and the count of non-200 answers."""
    import httpx

    if not payloads:
        raise ServeError("load test: no images to send")
    lock, sent, latencies, errors = threading.Lock(), [0], [], [0]
    start = time.perf_counter()
    deadline = start + max_seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=max_seconds) as http:
            while True:
                with lock:
                    if sent[0] >= requests or time.perf_counter() > deadline:
                        return
                    index = sent[0]
                    sent[0] += 1
                t0 = time.perf_counter()
                answer = http.post("/predict", content=payloads[index % len(payloads)],
                                   params={"image_id": f"load-{index:05d}.png"})
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    errors[0] += answer.status_code != 200

    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    seconds = time.perf_counter() - start
    lat = np.asarray(latencies) if latencies else np.zeros(1)
    return {"requests": len(latencies), "errors": errors[0], "seconds": seconds,
            "requests_per_s": len(latencies) / seconds, "p50_s": float(np.percentile(lat, 50)),
            "p95_s": float(np.percentile(lat, 95)), "max_s": float(lat.max())}


def _run_load_test(app: Any, images: Path, requests: int, concurrency: int, seconds: float) -> None:
    from common.dataset import list_images

    files = [images / name for name in list_images(images)][:64]
    payloads = [f.read_bytes() for f in files]
    with running_server(app) as url:
        load_test(url, payloads[:1], 2, 1, seconds)  # warm-up: sessions and code paths
        report = load_test(url, payloads, requests, concurrency, seconds)
    print(f"load test on {url} ({len(payloads)} distinct images, concurrency {concurrency}): "
          f"{report['requests']:.0f} requests in {report['seconds']:.1f} s = {report['requests_per_s']:.2f} requests/s, "
          f"latency p50 {report['p50_s'] * 1000:.0f} ms, p95 {report['p95_s'] * 1000:.0f} ms, "
          f"max {report['max_s'] * 1000:.0f} ms, {report['errors']:.0f} errors")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ensemble.serve", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="bundle folder written by python -m ensemble.export")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=8, help="images per model batch at most")
    parser.add_argument("--max-wait-ms", type=float, default=20.0, help="how long a batch waits for more images")
    parser.add_argument("--max-mb", type=float, default=8.0, help="request body size limit in MiB")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    parser.add_argument("--thresholds", type=Path, default=None, help="thresholds file replacing the bundle's")
    parser.add_argument("--store", default=None, help="inspections store (SQLite) to append predictions to")
    parser.add_argument("--run-id", default="serve", help="run id of the stored predictions (source pred:<run-id>)")
    parser.add_argument("--load-test", type=int, default=0, metavar="N", help="send N requests to a local server, "
                        "print requests/s and latency, exit")
    parser.add_argument("--images", type=Path, default=None, help="image folder the load test sends from")
    parser.add_argument("--concurrency", type=int, default=4, help="load test clients")
    parser.add_argument("--load-seconds", type=float, default=120.0, help="load test time limit")
    args = parser.parse_args(argv)
    try:
        if args.max_batch < 1 or args.max_wait_ms < 0 or args.max_mb <= 0:
            raise ServeError("--max-batch must be >= 1, --max-wait-ms >= 0 and --max-mb > 0")
        if args.load_test and not (args.images and args.images.is_dir()):
            raise ServeError(f"--images: image folder {args.images} not found (the load test sends its images)")
        predictor = load_bundle(args.bundle, args.threads, thresholds=args.thresholds)
        app = create_app(predictor, args.max_batch, args.max_wait_ms, int(args.max_mb * MiB), args.store, args.run_id)
        print(predictor.describe())
        if args.load_test:
            _run_load_test(app, args.images, args.load_test, args.concurrency, args.load_seconds)
            return 0
    except SteelsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    print(f"serving on http://{args.host}:{args.port} (POST /predict, POST /overlay, GET /health)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
