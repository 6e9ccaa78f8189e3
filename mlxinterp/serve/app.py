"""The explorer's web application: the page, its static files and the JSON API under /api/.

Security model (docs/serve.md): the server binds to 127.0.0.1 unless told otherwise. Every
request passes `Guard`: with a token configured (required for any other address) the request
must carry it (Authorization: Bearer, ?token= on the first page load, then an HttpOnly cookie);
bound to loopback, the Host header must name loopback, so a web page on another site cannot
reach the server through DNS rebinding; POST bodies must be JSON (a cross-site form cannot send
that without a CORS preflight, which this server never answers) and are size-bounded. Errors
are JSON {"error": message} with a 4xx status; an unexpected exception is logged on the
server's console and answered with a one-line 500, never a traceback.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import contextlib
import json
import logging
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mlxinterp.analysis.controlvec import LayerVectors, import_llama_cpp, load_vectors
from mlxinterp.analysis.sae import load_sae
from mlxinterp.analysis.tuned_lens import TunedLens
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.serve import engine, files
from mlxinterp.serve.engine import Limits, RequestError
from mlxinterp.serve.worker import Busy, Worker

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

STATIC = Path(__file__).parent / "static"
COOKIE = "mlxinterp_token"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("mlxinterp.serve")


@dataclass
class ServeConfig:
    results_dir: Path = Path("results")
    vectors_dir: Path = Path("results")
    token: str | None = None  # required on every request when set
    loopback_only: bool = True  # check the Host header names loopback (DNS-rebinding guard)
    queue: int = 2
    limits: Limits = field(default_factory=Limits)
    tuned_lens: Path | None = None  # a tuned lens for this model (mlxinterp tuned-lens): the lens's "tuned" mode
    sae: Path | None = None  # an SAE for this model (analysis.sae.load_sae): the "SAE features" view


def new_token() -> str:
    return secrets.token_urlsafe(24)


class Guard:
    """ASGI middleware: token, Host header, content type and body size, before any route runs."""

    def __init__(self, app, config: ServeConfig):
        self.app, self.config = app, config

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._check(scope, headers)
        if refusal:
            status, message = refusal
            return await JSONResponse({"error": message}, status_code=status)(scope, receive, send)
        if scope["method"] in ("POST", "PUT"):
            limit = self.config.limits.upload_bytes * 4 // 3 + 4096 if scope["path"] == "/api/vectors" \
                else self.config.limits.body_bytes
            return await self.app(scope, _bounded(receive, limit, scope, send), send)
        return await self.app(scope, receive, send)

    def _check(self, scope, headers: dict) -> tuple[int, str] | None:
        if self.config.loopback_only and _host_name(headers.get("host", "")) not in LOOPBACK:
            return 403, "this server answers only requests addressed to localhost (Host header)"
        if self.config.token and not self._has_token(scope, headers):
            return 401, "missing or wrong token: open the URL printed when the server started (it ends in ?token=...)"
        if scope["method"] not in ("GET", "HEAD", "POST"):
            return 405, f"method {scope['method']} is not allowed"
        if scope["method"] == "POST":
            if headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return 415, "POST bodies must be JSON (Content-Type: application/json)"
            length = headers.get("content-length")
            limit = self.config.limits.upload_bytes * 4 // 3 + 4096 if scope["path"] == "/api/vectors" \
                else self.config.limits.body_bytes
            if length is not None and (not length.isdigit() or int(length) > limit):
                return 413, f"request body larger than {limit} bytes"
        return None

    def _has_token(self, scope, headers: dict) -> bool:
        want = self.config.token.encode()
        auth = headers.get("authorization", "")
        given = [auth[7:].strip()] if auth.lower().startswith("bearer ") else []
        given += parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
        for part in headers.get("cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == COOKIE:
                given.append(v)
        return any(secrets.compare_digest(g.encode(), want) for g in given)


def _host_name(host: str) -> str:
    if host.startswith("["):  # [::1]:8000
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _bounded(receive, limit: int, scope, send):
    """receive() that fails with 413 once more than `limit` body bytes arrive (chunked bodies have no length)."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, f"request body larger than {limit} bytes")
        return message

    return wrapped


