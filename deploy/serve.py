"""``python -m deploy.serve BUNDLE``: a deploy bundle behind an HTTP API (FastAPI + uvicorn, 127.0.0.1 by default).

Endpoints:

* ``POST /predict`` with the image file as the body (raw bytes, or multipart field ``file``); query
  ``image_id=`` (default: the multipart file name, else ``upload-<sha1>.png``) and ``overlay=true``.
  Answer: ``{"image_id", "segmented", "defects", "classes": [{"class_id", "rle", "area", "max_probability",
  "classifier_probability"}], "batch", "stored"}`` plus ``"overlay_png"`` (base64) with ``overlay=true``.
* ``POST /overlay``: the same input, answered with the image and the predicted contours as a PNG.
* ``GET /health``: the bundle's folder name, its members and rules, the request/batch counters and the store's
  state (``ok``, ``degraded`` with the last failure, or ``off``); no absolute paths.

Bad input gets a 4xx with one line saying what is wrong: 413 over ``--max-mb``, 400 for a body that is not a
complete JPEG/PNG, 422 for an image whose header is not 256x1600 (refused before decoding: no decompression bombs)
or an image id that is not a plain file name (``common.annotations.check_image_id``), 408 for a body not received
within ``--body-timeout``, 401 without the token. At most ``--max-decodes`` images are decoded at once.

Beyond loopback (``--host 0.0.0.0``) every request needs the token (``Authorization: Bearer <token>`` or
``X-Steelseg-Token: <token>``), read from ``--token-file`` or the environment variable ``STEELSEG_TOKEN``, never
from the command line; the server refuses to start without one, and ``/docs``, ``/redoc`` and ``/openapi.json``
are off whenever a token is required. Slow clients: a connection must send its request headers within
``--header-timeout`` seconds, idle keep-alive connections close after ``--keep-alive`` seconds, at most
``--max-connections`` connections are served at once (503 beyond). Concurrent requests
are micro-batched: the model thread takes up to ``--max-batch`` queued images, waiting at most
``--max-wait-ms`` after the first, and runs them as one ONNX Runtime batch. With ``--store`` every prediction
is appended to the inspections store (``common.inspections``; source ``pred:<run-id>``), so a dashboard on
that store shows it. A store that stays locked or full for ``--store-timeout`` seconds answers 503 with a one-line
reason and the prediction (not stored), and ``/health`` says ``degraded`` until a write succeeds again.

``--load-test N --images DIR`` serves on a free 127.0.0.1 port, sends N requests from ``--concurrency``
clients (stopping after ``--load-seconds`` at the latest), prints requests/s and latency percentiles and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import ipaddress
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.formparsers import MultiPartException, MultiPartParser

from common.annotations import check_image_id, check_run_id
from common.constants import IMAGE_SHAPE, LONG_COLUMNS
from common.errors import AnnotationError, ImageError, SteelsegError, command
from common.images import check_complete, decode_image, header_size
from common.io import check_writable
from ensemble.core import ImagePrediction
from ensemble.onnx_runtime import OnnxPredictor, load_bundle

__all__ = [
    "COUNTERS",
    "TOKEN_ENV",
    "ServeError",
    "Limits",
    "MicroBatcher",
    "create_app",
    "server_config",
    "running_server",
    "load_test",
    "check_port",
    "is_loopback",
    "read_token",
    "main",
]

MiB = 1 << 20
COUNTERS = ("requests", "batches", "largest_batch", "stored", "store_failures")  # what /health reports
TOKEN_ENV = "STEELSEG_TOKEN"
_TOKEN = re.compile(r"[\x21-\x7e]{16,4096}")  # printable ASCII without spaces: it travels in a header


class ServeError(SteelsegError, ValueError):
    """Server options that cannot work (port, sizes, a missing image folder for the load test)."""


@dataclass(frozen=True)
class Limits:
    """Connection limits against slow or stalled clients (seconds; connections served at once)."""

    header_timeout: float = 10.0  # a connection's request headers must be complete within this
    body_timeout: float = 30.0  # a request's body must be received within this (408, connection closed)
    keep_alive: float = 5.0  # idle keep-alive connections close after this
    max_connections: int = 100  # uvicorn answers 503 beyond this many connections/requests
    max_header_bytes: int = 64 * 1024  # h11: request line + headers at most this (a 20,000-character id fits)


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
    store_timeout: float = 2.0
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    def __post_init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="steelseg-model")
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._conn = None
        self.store_error: str | None = None  # the last store failure, until a write succeeds again

    def store_health(self) -> dict[str, Any]:
        """The store's state for /health: off, ok, or degraded with the last failure (file name only, no path)."""
        if not self.store:
            return {"state": "off"}
        return {
            "state": "degraded" if self.store_error else "ok",
            "name": Path(self.store).name,
            "error": self.store_error,
            "failures": self.stats["store_failures"],
        }

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    async def submit(self, rgb: np.ndarray, image_id: str) -> tuple[ImagePrediction, int, str | None]:
        """(the image's prediction, the size of the batch it ran in, why it was not stored or None)."""
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
                results, store_error = await loop.run_in_executor(self._executor, self._predict, jobs)
            except Exception as exc:  # handed to every waiting request (a 500 with its traceback in the log)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, result in zip(jobs, results):
                if not job.future.done():
                    job.future.set_result((result, len(jobs), store_error))

    def _predict(self, jobs: list[_Job]) -> tuple[list[ImagePrediction], str | None]:
        """Runs on the model thread: one batch through the predictor, then the store append; (results, why
        they were not stored or None)."""
        results = self.predictor.predict_images([j.rgb for j in jobs], [j.image_id for j in jobs])
        self.stats["batches"] += 1
        self.stats["requests"] += len(jobs)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(jobs))
        return results, (self._append(results) if self.store else None)

    def _append(self, results: list[ImagePrediction]) -> str | None:
        """Store the batch, retrying a locked or full store for up to ``store_timeout`` s (each try is one
        transaction: a failed one stores nothing, so a retry never duplicates); None, or the failure."""
        import pandas as pd

        from common.inspections import InspectionStoreError, append_rows, connect

        rows = pd.DataFrame([row for r in results for row in r.rows()], columns=LONG_COLUMNS)
        deadline = time.monotonic() + self.store_timeout
        while True:
            try:
                if self._conn is None:  # created on the model thread, the only one that uses it
                    self._conn = connect(self.store, timeout=max(0.05, min(1.0, deadline - time.monotonic())))
                self.stats["stored"] += append_rows(
                    self._conn, rows, f"pred:{self.run_id}", self.run_id, image_ids=[r.image_id for r in results]
                )
                self.store_error = None
                return None
            except InspectionStoreError as exc:
                self._close()
                if time.monotonic() >= deadline:
                    self.stats["store_failures"] += 1
                    self.store_error = _store_reason(exc, Path(self.store).name)
                    return self.store_error
                time.sleep(0.05)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _store_reason(exc: Exception, name: str) -> str:
    """One line on a store failure naming the store's file name only (answers and /health show no paths)."""
    cause = exc.__cause__
    detail = str(cause) if cause is not None and not isinstance(cause, OSError) else type(cause or exc).__name__
    return f"inspections store {name}: {detail}"


