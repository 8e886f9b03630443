"""The FastAPI application: the page, the JSON API, a results folder, and the safety rules.

Routes (OpenAPI docs at ``/docs``, schema at ``/openapi.json``):

* ``GET /`` the search page; ``GET /results`` the results folder (table, figures, worst queries);
* ``GET /api/info`` what is served; ``GET /api/images?which=database|queries&offset=&limit=`` ids to browse;
* ``GET /api/search?id=ID&k=&v=&where=`` search with a stored image; ``POST /api/search`` (multipart
  ``file``, form fields ``k``, ``v`` and ``where``) search with an uploaded image; ``where`` (repeatable,
  ``COLUMN OP VALUE`` such as ``label=cat`` or ``date>=2024-01-01``) restricts the search to the rows
  whose metadata meets every condition, inside the search (a bad filter: 400);
* ``POST /api/add`` (multipart ``files``) add images to the served collection: only with
  ``allow_add`` (``retrieval serve --allow-add``), else 403 (:mod:`.adding`);
* ``GET /api/image/{id}?size=`` an indexed image (or a dataset query), by id only; ``size`` gives a
  JPEG thumbnail whose longest side is at most that many pixels;
* ``GET /api/matches?query=ID&db=ID`` the local matches of a pair as lines;
* ``GET /results/figures/{name}`` a figure of the results folder, by name only.

A collection folder is served by a :class:`~retrieval.serve.live.LiveCatalog`: every request reads the
catalog of the newest generation once and is served from it to the end (:mod:`.live`).

Safety: ids and figure names are looked up in tables built at start-up, never joined to a path; uploads
are capped in bytes (the request body too, before it is parsed) and pixels (:mod:`.uploads`); every error
is a JSON ``{"error": message}`` with a 4xx status, and an unexpected exception is logged and answered
500 with a one-line message, never a traceback.
"""
from __future__ import annotations

import logging
from importlib import resources
from typing import List, Optional

from fastapi import FastAPI, File, Form, HTTPException, Query as Q, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from retrieval.serve.catalog import Catalog, FilterError, UnsupportedUpload
from retrieval.serve.images import ImageCache
from retrieval.serve.page import render_page, render_results
from retrieval.serve.results import MEDIA_TYPES, ResultsFolder
from retrieval.serve.search import MAX_K, pair_matches, search
from retrieval.serve.uploads import UploadError, UploadLimits, decode_upload

__all__ = ["create_app"]

log = logging.getLogger("retrieval.serve")
# a multipart body carries the file plus a few small fields and boundaries
_FORM_OVERHEAD = 64 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class BodyLimit:
    """ASGI middleware: a request whose body is larger than ``limit`` bytes is answered 413 before the
    application reads it (Content-Length checked up front; a body without one is counted as it
    streams)."""

    def __init__(self, app, limit: int, paths: Optional[dict] = None):
        self.app, self.limit = app, int(limit)
        self.paths = dict(paths or {})  # path -> its own limit (an add takes several files)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.paths.get(scope.get("path"), self.limit)
        length = dict(scope.get("headers") or []).get(b"content-length")
        message = f"request body larger than the {limit} bytes an upload may have"
        if length is not None:
            try:
                too_big = int(length) > limit
            except ValueError:
                return await _error(400, "malformed Content-Length header")(scope, receive, send)
            if too_big:
                return await _error(413, message)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            event = await receive()
            if event["type"] == "http.request":
                seen += len(event.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, message)
            return event

        return await self.app(scope, counted, send)


class _Fixed:
    """A catalog that never changes, read as a :class:`~retrieval.serve.live.LiveCatalog` is."""

    def __init__(self, catalog: Catalog):
        self.current = catalog