class Explorer:
    """The loaded model, the worker thread and the routes' handlers."""

    def __init__(self, hm: HookedModel, config: ServeConfig):
        self.hm, self.config, self.limits = hm, config, config.limits
        self.worker = Worker(config.queue)
        self.tuned = None
        if config.tuned_lens is not None:
            self.tuned = TunedLens.load(config.tuned_lens)
            self.tuned.check_model(hm)
        self.sae = None
        if config.sae is not None:
            self.sae = load_sae(config.sae)
            self.sae.check_model(hm)
        self._steer_memo: dict = {}  # unsteered texts and residual norms between slider moves
        self._contrast: dict = {}
        self._vector_lock = threading.Lock()

    # -- helpers
    async def _body(self, request: Request) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise RequestError("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body

    # -- routes
    async def index(self, request: Request) -> Response:
        resp = FileResponse(STATIC / "index.html", headers=_page_headers())
        token = request.query_params.get("token")
        if self.config.token and token:
            resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return resp

    async def info(self, request: Request) -> Response:
        return JSONResponse({**engine.info(self.hm, self.tuned, self.sae), "limits": self.limits.__dict__,
                             "busy": self.worker.pending})

    async def lens(self, request: Request) -> Response:
        b = await self._body(request)
        res = await self.worker.run(engine.lens_grid, self.hm, b.get("prompt"), self.limits, b.get("mode", "normed"),
                                    b.get("top_k", 5), b.get("target") or None, self.tuned)
        return JSONResponse(res)

    async def sae_features(self, request: Request) -> Response:
        if self.sae is None:
            raise RequestError("no SAE is loaded; start the server with --sae DIR (a SAELens directory or Gemma Scope "
                               "params file)")
        b = await self._body(request)
        return JSONResponse(await self.worker.run(engine.sae_features, self.hm, self.sae, b.get("prompt"),
                                                  self.limits, b.get("top_k", 8)))

    async def attention(self, request: Request) -> Response:
        b = await self._body(request)
        return JSONResponse(await self.worker.run(engine.attention, self.hm, b.get("prompt"), b.get("layer", 0),
                                                  self.limits))

    async def vectors(self, request: Request) -> Response:
        if request.method == "POST":
            b = await self._body(request)
            with self._vector_lock:
                path = files.save_upload(self.config.vectors_dir, b, self.limits.upload_bytes)
            rel = path.relative_to(self.config.vectors_dir.resolve()).as_posix()
            return JSONResponse({"path": rel, "vectors": files.list_vectors(self.config.vectors_dir)})
        return JSONResponse({"root": str(self.config.vectors_dir.resolve()),
                             "vectors": files.list_vectors(self.config.vectors_dir)})

    def _vectors(self, spec, layers) -> LayerVectors:
        """The request's vector: {"path": file under the vectors dir} or {"positive": [...], "negative": [...]}."""
        n = self.hm.info.n_layers
        if layers is not None and (not isinstance(layers, list) or not layers or len(layers) > n
                                   or not all(isinstance(l, int) and not isinstance(l, bool) and 0 <= l < n for l in layers)):
            raise RequestError(f"layers={layers!r:.80} is not allowed; give a list of layers in 0..{n - 1}")
        if not isinstance(spec, dict):
            raise RequestError("vector must be {\"path\": ...} or {\"positive\": [...], \"negative\": [...]}")
        if "path" in spec:
            path = files.resolve_under(self.config.vectors_dir, spec["path"])
            if path.suffix == ".gguf":
                return import_llama_cpp(path).select(layers)
            return load_vectors(path, layers)
        chosen = tuple(layers or [n // 2])
        key = (json.dumps(spec.get("positive")), json.dumps(spec.get("negative")), chosen)
        if key not in self._contrast:
            if len(self._contrast) > 16:
                self._contrast.clear()
            self._contrast[key] = engine.contrast_vectors(self.hm, spec.get("positive"), spec.get("negative"),
                                                          chosen, self.limits)
        return self._contrast[key]

    async def steer(self, request: Request) -> Response:
        b = await self._body(request)

        def events(cancel):
            vectors = self._vectors(b.get("vector"), b.get("layers"))
            yield from engine.steer_events(self.hm, b.get("prompt"), vectors, b.get("strength_pct", 0.0),
                                           b.get("max_tokens", 24), self.limits, cancel, self._steer_memo)

        stream = self.worker.stream(events)
        first = await stream.__anext__()  # validation errors surface here, as a 4xx, before any 200 is sent

        async def body():
            try:
                yield json.dumps(first) + "\n"
                async for event in stream:
                    yield json.dumps(event) + "\n"
            except Exception as e:  # after the 200 has gone out an error can only be an event
                yield json.dumps({"event": "error", "error": _message(e)}) + "\n"
            finally:
                await stream.aclose()

        return StreamingResponse(body(), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def patch(self, request: Request) -> Response:
        b = await self._body(request)
        return JSONResponse(await self.worker.run(engine.patch_grid, self.hm, b.get("clean"), b.get("corrupt"),
                                                  b.get("target"), b.get("foil") or None,
                                                  b.get("hook", "hook_resid_pre"), self.limits,
                                                  bool(b.get("estimate", False))))

    async def patch_cell(self, request: Request) -> Response:
        b = await self._body(request)
        return JSONResponse(await self.worker.run(engine.patch_cell, self.hm, b.get("clean"), b.get("corrupt"),
                                                  b.get("target"), b.get("foil") or None,
                                                  b.get("hook", "hook_resid_pre"), b.get("layer"), b.get("position"),
                                                  self.limits, b.get("top_k", 10)))

    async def results(self, request: Request) -> Response:
        return JSONResponse(files.list_results(self.config.results_dir))

    async def results_file(self, request: Request) -> Response:
        rel = request.query_params.get("path", "")
        path = files.resolve_under(self.config.results_dir, rel)
        kind = files.CONTENT_TYPES.get(path.suffix)
        if not path.is_file() or kind is None:
            raise files.PathRefused(f"{rel!r:.80} is not a file the results browser serves "
                                    f"({', '.join(files.CONTENT_TYPES)})")
        # a report page runs in a sandbox: its scripts cannot act on this origin's API
        extra = {"Content-Security-Policy": "sandbox allow-scripts"} if path.suffix in (".html", ".svg") else {}
        return FileResponse(path, media_type=kind, headers={"X-Content-Type-Options": "nosniff", **extra})


def _page_headers() -> dict:
    """The page loads nothing from elsewhere (no CDN): say so to the browser too."""
    return {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                       "script-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'none'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def _message(e: BaseException) -> str:
    return str(e) if isinstance(e, MlxInterpError) else f"internal error ({type(e).__name__}); see the server log"


def _status(e: BaseException) -> int:
    if isinstance(e, files.PathRefused):
        return 403
    if isinstance(e, files.NotFound):
        return 404
    return 400


async def _on_mlxinterp_error(request: Request, e: MlxInterpError) -> Response:
    return JSONResponse({"error": str(e)}, status_code=_status(e))


async def _on_busy(request: Request, e: Busy) -> Response:
    return JSONResponse({"error": str(e), "busy": True}, status_code=503, headers={"Retry-After": "2"})


async def _on_http(request: Request, e: HTTPException) -> Response:
    return JSONResponse({"error": e.detail}, status_code=e.status_code)


async def _on_other(request: Request, e: Exception) -> Response:
    log.exception("error in %s %s", request.method, request.url.path)
    return JSONResponse({"error": _message(e)}, status_code=500)


def create_app(hm: HookedModel, config: ServeConfig | None = None) -> Starlette:
    """The ASGI application for one loaded model (run it with uvicorn, or starlette's TestClient)."""
    config = config or ServeConfig()
    ex = Explorer(hm, config)
    routes = [
        Route("/", ex.index), Route("/api/info", ex.info), Route("/api/lens", ex.lens, methods=["POST"]),
        Route("/api/attention", ex.attention, methods=["POST"]), Route("/api/sae", ex.sae_features, methods=["POST"]),
        Route("/api/vectors", ex.vectors, methods=["GET", "POST"]), Route("/api/steer", ex.steer, methods=["POST"]),
        Route("/api/patch", ex.patch, methods=["POST"]), Route("/api/patch/cell", ex.patch_cell, methods=["POST"]),
        Route("/api/results", ex.results), Route("/api/results/file", ex.results_file),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {MlxInterpError: _on_mlxinterp_error, Busy: _on_busy, HTTPException: _on_http, Exception: _on_other}
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        ex.worker.close()

    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.explorer = ex
    app.add_middleware(Guard, config=config)
    return app
