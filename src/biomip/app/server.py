"""The FastAPI application of ``biomip serve`` (routes in the spirit of MONAI Label).

Routes (JSON errors are ``{"detail": message}``):

=========================================  ====================================================
``GET /``                                  the page (``static/index.html``); ``?token=T`` sets
                                           the ``biomip_token`` cookie
``GET /static/{path}``                     the page's files
``GET /info``                              name, version, workspace, methods, models
``GET /images``                            the images with shape, spacing, labels, ...
``POST /images?name=N``                    upload one image file (body: the file) -> ``{"id"}``
``GET /images/{id}``                       the image as ``.nii.gz`` with its true geometry
                                           (``?channel=k``, ``?compress=false`` for ``.nii``,
                                           ``?step=f``: every f-th voxel, a quick preview)
``GET /labels/{id}``                       a label version as ``.nii.gz`` (``?version=N``)
``GET /labels/{id}/versions``              ``[{"version", "time", "names", "source"}]``
``PUT /labels/{id}``                       save a new version (body: NIfTI) -> ``{"version"}``
``POST /infer/{method}``                   run a method -> ``.nii.gz`` (labels, or the moving
                                           image on the fixed grid for ``register``); header
                                           ``X-Seconds``; ``threshold`` also ``X-Thresholds``
                                           (JSON list of the threshold values used)
``GET /training-set``                      the training set
``POST /training-set/{id}``                add an image (``?version=N``, default latest)
``DELETE /training-set/{id}``              remove it
``POST /train/{model}``                    start training -> 202 ``{"job"}``; 409 if running
``GET /train/{model}``                     the job's state (the last event)
``GET /train/{model}/events``              Server-Sent Events, past events replayed
``DELETE /train/{model}``, ``DELETE /train``  cancel one job / all jobs
``GET /models``                            the trained models and their versions
=========================================  ====================================================

Security: with a token, every route but ``/`` and ``/static/*`` needs it (``Authorization:
Bearer T``, ``?token=T`` or the cookie).  Without a token (loopback only) the ``Host``
header must name a loopback address (DNS rebinding).  A request that changes state and
carries a foreign ``Origin`` is refused (CSRF); no CORS header is ever sent.  Uploads are
capped (413) and written to disk as they arrive.
"""


import asyncio
import json
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from ..core.errors import BiomipError, FormatError, InputError, MissingDependencyError
from ..core.image import Image
from .jobs import JobManager, check_train_request, training_job
from .methods import METHODS, catalogue, run_method
from .workspace import (
    ConflictError,
    NotFoundError,
    TooLargeError,
    Workspace,
    check_model_name,
    export_image,
    redact_path,
    subsample,
)

__all__ = ["create_app", "STATIC_DIR", "LOOPBACK_HOSTS"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The page's files (HTML, JS, CSS, the vendored viewer)."""

_log = logging.getLogger("biomip.serve")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
"""The ``Host`` names accepted without a token."""

_PUBLIC = re.compile(r"^/(static/.*|favicon\.ico)?$")
_STATUS = ((NotFoundError, 404), (ConflictError, 409), (TooLargeError, 413), (InputError, 422), (FormatError, 422),
           (BiomipError, 400))


def _import_fastapi():
    try:
        import fastapi  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("biomip serve needs FastAPI and uvicorn: pip install 'biomip[app]'") from exc


def _host_name(host_header: str) -> str:
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _validation_message(errors) -> str:
    """FastAPI's list of validation errors as one sentence in the project's style."""
    if not errors:
        return "request: invalid"
    e = errors[0]
    loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "header")]
    where = e.get("loc", ("",))[0]
    name = ".".join(loc) or ("body" if where == "body" else str(where or "request"))
    typ = e.get("type", "")
    got = e.get("input")
    if typ == "missing":
        kind = {"query": "query parameter", "header": "header", "path": "path part"}.get(where, "field")
        return f"{name}: missing; expected the {kind} {name!r}" + (" (e.g. ?name=scan.nii.gz)" if name == "name"
                                                                    and where == "query" else "")
    if typ == "json_invalid":
        why = (e.get("ctx") or {}).get("error", "")
        return f"body: not valid JSON ({why}); expected a JSON object and Content-Type: application/json"
    if typ in ("dict_type", "model_type"):
        shown = got.decode("utf-8", "replace") if isinstance(got, bytes) else got
        shown = shown[:60] if isinstance(shown, str) else shown
        return (f"{name}: got {shown!r}; expected a JSON object (send it with Content-Type: application/json)")
    msg = e.get("msg", "invalid")
    return f"{name}: got {str(got)[:60]!r}; expected {msg[0].lower() + msg[1:] if msg else 'a valid value'}"