def _image_id(requested: str | None, filename: str | None, data: bytes) -> str:
    """The id a prediction is stored under: as asked, else the upload's file name, else a content hash; the one
    ImageId rule (``check_image_id``) of every entry point."""
    if requested is not None:
        return check_image_id(requested, "query image_id")
    if filename:
        return check_image_id(Path(filename).name, "multipart file name")
    return f"upload-{hashlib.sha1(data).hexdigest()[:12]}.png"


class TokenGate:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <token>`` or ``X-Steelseg-Token``."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token.encode()

    def _allowed(self, headers: list[tuple[bytes, bytes]]) -> bool:
        for key, value in headers:
            given = (
                value[7:].strip()
                if key == b"authorization" and value[:7].lower() == b"bearer "
                else value.strip()
                if key == b"x-steelseg-token"
                else None
            )
            if given is not None and hmac.compare_digest(given, self.token):
                return True
        return False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self._allowed(scope.get("headers", [])):
            response = JSONResponse(
                {
                    "detail": "missing or wrong token: send 'Authorization: Bearer <token>' or "
                    "'X-Steelseg-Token: <token>'"
                },
                401,
                headers={"WWW-Authenticate": "Bearer", "Connection": "close"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(
    predictor: OnnxPredictor,
    max_batch: int = 8,
    max_wait_ms: float = 20.0,
    max_bytes: int = 8 * MiB,
    store: str | None = None,
    run_id: str = "serve",
    token: str | None = None,
    max_decodes: int = 4,
    body_timeout: float = 30.0,
    store_timeout: float = 2.0,
) -> FastAPI:
    """The FastAPI application serving ``predictor`` (see the module docstring for the endpoints); ``token``:
    required of every request (and the API docs off)."""
    batcher = MicroBatcher(
        predictor, max_batch, max_wait_ms / 1000.0, store, check_run_id(run_id, "--run-id"), store_timeout
    )
    decodes = asyncio.Semaphore(max_decodes)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    docs = {} if token is None else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(
        title="steelseg", summary="Severstal steel defect segmentation (ONNX bundle)", lifespan=lifespan, **docs
    )
    app.state.batcher = batcher
    if token is not None:
        app.add_middleware(TokenGate, token=token)

    @app.exception_handler(RequestValidationError)
    async def one_line_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = " ".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid value')}"}, 422)

    async def read_stream(request: Request) -> bytes:
        """The raw body within the size limit and ``body_timeout`` (a trickling client gets 408 and is closed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + body_timeout
        chunks, size = [], 0
        stream = request.stream().__aiter__()
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - loop.time()))
            except StopAsyncIteration:
                return b"".join(chunks)
            except asyncio.TimeoutError:
                raise HTTPException(
                    408,
                    f"request body not received within {body_timeout:g} s; send it at once",
                    headers={"Connection": "close"},
                ) from None
            size += len(chunk)
            if size > max_bytes:
                raise HTTPException(
                    413, f"request body is over the limit of {max_bytes} bytes", headers={"Connection": "close"}
                )
            chunks.append(chunk)

    async def read_body(request: Request) -> tuple[bytes, str | None]:
        """The image bytes (raw body or multipart field 'file') and the upload's file name, within the size limit."""
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise HTTPException(
                413,
                f"request body of {int(length)} bytes is over the limit of {max_bytes} bytes",
                headers={"Connection": "close"},
            )
        body = await read_stream(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return body, None

        async def replay():
            yield body

        try:
            form = await MultiPartParser(
                request.headers, replay(), max_files=1, max_fields=10, max_part_size=max_bytes
            ).parse()
        except MultiPartException as exc:
            raise HTTPException(400, f"bad multipart body: {exc.message}") from exc
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "multipart body has no file field named 'file'")
        return await upload.read(), upload.filename

    async def predict_upload(
        request: Request, image_id: str | None
    ) -> tuple[np.ndarray, ImagePrediction, int, str | None]:
        data, filename = await read_body(request)
        if not data:
            raise HTTPException(400, "empty body: send the image file (JPEG or PNG) as the body or as field 'file'")
        try:
            name = _image_id(image_id, filename, data)
        except AnnotationError as exc:
            raise HTTPException(422, str(exc)) from exc
        try:
            check_complete(data, name)
            height, width = header_size(data, name)
        except ImageError as exc:
            raise HTTPException(400, str(exc)) from exc
        if (height, width) != IMAGE_SHAPE:  # refused from the header: a decompression bomb is never decoded
            raise HTTPException(
                422,
                f"{name}: image is {height}x{width}, the models take "
                f"{IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} steel images (refused from its header)",
            )
        try:
            async with decodes:  # at most max_decodes images decoded at once, each 256x1600 by its header
                rgb = await run_in_threadpool(decode_image, data, name, 3, IMAGE_SHAPE)
        except ImageError as exc:
            raise HTTPException(400, str(exc)) from exc
        del data
        result, batch, store_error = await batcher.submit(rgb, name)
        return rgb, result, batch, store_error

    def answered(answer: dict[str, Any], store_error: str | None) -> dict[str, Any] | JSONResponse:
        """The answer, or a 503 carrying it when the store failed (the prediction is not lost, only not stored)."""
        if store_error is None:
            return answer
        return JSONResponse(
            {
                "detail": f"{store_error}; the prediction below was not stored, send it again later",
                **answer,
                "stored": False,
            },
            503,
            headers={"Retry-After": "5"},
        )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        store_health = batcher.store_health()
        return {
            "status": "degraded" if store_health["state"] == "degraded" else "ok",
            "bundle": predictor.folder.name if predictor.folder else None,
            "members": [m.name for m in predictor.members],
            "rules": predictor.rules.to_dict(),
            "max_batch": max_batch,
            "max_wait_ms": max_wait_ms,
            "max_bytes": max_bytes,
            "store": store_health,
            "stats": dict(batcher.stats),
        }

    @app.post("/predict", response_model=None)
    async def predict(
        request: Request, image_id: str | None = None, overlay: bool = False
    ) -> dict[str, Any] | JSONResponse:
        rgb, result, batch, store_error = await predict_upload(request, image_id)
        answer = {**result.to_dict(), "batch": batch, "stored": bool(store)}
        if overlay:
            answer["overlay_png"] = base64.b64encode(await run_in_threadpool(_overlay_png, rgb, result)).decode()
        return answered(answer, store_error)

    @app.post("/overlay", response_model=None)
    async def overlay(request: Request, image_id: str | None = None) -> Response:
        rgb, result, batch, store_error = await predict_upload(request, image_id)
        png = await run_in_threadpool(_overlay_png, rgb, result)
        if store_error is not None:
            return answered(
                {**result.to_dict(), "batch": batch, "overlay_png": base64.b64encode(png).decode()}, store_error
            )
        return Response(
            png, media_type="image/png", headers={"X-Defects": ",".join(map(str, result.to_dict()["defects"]))}
        )

    return app


def _overlay_png(rgb: np.ndarray, result: ImagePrediction) -> bytes:
    """PNG of the image with the predicted defect contours in their class colours (``analysis.viz``)."""
    from common.viz import contour_overlay, png_bytes, stack_masks

    return png_bytes(contour_overlay(rgb, stack_masks(result.masks)))


def _timed_protocol(limits: Limits) -> type:
    """uvicorn's h11 protocol with deadlines: request headers within ``header_timeout`` of the connection (or of
    the previous answer), the whole request within ``body_timeout`` + 5 s of its headers; else the connection is
    closed (uvicorn itself has no header timeout: half-sent headers would hold a connection for ever)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            waiting_for_request = self.cycle is None or self.cycle.response_complete
            if (waiting_for_request or self.conn.their_state is not h11.DONE) and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(limits.header_timeout)

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle and not self.transport.is_closing():  # a new request's headers arrived
                self._arm(limits.body_timeout + 5.0)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm(limits.header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return TimedH11Protocol


def server_config(app: Any, host: str, port: int, limits: Limits = Limits(), log_level: str = "info") -> Any:
    """The uvicorn config with the slow-client limits (``Limits``)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        http=_timed_protocol(limits),
        timeout_keep_alive=limits.keep_alive,
        limit_concurrency=limits.max_connections,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        backlog=limits.max_connections,
    )


@contextmanager
def running_server(app: Any, host: str = "127.0.0.1", port: int = 0, limits: Limits = Limits()) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a background thread for the block; yields its base URL (port 0: a free one)."""
    import uvicorn

    server = uvicorn.Server(server_config(app, host, port, limits, "warning"))
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


def load_test(
    url: str,
    payloads: Sequence[bytes],
    requests: int = 100,
    concurrency: int = 4,
    max_seconds: float = 60.0,
    token: str | None = None,
) -> dict[str, float]:
    """POST ``requests`` images (cycling through ``payloads``) from ``concurrency`` threads, stopping at
    ``max_seconds``; requests/s, latency percentiles (s) and the count of errors (non-200 answers, failed
    connections)."""
    import httpx

    if not payloads:
        raise ServeError("load test: no images to send")
    lock, sent, latencies, errors = threading.Lock(), [0], [], [0]
    start = time.perf_counter()
    deadline = start + max_seconds

    def client() -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx.Client(base_url=url, timeout=max_seconds, headers=headers) as http:
            while True:
                with lock:
                    if sent[0] >= requests or time.perf_counter() > deadline:
                        return
                    index = sent[0]
                    sent[0] += 1
                t0 = time.perf_counter()
                try:
                    ok = (
                        http.post(
                            "/predict",
                            content=payloads[index % len(payloads)],
                            params={"image_id": f"load-{index:05d}.png"},
                        ).status_code
                        == 200
                    )
                except httpx.HTTPError:  # a dropped or refused connection is counted, not a crash
                    ok = False
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    errors[0] += not ok

    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    seconds = time.perf_counter() - start
    lat = np.asarray(latencies) if latencies else np.zeros(1)
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "seconds": seconds,
        "requests_per_s": len(latencies) / seconds,
        "p50_s": float(np.percentile(lat, 50)),
        "p95_s": float(np.percentile(lat, 95)),
        "max_s": float(lat.max()),
    }


def _run_load_test(
    app: Any,
    images: Path,
    requests: int,
    concurrency: int,
    seconds: float,
    token: str | None = None,
    limits: Limits = Limits(),
) -> None:
    from common.dataset import list_images

    files = [images / name for name in list_images(images)][:64]
    try:
        payloads = [f.read_bytes() for f in files]
    except OSError as exc:
        raise ServeError(f"--images: cannot read {exc.filename} ({exc.strerror or exc})") from exc
    with running_server(app, limits=limits) as url:
        load_test(url, payloads[:1], 2, 1, seconds, token)  # warm-up: sessions and code paths
        report = load_test(url, payloads, requests, concurrency, seconds, token)
    print(
        f"load test on {url} ({len(payloads)} distinct images, concurrency {concurrency}): "
        f"{report['requests']:.0f} requests in {report['seconds']:.1f} s = {report['requests_per_s']:.2f} requests/s, "
        f"latency p50 {report['p50_s'] * 1000:.0f} ms, p95 {report['p95_s'] * 1000:.0f} ms, "
        f"max {report['max_s'] * 1000:.0f} ms, {report['errors']:.0f} errors"
    )


def check_port(host: str, port: int) -> None:
    """Fail at start-up, naming ``--host``/``--port``, when the server could not listen there (before the bundle
    is loaded; uvicorn would otherwise log the error and exit 1 after the start-up)."""
    import socket

    if not 0 <= port <= 65535:
        raise ServeError(f"--port {port}: not a port number (0..65535)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ServeError(f"--host {host!r}: not an address of this machine ({exc}); use 127.0.0.1 or 0.0.0.0") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            raise ServeError(
                f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); choose another "
                "--port or stop the program using it"
            ) from exc


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address (127.0.0.0/8, ::1): unreachable from
    other machines."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)
    except (OSError, UnicodeError, ValueError):
        return False


def read_token(token_file: Path | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The API token from ``--token-file`` or the ``STEELSEG_TOKEN`` environment variable (None: neither);
    16-4096 printable ASCII characters without spaces (it travels in a header)."""
    if token_file is not None:
        try:
            token, where = token_file.read_text(encoding="utf-8").strip(), f"--token-file {token_file}"
        except (OSError, UnicodeDecodeError) as exc:
            raise ServeError(
                f"--token-file {token_file}: cannot read it ({getattr(exc, 'strerror', None) or exc})"
            ) from exc
    elif environ.get(TOKEN_ENV) is not None:
        token, where = environ[TOKEN_ENV].strip(), f"environment variable {TOKEN_ENV}"
    else:
        return None
    if not _TOKEN.fullmatch(token):
        raise ServeError(
            f"{where}: the token must be 16-4096 printable ASCII characters without spaces "
            f"(got {len(token)} characters); e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.serve", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument("bundle", type=Path, help="bundle folder written by python -m deploy.export")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=8, help="images per model batch at most")
    parser.add_argument("--max-wait-ms", type=float, default=20.0, help="how long a batch waits for more images")
    parser.add_argument("--max-mb", type=float, default=8.0, help="request body size limit in MiB")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    parser.add_argument("--thresholds", type=Path, default=None, help="thresholds file replacing the bundle's")
    parser.add_argument("--store", default=None, help="inspections store (SQLite) to append predictions to")
    parser.add_argument("--run-id", default="serve", help="run id of the stored predictions (source pred:<run-id>)")
    parser.add_argument(
        "--load-test",
        type=int,
        default=0,
        metavar="N",
        help="send N requests to a local server, print requests/s and latency, exit",
    )
    parser.add_argument("--images", type=Path, default=None, help="image folder the load test sends from")
    parser.add_argument("--concurrency", type=int, default=4, help="load test clients")
    parser.add_argument("--load-seconds", type=float, default=120.0, help="load test time limit")
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help=f"file holding the API token (else the "
        f"environment variable {TOKEN_ENV}); required beyond loopback, never on the command line",
    )
    parser.add_argument("--token", default=None, help=argparse.SUPPRESS)  # refused with advice
    parser.add_argument("--max-decodes", type=int, default=4, help="images decoded at once at most")
    parser.add_argument(
        "--store-timeout",
        type=float,
        default=2.0,
        help="seconds a locked or full store is retried before the answer is 503 (with the prediction, not stored)",
    )
    defaults = Limits()
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=defaults.header_timeout,
        help="seconds a connection may take to send its request headers",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=defaults.body_timeout,
        help="seconds a request may take to send its body (408 and closed beyond)",
    )
    parser.add_argument("--keep-alive", type=float, default=defaults.keep_alive, help="idle keep-alive seconds")
    parser.add_argument(
        "--max-connections", type=int, default=defaults.max_connections, help="connections served at once (503 beyond)"
    )
    args = parser.parse_args(argv)
    if args.token is not None:
        raise ServeError(
            f"--token: a token on the command line is visible to every user of this machine (ps, "
            f"shell history); put it in a file for --token-file or in the environment variable "
            f"{TOKEN_ENV}"
        )
    if (
        min(args.header_timeout, args.body_timeout, args.keep_alive, args.store_timeout) <= 0
        or args.max_connections < 1
        or args.max_decodes < 1
    ):
        raise ServeError(
            "--header-timeout, --body-timeout, --keep-alive and --store-timeout must be > 0, "
            "--max-connections and --max-decodes >= 1"
        )
    limits = Limits(args.header_timeout, args.body_timeout, args.keep_alive, args.max_connections)
    check_run_id(args.run_id, "--run-id")
    if args.max_batch < 1 or args.max_wait_ms < 0 or args.max_mb <= 0:
        raise ServeError("--max-batch must be >= 1, --max-wait-ms >= 0 and --max-mb > 0")
    if args.load_test < 0 or args.concurrency < 1 or args.load_seconds <= 0:
        raise ServeError("--load-test must be >= 0, --concurrency >= 1 and --load-seconds > 0")
    if args.load_test and not (args.images and args.images.is_dir()):
        raise ServeError(f"--images: image folder {args.images} not found (the load test sends its images)")
    if args.store:
        check_writable(args.store, "--store")
    if not args.load_test:
        check_port(args.host, args.port)
    token = read_token(args.token_file)
    if token is None and not args.load_test and not is_loopback(args.host):
        raise ServeError(
            f"--host {args.host}: reachable from other machines, so every request needs a token: "
            f"put one in a file for --token-file or in the environment variable {TOKEN_ENV} "
            "(clients send 'Authorization: Bearer <token>')"
        )
    predictor = load_bundle(args.bundle, args.threads, thresholds=args.thresholds)
    app = create_app(
        predictor,
        args.max_batch,
        args.max_wait_ms,
        int(args.max_mb * MiB),
        args.store,
        args.run_id,
        token,
        args.max_decodes,
        args.body_timeout,
        args.store_timeout,
    )
    print(predictor.describe())
    if args.load_test:
        _run_load_test(app, args.images, args.load_test, args.concurrency, args.load_seconds, token, limits)
        return 0
    import uvicorn

    print(
        f"serving on http://{args.host}:{args.port} (POST /predict, POST /overlay, GET /health)"
        + (
            "; every request needs the token, no TLS here: put a TLS proxy in front beyond a trusted network"
            if token
            else ""
        )
    )
    uvicorn.Server(server_config(app, args.host, args.port, limits)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
