"""The HTTP service of `facepipe serve` (FastAPI): recognize, gallery listing, enrol/remove, health.

A face gallery is biometric data. Gallery changes (and, when configured, recognition and the
gallery listing) need `Authorization: Bearer <token>`, the token read from FACEPIPE_SERVE_TOKEN or
the file FACEPIPE_SERVE_TOKEN_FILE (a mounted secret) and compared in constant time. Without a
token the service listens on loopback only and gallery changes are refused. Bodies over the size
limit are refused before they reach a handler; answers and logs never carry images, embeddings
or tokens (validation errors are answered without the input they quote).
"""

import asyncio
import hmac
import logging
import os
import re

from facepipe.errors import ConfigError, FacepipeError
from facepipe.serving.online import RequestError, decode_image

TOKEN_ENV, TOKEN_FILE_ENV = "FACEPIPE_SERVE_TOKEN", "FACEPIPE_SERVE_TOKEN_FILE"
RECOGNIZE_TOKEN_ENV = "FACEPIPE_SERVE_TOKEN_REQUIRED_FOR_RECOGNIZE"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("facepipe.serve")


def load_token() -> str | None:
    """The bearer token from the environment or the mounted secret file; None when neither is set."""
    path = os.environ.get(TOKEN_FILE_ENV)
    if path:
        try:
            token = open(path).read().strip()
        except OSError as exc:
            raise ConfigError(f"{TOKEN_FILE_ENV}={path}: cannot read the token file ({exc.strerror})") from None
        if not token:
            raise ConfigError(f"{TOKEN_FILE_ENV}={path}: the token file is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose a gallery without a token: only loopback then."""
    if token is None and host not in LOOPBACK:
        raise ConfigError(f"no token configured ({TOKEN_ENV} or {TOKEN_FILE_ENV}): refusing to listen on {host}; "
                          "without a token the service binds to 127.0.0.1 only")


def multipart_files(content_type: str, body: bytes) -> list[bytes]:
    """The file parts of a multipart/form-data body (the parts with a filename, else every part)."""
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not found:
        raise RequestError(400, "multipart body without a boundary")
    parts = []
    for chunk in body.split(b"--" + found.group(1).encode())[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise RequestError(400, "malformed multipart part (no header/body separator)")
        parts.append((b"filename=" in head.lower(), content.removesuffix(b"\r\n")))
    files = [c for named, c in parts if named] or [c for _, c in parts]
    if not files:
        raise RequestError(400, "multipart body without parts")
    return files


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is answered 413 (read and dropped, never kept)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.limit:
                chunks.append(chunk)
            more = message.get("more_body", False)
        if size > self.limit:
            from starlette.responses import JSONResponse

            answer = JSONResponse({"error": f"body of {size} bytes is over the limit of {self.limit} bytes"}, 413)
            return await answer(scope, receive, send)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def create_app(service, token: str | None, token_for_recognize: bool = False, max_body: int = 10 << 20,
               max_batch: int = 16, wait_ms: float = 5.0):
    """The FastAPI app over an `OnlineRecognizer`; its batcher starts and stops with the app."""
    import contextlib

    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    from facepipe.serving.batching import Batcher

    batcher: Batcher | None = None

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        nonlocal batcher
        batcher = Batcher(service.answer, max_batch, wait_ms)
        yield
        batcher.close()

    app = FastAPI(title="facepipe", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestError)
    async def refused(_request, exc: RequestError):
        return JSONResponse({"error": str(exc)}, exc.status)

    @app.exception_handler(FacepipeError)
    async def conflict(_request, exc: FacepipeError):
        return JSONResponse({"error": str(exc)}, 409)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        # FastAPI's default answer quotes the input; name the field and the rule only.
        return JSONResponse({"error": "invalid request", "fields": [
            {"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()]}, 422)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return JSONResponse({"error": exc.detail}, exc.status_code)

    @app.exception_handler(Exception)
    async def internal(_request, exc: Exception):
        log.error("internal error: %s", type(exc).__name__)  # no message: it may quote request data
        return JSONResponse({"error": "internal error"}, 500)

    def authorize(request: Request) -> None:
        if token is None:
            raise RequestError(403, f"no token configured on the service ({TOKEN_ENV} or {TOKEN_FILE_ENV}); "
                                    "gallery changes are disabled")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise RequestError(401, "missing bearer token (Authorization: Bearer <token>)")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise RequestError(403, "wrong token")

    async def images_of(request: Request) -> list[bytes]:
        body = await request.body()
        kind = request.headers.get("content-type", "")
        if kind.lower().startswith("multipart/"):
            return multipart_files(kind, body)
        return [body]

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": service.model_info(), "batches": batcher.batches if batcher else 0}

    @app.get("/v1/gallery")
    async def gallery(request: Request):
        if token_for_recognize:
            authorize(request)
        return service.gallery_summary()

    @app.post("/v1/recognize")
    async def recognize(request: Request, top_k: int | None = Query(None, ge=1, le=1000),
                        threshold: float | None = Query(None, ge=-1.0, le=1.0)):
        if token_for_recognize:
            authorize(request)
        images = await images_of(request)
        if len(images) != 1:
            raise RequestError(400, f"send one image per request ({len(images)} given)")
        image = decode_image(images[0])
        answer = await asyncio.wrap_future(batcher.submit((image, top_k, threshold)))
        if not answer["faces"]:
            return JSONResponse({"error": "no face found in the image", **answer}, 422)
        return answer

    @app.post("/v1/gallery/identities/{name}")
    async def enrol(name: str, request: Request, replace: bool = False):
        authorize(request)
        images = await images_of(request)
        return await asyncio.to_thread(service.enrol, name, images, replace)

    @app.delete("/v1/gallery/identities/{name}")
    async def remove(name: str, request: Request):
        authorize(request)
        return await asyncio.to_thread(service.remove, name)

    return BodyLimit(app, max_body)