def create_app(catalog, results: Optional[ResultsFolder] = None,
               limits: Optional[UploadLimits] = None, default_k: int = 20, default_v: Optional[float] = None,
               allow_add: bool = False, add_extractor=None) -> FastAPI:
    """The application serving ``catalog`` (a :class:`Catalog`, or a :class:`~retrieval.serve.live.LiveCatalog`
    of a collection) and ``results`` when given. ``allow_add``: ``POST /api/add`` adds uploaded images
    to the collection (``add_extractor``: the global extractor it uses; default: built by the add step)."""
    from retrieval.serve.adding import MAX_ADD_FILES, Adder

    limits = limits or UploadLimits()
    live = catalog if hasattr(catalog, "current") else _Fixed(catalog)
    adder = None
    if allow_add:
        from retrieval.serve.live import LiveCatalog

        if not isinstance(live, LiveCatalog):
            raise ValueError("adding images needs a collection folder (retrieval index build --collection)")
        adder = Adder(live, limits, add_extractor)
    app = FastAPI(title="hybrid-retrieval serve",
                  description="Search a saved index by id or by uploaded image; local evidence, fusion, "
                              "ground truth, metadata filters.", version="1")
    app.state.live, app.state.results, app.state.limits = live, results, limits
    thumbs = ImageCache(live.current)
    rendered: dict = {}

    # -- errors: always JSON, never a traceback ---------------------------------------------------
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body", "path"))
            parts.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError):
        return _error(exc.status, exc.message)

    @app.exception_handler(FilterError)
    async def filter_error(request: Request, exc: FilterError):
        return _error(400, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    def urls(catalog: Catalog):
        """``image_url(id)`` of the catalog a request is served from."""
        from urllib.parse import quote

        return lambda image_id: f"/api/image/{quote(image_id, safe='')}" if catalog.has_image(image_id) else None

    def known_query(catalog: Catalog, image_id: str):
        try:
            return catalog.query(image_id)
        except KeyError:
            raise HTTPException(404, f"no image with id {image_id!r} in this index") from None

    # -- pages ------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        catalog = live.current
        # the slider starts at the served fusion's weight (the experiment's choice, else the default's)
        start_v = default_v if default_v is not None else (catalog.fusion.v if catalog.fusion.method == "linear" else 1.0)
        return render_page(catalog, results is not None, default_k, start_v, limits, allow_add=adder is not None)

    @app.get("/results", response_class=HTMLResponse, include_in_schema=False)
    def results_page():
        if results is None:
            raise HTTPException(404, "no results folder is served (start with --experiment DIR)")
        if "results" not in rendered:  # the folder and the index do not change while served
            rendered["results"] = render_results(results, live.current)
        return rendered["results"]

    @app.get("/results/figures/{name}", include_in_schema=False)
    def figure(name: str):
        path = results.figure(name) if results is not None else None
        if path is None:
            raise HTTPException(404, f"no figure named {name!r} in the results folder")
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix.lower()])

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        types = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in types:
            raise HTTPException(404, f"no static file {name!r}")
        text = resources.files("retrieval.serve").joinpath("static", name).read_text()
        return Response(text, media_type=types[name])

    # -- API --------------------------------------------------------------------------------------
    @app.get("/api/info", summary="What is served")
    def info():
        return {**live.current.describe(), "allow_add": adder is not None,
                "last_swap": getattr(live, "last_swap", None),  # a collection: what loading its last generation took
                "limits": limits.to_dict(), "results": results is not None,
                "default_k": default_k, "default_v": default_v, "max_k": MAX_K}

    @app.get("/api/images", summary="Ids to browse (database or queries), in index order")
    def images(which: str = Q("database", pattern="^(database|queries)$"), offset: int = Q(0, ge=0),
               limit: int = Q(48, ge=1, le=500)):
        catalog = live.current
        ids, total = catalog.page_of_ids(which, offset, limit)
        image_url = urls(catalog)
        return {"which": which, "offset": offset, "total": total,
                "items": [{"id": i, "image": image_url(i)} for i in ids]}

    where_help = "metadata condition COLUMN OP VALUE (OP: = != < <= > >= ~prefix), repeatable: all must hold"

    @app.get("/api/search", summary="Search with a stored image, by id")
    def search_by_id(id: str = Q(..., min_length=1, max_length=1024), k: int = Q(default_k, ge=1, le=MAX_K),
                     v: Optional[float] = Q(default_v, ge=0.0, le=1.0),
                     where: List[str] = Q([], max_length=512, description=where_help)):
        catalog = live.current
        return search(catalog, known_query(catalog, id), k=k, v=v, where=where).to_json(urls(catalog))

    @app.post("/api/search", summary="Search with an uploaded image (multipart field 'file')")
    def search_by_upload(file: UploadFile = File(...), k: int = Form(default_k, ge=1, le=MAX_K),
                         v: Optional[float] = Form(default_v, ge=0.0, le=1.0),
                         where: List[str] = Form([], description=where_help)):
        catalog = live.current
        catalog.mask(where)  # a bad filter is refused before the upload is described
        data = file.file.read(limits.max_bytes + 1)
        name = (file.filename or "upload")[:200]
        image = decode_upload(data, limits, name=name)
        try:
            query = catalog.upload_query(data, image)
        except UnsupportedUpload as exc:
            raise HTTPException(409, str(exc)) from None
        out = search(catalog, query, k=k, v=v, where=where).to_json(urls(catalog))
        out["query"].update(name=name, width=int(image.shape[1]), height=int(image.shape[0]))
        return out

    @app.get("/api/image/{image_id:path}", summary="An indexed image (or a dataset query), by id",
             responses={200: {"content": {"image/jpeg": {}}}})
    def image(image_id: str, size: Optional[int] = Q(None, ge=16, le=2048)):
        catalog = live.current
        if not catalog.has_image(image_id):
            raise HTTPException(404, f"no image with id {image_id!r} in this index")
        try:
            data, media_type = thumbs.get(image_id, size, catalog)
        except ValueError as exc:  # a file that went bad since the index was built
            raise HTTPException(410, str(exc)) from None
        return Response(data, media_type=media_type, headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/matches", summary="Local matches between a query and a database image, as lines")
    def matches(query: str = Q(..., min_length=1, max_length=1024), db: str = Q(..., min_length=1, max_length=1024)):
        catalog = live.current
        if not catalog.has_local:
            raise HTTPException(409, "no local-feature store is served (start with --local STORE)")
        q = known_query(catalog, query)
        if db not in catalog or catalog.kind(db) != "database":
            raise HTTPException(404, f"no database image with id {db!r} in this index")
        try:
            return pair_matches(catalog, q, db)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.post("/api/add", summary="Add uploaded images to the served collection (multipart field 'files'; "
                                  "needs retrieval serve --allow-add)")
    def add(files: List[UploadFile] = File(...)):
        if adder is None:
            raise HTTPException(403, "adding images is off: start retrieval serve with --allow-add (a collection "
                                     "folder, on this machine's loopback address)")
        return adder.add([((f.filename or "upload")[:200], f.file.read(limits.max_bytes + 1)) for f in files])

    app.add_middleware(BodyLimit, limit=limits.max_bytes + _FORM_OVERHEAD,
                       paths={"/api/add": MAX_ADD_FILES * (limits.max_bytes + _FORM_OVERHEAD)})
    return app