def _label_dtype(arr: np.ndarray) -> np.ndarray:
    hi = int(arr.max()) if arr.size else 0
    lo = int(arr.min()) if arr.size else 0
    if lo >= 0 and hi < 256:
        return arr.astype(np.uint8)
    if lo >= 0 and hi < 65536:
        return arr.astype(np.uint16)
    return arr.astype(np.int32)


class _BodyLimit:
    """ASGI wrapper: a request body larger than its limit raises :class:`TooLargeError` (413)
    while it is received, whether or not the client sent a Content-Length.  File routes
    (label saves, image uploads) get the upload cap; JSON routes at most 16 MiB."""

    def __init__(self, app, cap: int):
        self.app, self.cap = app, cap

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        files = path.startswith("/labels/") or path == "/images"
        limit = self.cap if files else min(self.cap, 16 << 20)
        total, exceeded, started = 0, False, False
        detail = json.dumps({"detail": f"body: more than {limit:,} bytes; the cap for this route is {limit:,} bytes "
                                       "(--max-upload-mb)"}).encode()
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:     # refused at once, before any byte of the body
            detail = json.dumps({"detail": f"body: {int(declared):,} bytes; the cap for this route is {limit:,} "
                                           "bytes (--max-upload-mb)"}).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(detail)).encode()), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": detail})
            return

        async def limited():
            nonlocal total, exceeded
            msg = await receive()
            if msg.get("type") == "http.request":
                total += len(msg.get("body", b""))
                if total > limit:
                    exceeded = True
                    raise TooLargeError(json.loads(detail)["detail"])
            return msg

        async def reply_413():
            nonlocal started
            started = True
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(detail)).encode())]})
            await send({"type": "http.response.body", "body": detail})

        async def guarded_send(msg):
            nonlocal started
            if exceeded:               # whatever the app answers (FastAPI says 400 for a body it could not read)
                if msg["type"] == "http.response.start" and not started:
                    await reply_413()
                return
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited, guarded_send)
        except Exception:
            if exceeded and not started:
                await reply_413()
                return
            raise


