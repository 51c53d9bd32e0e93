"""The link proxy's control API: read and change links at run time, metrics, fidelity reports.

``GET /healthz``, ``GET /v1/links``, ``GET|PUT /v1/links/{name}``,
``PUT /v1/links/{name}/fidelity``, ``GET /v1/paths``, ``GET /v1/paths/{name}``,
``PUT /v1/paths/{name}/fidelity``, ``GET /metrics``. A path is changed through its hops' links
(``PUT /v1/links/{hop}``): every path crossing that link changes at once; a path's name under
``/v1/links/`` is a 404 saying so. GETs are open; with a token
(``LinkProxySet(token=...)``, ``--token-file``) every PUT needs ``Authorization: Bearer
<token>``. Every error answers the shared shape of :func:`common.httperrors.error_body`
(``{"detail", "field", "errors"}``): 400 malformed JSON, 401 missing or wrong token, 404
unknown link or path (field ``name``, the allowed names in ``detail``), 422 a bad field (named,
with its allowed range).
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.httperrors import error_body, pydantic_errors
from netem.spec import _DIRECTION_KEYS, MAX_DELAY_MS, MAX_RATE_MBIT, LinkSpec

if TYPE_CHECKING:
    from netem.proxy import LinkProxySet, LinkRuntime, PathRuntime

log = logging.getLogger("edgebed.link.control")

FIXED_KEYS = ("src", "dst", "listen", "target")  # set when the proxy starts, never by a PUT
CHANGE_KEYS = ("rtt_range_ms", "direction", "up", "down", *_DIRECTION_KEYS)


class ChangeError(ValueError):
    """A bad PUT body, naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def merge_spec(spec: LinkSpec, changes: Mapping[str, Any]) -> LinkSpec:
    """Apply a partial update (the control API's PUT body) to ``spec``.

    ``rtt_range_ms`` replaces both directions; top-level direction keys (``delay_ms``, ...)
    update the direction(s) named by ``direction`` (``up``, ``down`` or ``both``, default
    ``both``); ``up``/``down`` objects update those directions field by field. Changing
    ``delay_ms``/``jitter_ms``/``distribution`` without ``integer_ms`` resets ``integer_ms``.
    ``src``, ``dst``, ``listen`` and ``target`` are fixed when the proxy starts. Raises
    :class:`ChangeError` or pydantic's ``ValidationError``, both naming the field.
    """
    changes = dict(changes)
    for key in FIXED_KEYS:
        if key in changes:
            raise ChangeError(key, f"{key} cannot change at run time (the proxy listens and "
                                   f"forwards where it was started: restart it with a new "
                                   f"config); changeable: {', '.join(CHANGE_KEYS)}")
    unknown = sorted(k for k in changes if k not in CHANGE_KEYS)
    if unknown:
        raise ChangeError(unknown[0], f"unknown keys {unknown}; allowed: "
                                      f"{', '.join(CHANGE_KEYS)}")
    base = spec.model_dump(exclude={"rtt_range_ms"})
    if "rtt_range_ms" in changes:
        rtt = changes.pop("rtt_range_ms")
        if rtt is None:
            raise ChangeError("rtt_range_ms", f"rtt_range_ms must be a pair [lo, hi] of "
                                              f"integers within 0..{MAX_DELAY_MS:g}, got null")
        extra = {k: changes.pop(k) for k in list(changes) if k in _DIRECTION_KEYS}
        if changes:
            raise ChangeError(sorted(changes)[0],
                              f"rtt_range_ms cannot be combined with {sorted(changes)}")
        base.pop("up"), base.pop("down")
        return LinkSpec.model_validate({**base, **extra, "rtt_range_ms": rtt})
    direction = changes.pop("direction", "both")
    if not isinstance(direction, str) or direction not in ("up", "down", "both"):
        raise ChangeError("direction", f"direction must be one of up, down, both, got "
                                       f"{direction!r}"[:200])
    shared = {k: changes.pop(k) for k in list(changes) if k in _DIRECTION_KEYS}
    for d in ("up", "down"):
        own = changes.pop(d, None)
        if own is None:
            own = {}
        if not isinstance(own, Mapping):
            raise ChangeError(d, f"{d} must be an object of direction fields "
                                 f"({', '.join(_DIRECTION_KEYS)}), got {type(own).__name__}")
        upd = {**(shared if direction in (d, "both") else {}), **own}
        if upd.keys() & {"delay_ms", "jitter_ms", "distribution"} and "integer_ms" not in upd:
            upd["integer_ms"] = False
        base[d] = {**base[d], **upd}
    return LinkSpec.model_validate(base)