def create_app(workspace, *, token: str | None = None, max_upload_mb: float = 512,
               allowed_hosts=None, static_dir=None, max_infer: int = 2):
    """The FastAPI application serving one workspace.

    Parameters
    ----------
    workspace : Workspace or str or pathlib.Path
        The workspace (or its folder).
    token : str or None, optional
        The access token; ``None``: no token (use only on a loopback address).
    max_upload_mb : float, optional
        Largest request body accepted (labels, image uploads), MiB; larger gives 413.
    allowed_hosts : sequence of str or None, optional
        Host names the ``Host`` header may name (``["*"]``: any).  Default: the
        loopback names without a token, any with one.
    static_dir : str or pathlib.Path or None, optional
        The page's folder (default :data:`STATIC_DIR`).
    max_infer : int, optional
        Inference requests run at the same time (more wait).

    Returns
    -------
    fastapi.FastAPI
        The app; ``app.state.workspace`` and ``app.state.jobs`` are the workspace and
        the :class:`~biomip.app.jobs.JobManager`.  Leaving its lifespan (server stop,
        ``with TestClient(app)``) cancels the running jobs and waits for them.

    Raises
    ------
    MissingDependencyError
        When FastAPI is not installed (``pip install 'biomip[app]'``).

    Examples
    --------
    >>> import tempfile
    >>> from fastapi.testclient import TestClient
    >>> app = create_app(tempfile.mkdtemp())
    >>> with TestClient(app, base_url="http://127.0.0.1") as client:
    ...     client.get("/images").json()
    []
    """
    _import_fastapi()
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.requests import ClientDisconnect

    from .. import __version__

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    jobs = JobManager()
    cap = int(float(max_upload_mb) * 2**20)
    static = Path(static_dir) if static_dir is not None else STATIC_DIR
    if allowed_hosts is None:
        allowed_hosts = ["*"] if token else list(LOOPBACK_HOSTS)
    hosts = {h.lower().strip("[]") for h in allowed_hosts}
    infer_slots = threading.BoundedSemaphore(max(1, int(max_infer)))
    nifti_cache: OrderedDict = OrderedDict()
    cache_lock = threading.Lock()

    def stopping() -> bool:
        """Whether the server is stopping (lifespan end, or uvicorn's Ctrl-C via ``app.state.should_exit``)."""
        flag = getattr(app.state, "should_exit", None)
        return bool(app.state.closing or (flag is not None and flag()))

    @asynccontextmanager
    async def lifespan(app):
        app.state.closing = False
        try:
            yield
        finally:
            app.state.closing = True
            await run_in_threadpool(jobs.shutdown, 30.0)

    app = FastAPI(title="biomip serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.workspace = ws
    app.state.jobs = jobs
    app.state.closing = False
    app.add_middleware(_BodyLimit, cap=cap)

    def authorised(request) -> bool:
        if not token:
            return True
        auth = request.headers.get("authorization", "")
        given = [auth[7:].strip() if auth[:7].lower() == "bearer " else "", request.query_params.get("token", ""),
                 request.cookies.get("biomip_token", "")]
        return any(g and secrets.compare_digest(g.encode(), token.encode()) for g in given)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = request.headers.get("host", "")
        if "*" not in hosts and _host_name(host) not in hosts:
            return JSONResponse({"detail": f"host: {host!r} is not allowed; open the page at http://127.0.0.1 "
                                           "(or start the server with --host and a token)"}, status_code=403)
        origin = request.headers.get("origin")
        if origin is not None and request.method not in ("GET", "HEAD") and urlsplit(origin).netloc.lower() != \
                host.lower():
            return JSONResponse({"detail": f"origin: cross-origin request from {origin!r} refused"}, status_code=403)
        if not _PUBLIC.match(request.url.path) and not authorised(request):
            return JSONResponse({"detail": "token: missing or wrong; open the URL that `biomip serve` printed "
                                           "(it ends in ?token=...)"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(BiomipError)
    async def biomip_error(request: Request, exc: BiomipError):
        code = next(c for t, c in _STATUS if isinstance(exc, t))
        return JSONResponse({"detail": str(exc)}, status_code=code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _validation_message(exc.errors())}, status_code=422)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect):
        # the client closed the connection before its body was complete: nothing was kept, nobody to answer
        _log.info("biomip serve: %s %s: the client disconnected before sending the whole body; nothing saved",
                  request.method, request.url.path)
        return Response(status_code=400)

    # ------------------------------------------------------------------ helpers
    def nifti(image: Image, name: str, compress: bool = True, key=None) -> Response:
        from .. import io as bio

        data = None
        if key is not None:
            with cache_lock:
                if key in nifti_cache:
                    nifti_cache.move_to_end(key)
                    data = nifti_cache[key]
        if data is None:
            tmp = ws.tmp_path(".nii.gz" if compress else ".nii")
            try:
                bio.write(image, tmp)
                data = tmp.read_bytes()
            finally:
                tmp.unlink(missing_ok=True)
            if key is not None:
                with cache_lock:
                    nifti_cache[key] = data
                    while len(nifti_cache) > 4:
                        nifti_cache.popitem(last=False)
        fname = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] + (".nii.gz" if compress else ".nii")
        return Response(data, media_type="application/gzip" if compress else "application/octet-stream",
                        headers={"Content-Disposition": f'inline; filename="{fname}"'})

    async def receive(request: Request, suffix: str) -> Path:
        length = request.headers.get("content-length")
        if length is not None and re.fullmatch(r"[0-9]{1,20}", length) and int(length) > cap:
            raise TooLargeError(f"body: {int(length):,} bytes; the upload cap is {cap:,} bytes (--max-upload-mb)")
        tmp = ws.tmp_path(suffix)
        total = 0
        try:
            with open(tmp, "wb") as fh:
                async for chunk in request.stream():
                    total += len(chunk)
                    if total > cap:
                        raise TooLargeError(f"body: more than {cap:,} bytes; the upload cap is {cap:,} bytes "
                                            "(--max-upload-mb)")
                    fh.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if total == 0:
            tmp.unlink(missing_ok=True)
            raise InputError("body: empty; expected the file's bytes")
        return tmp

    def bool_arg(value, name: str) -> bool:
        if value is None:
            return True
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise InputError(f"{name}: got {value!r}; expected true or false")

    def int_arg(value, name: str, expected: str = "a non-negative integer of at most 9 digits"):
        if value is None or value == "":
            return None
        if not re.fullmatch(r"[0-9]{1,9}", value):
            raise InputError(f"{name}: got {value!r}; expected {expected}")
        return int(value)

    # ------------------------------------------------------------------ page
    @app.get("/", include_in_schema=False)
    async def index(request: Request):
        page = static / "index.html"
        if page.is_file():
            resp = FileResponse(page, media_type="text/html")
        else:
            resp = HTMLResponse("<!doctype html><title>biomip serve</title><p>biomip serve is running; the page "
                                "is not installed (biomip/app/static/index.html). The API is at /info.</p>")
        given = request.query_params.get("token")
        if token and given and secrets.compare_digest(given.encode(), token.encode()):
            resp.set_cookie("biomip_token", token, httponly=True, samesite="strict", path="/")
        return resp

    app.mount("/static", StaticFiles(directory=static, check_dir=False), name="static")

    # ------------------------------------------------------------------ info
    def models_json():
        return ws.models()

    @app.get("/info")
    def info():
        return {"name": "biomip", "version": __version__, "workspace": ws.root.name,
                "methods": catalogue(ws), "models": models_json(), "max_upload_bytes": cap,
                "token_required": bool(token), "skipped": ws.skipped_list()}

    @app.get("/models")
    def models():
        return models_json()

    # ------------------------------------------------------------------ images
    @app.get("/images")
    def images():
        return [ws.describe(e.id) for e in ws.images(refresh=True)]

    @app.get("/images/skipped")
    def images_skipped():
        ws.images(refresh=False)
        return ws.skipped_list()

    @app.post("/images", status_code=201)
    async def upload_image(request: Request, name: str):
        from .workspace import safe_name

        fname = safe_name(name)
        low = fname.lower()
        suffix = ".nii.gz" if low.endswith(".nii.gz") else Path(low).suffix
        tmp = await receive(request, suffix)
        try:
            iid = await run_in_threadpool(ws.add_image, fname, tmp, cap * 8)
        finally:
            tmp.unlink(missing_ok=True)
        return {"id": iid}

    @app.get("/images/{image_id}")
    def get_image(image_id: str, channel: str | None = None, compress: str | None = None,
                  step: str | None = None):
        e = ws.entry(image_id)
        ch = int_arg(channel, "channel")
        gz = bool_arg(compress, "compress")
        step_range = "an integer from 1 to 16 (every step-th voxel)"
        f = int_arg(step, "step", step_range)
        f = 1 if f is None else f
        if not 1 <= f <= 16:
            raise InputError(f"step: got {f}; expected {step_range}")
        img = ws.read(image_id)
        key = ("image", e.id, ws.stamp(e.path), ch, gz, f)
        return nifti(subsample(export_image(img, ch), f), e.rel.split("/")[-1].split(".")[0], gz, key=key)

    # ------------------------------------------------------------------ labels
    @app.get("/labels/{image_id}/versions")
    def label_versions(image_id: str):
        ws.entry(image_id)
        return ws.label_versions(image_id)

    @app.get("/labels/{image_id}")
    def get_labels(image_id: str, version: str | None = None, compress: str | None = None):
        lab = ws.read_labels(image_id, int_arg(version, "version"))
        return nifti(export_image(lab), f"{image_id}-labels", bool_arg(compress, "compress"))

    @app.put("/labels/{image_id}")
    async def put_labels(image_id: str, request: Request):
        from .. import io as bio

        ws.entry(image_id)
        names = request.headers.get("x-label-names")
        if names is not None:
            try:
                names = json.loads(names)
            except ValueError:
                raise InputError(f"X-Label-Names: got {names[:100]!r}; expected JSON such as "
                                 '{"1": "nucleus"}') from None
        source = request.headers.get("x-label-source", "manual")
        head = b""
        tmp = await receive(request, ".bin")
        try:
            with open(tmp, "rb") as fh:
                head = fh.read(2)
            suffix = ".nii.gz" if head == b"\x1f\x8b" else ".nii"
            named = tmp.with_name(tmp.name[:-4] + suffix)
            tmp.rename(named)
            tmp = named

            def save():
                img = ws.read(image_id)
                limit = int(np.prod(img.spatial_shape)) * 8 + (1 << 20)
                try:
                    fmt = bio.sniff(tmp)
                except FormatError:
                    fmt = None          # bio.read says why below
                if fmt is not None and fmt != "nifti":
                    raise FormatError(f"body: got {fmt.upper()} content; expected a NIfTI label map (.nii or "
                                      ".nii.gz) on the image grid")
                try:
                    lab = bio.read(tmp, max_bytes=limit)
                except FormatError as exc:
                    why = str(redact_path(exc, tmp, "the body"))
                    why = why.replace("NIfTI file the body: ", "").replace("NIfTI file the body", "the body")
                    raise FormatError(f"body: not a NIfTI label map on the image grid: {why}") from None
                except BiomipError as exc:
                    raise redact_path(exc, tmp, "the body") from None
                return ws.save_labels(image_id, lab, names=names, source=source)

            version = await run_in_threadpool(save)
        finally:
            tmp.unlink(missing_ok=True)
        return {"version": version}

    # ------------------------------------------------------------------ inference
    @app.post("/infer/{method}")
    def infer(method: str, body: dict):
        if method not in METHODS:
            raise NotFoundError(f"method: no method {method!r}; expected one of {', '.join(METHODS)}")
        kind = METHODS[method].kind
        allowed = {"image", "params", "save", "names"} if kind == "segment" else {"fixed", "moving", "params"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise InputError(f"body: unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}")
        if body.get("save") is not None and not isinstance(body["save"], bool):
            raise InputError(f"save: got {body['save']!r}; expected true or false")
        if body.get("save"):
            ws.check_names(body.get("names"))      # before the method runs, not after
        t0 = time.perf_counter()
        with infer_slots:
            if kind == "register":
                for k in ("fixed", "moving"):
                    if not isinstance(body.get(k), str):
                        raise InputError(f"{k}: got {body.get(k)!r}; expected an image id")
                fixed, moving = ws.read(body["fixed"]), ws.read(body["moving"])
                out = run_method(method, fixed, body.get("params"), moving=moving, workspace=ws)
                resp = nifti(export_image(out), f"{body['moving']}-on-{body['fixed']}")
            else:
                if not isinstance(body.get("image"), str):
                    raise InputError(f"image: got {body.get('image')!r}; expected an image id")
                image_id = body["image"]
                out = run_method(method, ws.read(image_id), body.get("params"), workspace=ws)
                labels = out.with_array(_label_dtype(out.numpy()))
                headers = {}
                if method == "threshold" and out.meta.get("thresholds") is not None:
                    headers["X-Thresholds"] = json.dumps([float(t) for t in out.meta["thresholds"]])
                if body.get("save"):
                    headers["X-Label-Version"] = str(ws.save_labels(image_id, labels, names=body.get("names"),
                                                                    source=f"infer:{method}"))
                resp = nifti(export_image(labels), f"{image_id}-{method}")
                resp.headers.update(headers)
        resp.headers["X-Seconds"] = f"{time.perf_counter() - t0:.3f}"
        return resp

    # ------------------------------------------------------------------ training set
    @app.get("/training-set")
    def training_set():
        return ws.training_set()

    @app.post("/training-set/{image_id}")
    def add_training(image_id: str, version: str | None = None):
        return ws.add_to_training_set(image_id, int_arg(version, "version"))

    @app.delete("/training-set/{image_id}")
    def remove_training(image_id: str):
        removed = ws.remove_from_training_set(image_id)
        if not removed:
            ws.entry(image_id)          # an unknown image: 404 (one in the set is removed even if its file is gone)
        return {"removed": removed}

    # ------------------------------------------------------------------ training
    # {model:path}: a name with "/" (or "%2F") gets the name check's message, not a bare 404
    @app.get("/train/{model}/events")
    async def train_events(model: str, request: Request):
        check_model_name(model)
        job = jobs.get(model)
        last = request.headers.get("last-event-id", "")
        # SSE: the id is the client's opaque echo of an id we sent; one we did not send (not a
        # number of at most 18 ASCII digits) is ignored and every past event is replayed
        after = int(last) if re.fullmatch(r"[0-9]{1,18}", last) else -1

        async def stream():
            seq, quiet = after, 0.0
            while True:
                new = job.wait_events(seq, 0)
                for ev in new:
                    seq = ev["seq"]
                    yield f"id: {seq}\ndata: {json.dumps(ev, default=str)}\n\n"
                if new:
                    quiet = 0.0
                if job.done and seq >= len(job.events) - 1:
                    return
                if stopping() or await request.is_disconnected():
                    return
                await asyncio.sleep(0.1)
                quiet += 0.1
                if quiet >= 15:
                    quiet = 0.0
                    yield ": keep-alive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/train/{model:path}", status_code=202)
    def train(model: str, body: dict | None = None):
        req = check_train_request(ws, model, body or {})
        job = jobs.start(model, req["kind"], training_job(ws, req))
        return {"job": job.id, "model": model, "kind": req["kind"]}

    @app.get("/train/{model:path}")
    def train_state(model: str):
        check_model_name(model)
        job = jobs.find(model)
        if job is None:
            return {"model": model, "status": "idle", "message": "no training job since the server started"}
        return job.state()

    @app.delete("/train")
    def cancel_all():
        return {"cancelled": [j.key for j in jobs.cancel_all()]}

    @app.delete("/train/{model:path}", status_code=202)
    def cancel(model: str):
        check_model_name(model)
        job = jobs.find(model)
        if job is None:
            raise NotFoundError(f"model: no training job for {model!r} since the server started; nothing to cancel")
        state = job.state()
        if job.done:
            raise ConflictError(f"model: the job {job.id} for {model!r} already ended ({state.get('status')}); "
                                "nothing to cancel")
        job.cancel()
        return {**state, "status": "cancelling",
                "message": "cancel requested; the job stops after the training step in progress"}

    return app