_KEY_AT_START = re.compile(r"([A-Za-z_]\w*(?:\[\d+\])?) (?:must|cannot|needs)\b")


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors as ``[{"field", "msg"}]``; where a whole model failed (its location
    is the model, the message names the key: ``jitter_ms must be within 0..delay_ms``) the
    field is completed from the message (``up.jitter_ms``)."""
    out = pydantic_errors(exc.errors())
    for e in out:
        m = _KEY_AT_START.match(e["msg"])
        if m:
            key, field = m.group(1), e["field"]
            if field is None:
                e["field"] = key
            elif not field.endswith(key):
                e["field"] = f"{field}.{key}"
    return out


def _error(status: int, field: str | None, message: str,
           errors: list[dict[str, Any]] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(field, message, errors), status_code=status, headers=headers)


def _errors_response(status: int, errors: list[dict[str, Any]]) -> JSONResponse:
    text = "; ".join(f"{e['field']}: {e['msg']}" if e["field"] else e["msg"] for e in errors)
    return _error(status, errors[0]["field"] if errors else None, text or "invalid request",
                  errors)


# ---- documented shapes (OpenAPI) -----------------------------------------------------------

class ErrorItem(BaseModel):
    field: str | None
    msg: str


class ErrorBody(BaseModel):
    """Every error: ``detail`` for people, ``field``/``errors`` for programs."""

    detail: str
    field: str | None
    errors: list[ErrorItem]


class DirectionChange(BaseModel):
    """Fields of one direction to change (the rest keep their values)."""

    model_config = ConfigDict(extra="forbid")

    delay_ms: float | None = Field(None, ge=0, le=MAX_DELAY_MS, description="one-way delay")
    jitter_ms: float | None = Field(None, ge=0, le=MAX_DELAY_MS)
    distribution: Literal["uniform", "normal", "pareto"] | None = None
    integer_ms: bool | None = None
    loss_pct: float | None = Field(None, ge=0, le=100)
    loss_rto_ms: float | None = Field(None, ge=0, le=MAX_DELAY_MS)
    rate_mbit: float | None = Field(None, ge=0.001, le=MAX_RATE_MBIT,
                                    description="null = unlimited")


class LinkChange(DirectionChange):
    """A partial update: ``rtt_range_ms`` replaces both directions (with optional loss/rate
    keys); top-level direction fields apply to ``direction`` (default both); ``up``/``down``
    change one direction. ``src``, ``dst``, ``listen`` and ``target`` cannot change."""

    rtt_range_ms: list[int] | None = Field(None, min_length=2, max_length=2,
                                           description="[lo, hi], integers within 0..60000")
    direction: Literal["up", "down", "both"] | None = None
    up: DirectionChange | None = None
    down: DirectionChange | None = None
    cut: bool | None = Field(None, description="true: partition the link (nothing crosses, "
                             "data is held as TCP holds it); false: heal it")


class LinkView(BaseModel):
    name: str
    spec: dict[str, Any]
    description: str
    listen: str | None
    target: str | None
    configured_rtt_mean_ms: float
    open_connections: int
    cut: bool = False
    paths: list[str] = Field(default_factory=list, description="paths crossing this link")


class LinkList(BaseModel):
    links: dict[str, LinkView]


class PathLawView(BaseModel):
    """A path's configured law now: sums over its hops' current specs."""

    hops: list[str]
    nodes: list[str]
    up_mean_ms: float = Field(description="mean one-way request delay: sum of the hops' up means")
    down_mean_ms: float = Field(description="mean one-way answer delay: sum of the hops' down "
                                            "means")
    rtt_mean_ms: float = Field(description="mean round trip: sum of the hops' RTT means")
    description: str


class PathView(BaseModel):
    name: str
    hops: list[str]
    listen: str | None = Field(description="the path's public listener (its first hop)")
    target: str | None
    hop_listeners: list[str] = Field(description="listener per hop, in order: the public one, "
                                                 "then the internal loopback ones")
    configured: PathLawView
    cut_hops: list[str] = Field(description="hops cut now (the path is down while any is)")


class PathList(BaseModel):
    paths: dict[str, PathView]


class HopLog(BaseModel):
    next: int
    columns: list[str]
    hops: list[list[int | float | str]]  # [seq, tag, link, direction, ms]


def link_view(link: LinkRuntime) -> dict[str, Any]:
    spec = link.spec
    return {
        "name": link.name,
        "spec": spec.model_dump(mode="json"),
        "description": spec.describe(),
        "listen": None if link.address is None else f"{link.address[0]}:{link.address[1]}",
        "target": spec.target,
        "configured_rtt_mean_ms": spec.rtt_mean_ms(),
        "open_connections": len(link.connections),
        "cut": link.cut,
        "paths": list(link.paths),
    }


def path_view(path: PathRuntime) -> dict[str, Any]:
    def text(addr: tuple[str, int] | None) -> str | None:
        return None if addr is None else f"{addr[0]}:{addr[1]}"

    return {
        "name": path.name,
        "hops": [h.name for h in path.hops],
        "listen": text(path.address),
        "target": path.spec.target,
        "hop_listeners": [text(li.address) or "" for li in path.listeners],
        "configured": path.law().summary(),
        "cut_hops": [h.name for h in path.hops if h.cut],
    }


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {400: "malformed JSON", 401: "missing or wrong bearer token (PUTs, with a token)",
            404: "unknown link or path (field name; detail lists the names)",
            422: "a bad field, named with its allowed range", 500: "internal error"}
    return {c: {"model": ErrorBody, "description": what[c]} for c in codes}


def create_control_app(links: LinkProxySet, token: str | None = None) -> FastAPI:
    """The control API for ``links``; with ``token``, PUTs need ``Authorization: Bearer``."""
    app = FastAPI(title="edgebed link proxy control", version="1",
                  description=(__doc__ or "").split("\n\n", 1)[-1])
    expected = None if token is None else token.encode()
    put_errors = _errors(400, 401, 404, 422, 500) if token else _errors(400, 404, 422, 500)

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Response:
        if expected is not None and request.method not in ("GET", "HEAD", "OPTIONS"):
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                     expected):
                what = "missing" if not given else "wrong"
                return _error(401, "authorization",
                              f"authorization: {what} bearer token; changing a link needs "
                              f"the header 'Authorization: Bearer <token>' with the token of "
                              f"this stack's token file", headers={"WWW-Authenticate": "Bearer"})
        response: Response = await call_next(request)
        return response

    @app.exception_handler(RequestValidationError)
    async def request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = list(exc.errors())
        if errs and errs[0].get("type") == "json_invalid":
            why = errs[0].get("ctx", {}).get("error", errs[0].get("msg", ""))
            return _error(400, "body", f"body: malformed JSON: {why}")
        items = pydantic_errors(errs)
        for item in items:  # "body.x" -> "x"; the body itself -> "body"
            f = item["field"]
            if f in (None, "body"):
                item["field"] = "body"
            elif isinstance(f, str) and f.startswith(("body.", "path.", "query.")):
                item["field"] = f.split(".", 1)[1]
        return _errors_response(422, items)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, None, str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("control API error")
        return _error(500, None, f"internal error: {type(exc).__name__}")

    def unknown(name: str) -> JSONResponse:
        if name in links.paths:
            hops = ", ".join(h.name for h in links.paths[name].hops)
            return _error(404, "name", f"name: {name!r} is a path, not a link: read it at GET "
                                       f"/v1/paths/{name}; change it through its hops' links "
                                       f"({hops}) with PUT /v1/links/{{hop}}")
        return _error(404, "name", f"name: unknown link {name!r}; links: "
                                   f"{', '.join(sorted(links.links)) or '(none)'}")

    def unknown_path(name: str) -> JSONResponse:
        if name in links.links:
            return _error(404, "name", f"name: {name!r} is a link, not a path: read it at GET "
                                       f"/v1/links/{name}; paths: "
                                       f"{', '.join(sorted(links.paths)) or '(none)'}")
        return _error(404, "name", f"name: unknown path {name!r}; paths: "
                                   f"{', '.join(sorted(links.paths)) or '(none)'}")

    def record_fidelity(name: str, report: dict[str, Any]) -> Any:
        """A probe report of a link or path as its fidelity gauges (422 naming a bad field)."""
        try:
            links.metrics.set_fidelity(name, report)
        except ValueError as exc:
            field = str(exc).split(" ", 1)[0]
            return _error(422, field, str(exc))
        return {"status": "recorded"}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/links", response_model=LinkList)
    def list_links() -> dict[str, Any]:
        return {"links": {n: link_view(lk) for n, lk in links.links.items()}}

    @app.get("/v1/links/{name}", response_model=LinkView, responses=_errors(404))
    def read_link(name: str) -> Any:
        if name not in links.links:
            return unknown(name)
        return link_view(links.links[name])

    @app.put("/v1/links/{name}", response_model=LinkView, responses=put_errors)
    def change_link(name: str, changes: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        if name not in links.links:
            return unknown(name)
        try:
            links.update(name, changes)
        except ValidationError as exc:
            return _errors_response(422, validation_errors(exc))
        except ChangeError as exc:
            return _error(422, exc.field, f"{exc.field}: {exc}"
                          if not str(exc).startswith(exc.field) else str(exc))
        return link_view(links.links[name])

    @app.put("/v1/links/{name}/fidelity", responses=put_errors)
    def put_fidelity(name: str, report: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        if name not in links.links:
            return unknown(name)
        return record_fidelity(name, report)

    @app.get("/v1/hops", response_model=HopLog, responses=_errors(422))
    def list_hops(after: int = Query(0, ge=0, description="sequence number already read"),
                  limit: int = Query(50_000, ge=1, le=200_000)) -> dict[str, Any]:
        """Per-hop times of tagged messages (requests carrying ``x-edgebed-attempt``, and
        their answers): ``[seq, tag, link, direction, ms]`` rows, ms from the arrival of the
        message's first byte at the hop to the write of its last byte. Rows of messages still
        crossing are left for a later call; ``next`` is the ``after`` of that call."""
        rows, last = links.hops_after(after, limit)
        return {"next": last, "columns": ["seq", "tag", "link", "direction", "ms"],
                "hops": rows}

    @app.get("/v1/paths", response_model=PathList)
    def list_paths() -> dict[str, Any]:
        return {"paths": {n: path_view(p) for n, p in links.paths.items()}}

    @app.get("/v1/paths/{name}", response_model=PathView, responses=_errors(404))
    def read_path(name: str) -> Any:
        if name not in links.paths:
            return unknown_path(name)
        return path_view(links.paths[name])

    @app.put("/v1/paths/{name}/fidelity", responses=put_errors)
    def put_path_fidelity(name: str, report: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        """Store a path's probe report as the fidelity gauges, labelled ``link=<path name>``
        (paths and links share one name space)."""
        if name not in links.paths:
            return unknown_path(name)
        return record_fidelity(name, report)

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}})
    def metrics() -> Response:
        return Response(generate_latest(links.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    _document(app, sorted(links.links), token, sorted(links.paths))
    return app


def _document(app: FastAPI, names: list[str], token: str | None,
              path_names: list[str] | None = None) -> None:
    """Publish the PUT body's real schema (:class:`LinkChange`; the handler validates the
    body itself, to name bad fields), the link and path names (fixed when the proxy starts)
    and, with a token, the bearer scheme of the PUTs."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        schema = LinkChange.model_json_schema(ref_template="#/components/schemas/{model}")
        components = doc.setdefault("components", {})
        components.setdefault("schemas", {}).update(schema.pop("$defs", {}))
        components["schemas"]["LinkChange"] = schema
        put = doc["paths"]["/v1/links/{name}"]["put"]
        put["requestBody"]["content"]["application/json"]["schema"] = {
            "$ref": "#/components/schemas/LinkChange"}
        for route, path in doc["paths"].items():
            allowed = path_names if route.startswith("/v1/paths/") else names
            for op in path.values():
                for param in op.get("parameters", []):
                    if param["name"] == "name" and param["in"] == "path" and allowed:
                        param["schema"] = {"type": "string", "enum": allowed}
        if token is not None:
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path in doc["paths"].values():
                if "put" in path:
                    path["put"]["security"] = [{"bearer": []}]
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
