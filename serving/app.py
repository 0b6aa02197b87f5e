"""HTTP JSON ranking service (FastAPI + uvicorn): ``saviorrec serve``, port serving.port (8080).

- ``POST /rank`` {"user_id": int, "item_ids": [int, ...]} -> the items with scores, best first,
  the model and RQ-VAE versions, and which candidates had no features (scored with defaults).
  The body is read as JSON whatever its Content-Type: a plain `curl -d` works.
- ``GET /healthz``: the process is up (``worker``: the process id of the worker that answered).
  ``GET /readyz``: the store can be read, the model scores.
- ``POST /items`` {"items": [{"item_id", "title", "genres", "overview", "poster_path"}, ...]}:
  onboard new items (only when the service was given an onboarder: ``saviorrec serve`` with
  ``onboard.in_service``); they are scored with their own features from the next request on.
- ``GET /metrics``: counters in the Prometheus text format.
- ``GET /``: a page to look at (choose a user, rank, onboard; serving/page.py).
- ``GET /openapi.json`` (and ``/docs``): the contract, every response described.

Errors: 413 for a body over ``serving.max_body_bytes``, refused before it is read; 422 for a
body that is not JSON, wrong types, ids out of int64, duplicates or more than
``serving.max_candidates`` candidates (where and why, never the whole input back); 503 naming
the online store (host:port or path, never a password) while it cannot be read, recovering by
itself when it is back; 500 when the store's semantic ids are of another RQ-VAE version than
the model's. docs/serving.md has examples of each.

``serving.workers`` > 1 runs that many uvicorn worker processes on one port (uvicorn's own
supervisor restarts a worker that dies); each builds its own app from the config handed down in
``$SAVIORREC_SERVE_WORKER`` (:func:`worker_app`): its own model, store connections, item cache
and onboarding models, TensorFlow threads split between them (serving.service.tf_threads).
/metrics sums every worker's counters (serving.counters); /healthz, /readyz and the page answer
for the worker that accepted the connection. POST /items drops the items it pushed from that
worker's item cache only: the other workers read them from the store on their next request when
``serving.item_cache_missing_ttl_s`` is 0 (the default: an item without a row is never cached),
else within that many seconds, as for an item added by ``saviorrec items add``.
"""

# No `from __future__ import annotations`: FastAPI resolves the request dependency built in
# create_app from the endpoint's real annotation.

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from feature_repo.online import OnlineStoreUnavailable
from saviorrec.config import Config
from saviorrec.datasets.badrows import BadInputError
from saviorrec.datasets.new_items import OnboardRefused
from serving.api import (
    BODY_SHAPE,
    Health,
    InvalidRequest,
    ItemsResponse,
    Problem,
    RankResponse,
    Readiness,
    StoreProblem,
    exact_openapi,
    invalid_request,
    items_request_model,
    parse_json_body,
    parse_rank_body,
    request_body,
    request_model,
)
from serving.body_limit import BodyLimit, BodyTooLarge
from serving.features import StoreUnavailable
from serving.page import add_page_routes
from serving.redact import install_log_redaction, redact, secrets_of
from serving.service import RankingService
from serving.tensors import FeatureShapeError
from serving.versions import VersionMismatch

log = logging.getLogger(__name__)

RANK_PATH = "/rank"
ITEMS_PATH = "/items"
ITEMS_SHAPE = '{"items": [{"item_id": int, "title", "genres", "overview", "poster_path"}, ...]}'
# Onboards schema.ITEMS rows given as POST /items records; returns the onboarding report.
Onboard = Callable[[list[dict[str, Any]]], dict[str, Any]]
# serving.workers > 1: what serve() hands each worker process, as JSON ({"config", "metrics"}).
WORKER_ENV = "SAVIORREC_SERVE_WORKER"
# Seconds a worker may take to answer uvicorn's supervisor before it is killed and replaced
# (uvicorn's default, 5, is shorter than loading TensorFlow and compiling the model on a busy
# machine).
WORKER_HEALTHCHECK_S = 120


def _json(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(payload), status_code=status, media_type="application/json")


def _rank_responses(max_body_bytes: int, max_candidates: int) -> dict[int | str, Any]:
    return {
        413: {"model": Problem, "description": f"a body over serving.max_body_bytes "
                                               f"({max_body_bytes} bytes), refused unread"},
        422: {"model": InvalidRequest, "description": f"not {BODY_SHAPE}: not JSON, wrong "
              f"types, ids out of int64, duplicates, 0 or more than {max_candidates} "
              "candidates"},
        500: {"model": Problem, "description": "the store's semantic ids are of another "
                                               "RQ-VAE version than the model's"},
        503: {"model": StoreProblem, "description": "the online store cannot be read"},
    }


def create_app(cfg: Config, service: RankingService | None = None,
               onboard: Onboard | None = None) -> FastAPI:
    """The app; ``service`` defaults to ``RankingService.start(cfg)`` (model, store, checks).

    ``onboard`` (``saviorrec.onboard.Onboarder.add_records``, handed in by the CLI: this package
    may not import the encoder) adds POST /items; without it the route does not exist."""
    install_log_redaction(secrets_of(cfg))
    svc = service if service is not None else RankingService.start(cfg)
    counters = svc.counters
    serving = cfg.serving
    app = FastAPI(title="saviorrec ranking service", version=svc.ranker.model_version,
                  description=__doc__)
    app.state.service = svc
    RankRequest = request_model(serving.max_candidates)
    app.openapi = exact_openapi(  # type: ignore[method-assign]
        app, [RankRequest, RankResponse, InvalidRequest, Problem, StoreProblem, Health, Readiness])

    def count(path: str, status: int) -> None:
        if path == RANK_PATH:
            counters.requests.labels(str(status)).inc()

    def too_large(path: str) -> Response:
        count(path, 413)
        return _json({"detail": f"the request body is larger than serving.max_body_bytes = "
                                f"{serving.max_body_bytes} bytes; a request ranks at most "
                                f"serving.max_candidates = {serving.max_candidates} items"}, 413)

    app.add_middleware(BodyLimit, max_bytes=serving.max_body_bytes, refusal=too_large)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        count(request.url.path, 422)
        return _json(invalid_request(exc.errors()), 422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if isinstance(exc, BodyTooLarge):
            return too_large(request.url.path)
        count(request.url.path, exc.status_code)
        return await http_exception_handler(request, exc)

    async def rank_request(request: Request) -> BaseModel:
        return parse_rank_body(await request.body(), RankRequest)

    @app.post(RANK_PATH, response_model=RankResponse, openapi_extra=request_body(RankRequest),
              responses=_rank_responses(serving.max_body_bytes, serving.max_candidates))
    def rank(body: Annotated[BaseModel, Depends(rank_request)]) -> Response:
        """Score the candidates for the user, best first."""
        try:
            result = svc.rank(body.user_id, body.item_ids)  # type: ignore[attr-defined]
        except StoreUnavailable as e:
            counters.store_unavailable.inc()
            counters.requests.labels("503").inc()
            return _json({"detail": str(e), "store": svc.reader.name}, 503)
        except (VersionMismatch, FeatureShapeError) as e:
            log.error("%s", e)
            counters.requests.labels("500").inc()
            return _json({"detail": str(e)}, 500)
        except Exception as e:  # never a traceback or a secret in the response
            log.exception("rank failed")
            counters.requests.labels("500").inc()
            return _json({"detail": redact(f"internal error: {type(e).__name__}: {e}")}, 500)
        counters.requests.labels("200").inc()
        return _json(result)

    @app.get("/healthz", response_model=Health)
    def healthz() -> dict[str, Any]:
        """The process is up (says nothing about the store)."""
        return {"status": "ok", "model_version": svc.ranker.model_version,
                "worker": os.getpid()}

    @app.get("/readyz", response_model=Readiness,
             responses={503: {"model": Readiness, "description": "not ready: see checks"}})
    def readyz() -> Response:
        """Ready when the online store can be read and the model scores."""
        checks: dict[str, str] = {}
        try:
            svc.reader.ping()
            checks["store"] = "ok"
            svc.verify_version()
            checks["rqvae_version"] = "ok" if svc.version_verified else "unchecked"
        except StoreUnavailable as e:
            checks["store"] = str(e)
        except VersionMismatch as e:
            checks["rqvae_version"] = str(e)
        try:
            svc.ranker.predict(svc.dummy_inputs(1))
            checks["model"] = "ok"
        except Exception as e:  # noqa: BLE001 (reported in the check)
            checks["model"] = redact(f"{type(e).__name__}: {e}")
        ready = checks.get("store") == "ok" and checks["model"] == "ok" and \
            checks.get("rqvae_version") in ("ok", "unchecked")
        return _json({"ready": ready, "checks": checks, "store": svc.reader.name},
                     200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format 0.0.4"}})
    def metrics() -> Response:
        """Counters and latency histograms in the Prometheus text format."""
        return Response(counters.render(), media_type="text/plain; version=0.0.4")

    if onboard is not None:
        add_items_route(app, svc, onboard, serving.max_candidates)
    add_page_routes(app, svc, onboarding=onboard is not None)
    return app


def add_items_route(app: FastAPI, svc: RankingService, onboard: Onboard, max_items: int) -> None:
    """POST /items: onboard, then drop the items from the item cache so that the very next
    request reads their pushed rows."""
    ItemsRequest = items_request_model(max_items)
    app.openapi_schema = None
    app.openapi = exact_openapi(  # type: ignore[method-assign]
        app, [ItemsRequest, ItemsResponse, InvalidRequest, Problem, StoreProblem])

    async def items_request(request: Request) -> BaseModel:
        return parse_json_body(await request.body(), ItemsRequest, ITEMS_SHAPE)

    @app.post(ITEMS_PATH, response_model=ItemsResponse, openapi_extra=request_body(ItemsRequest),
              responses={
                  409: {"model": Problem, "description": "refused: an id that exists with "
                        "other content, an item without text or image under onboard.no_content: "
                        "refuse, or models of another version; nothing was written"},
                  422: {"model": InvalidRequest, "description": f"not {ITEMS_SHAPE}, or a "
                        "field that cannot be used (e.g. a poster that is not a file)"},
                  503: {"model": StoreProblem, "description": "the online store cannot be "
                        "written; nothing was written"}})
    def add_items(body: Annotated[BaseModel, Depends(items_request)]) -> Response:
        """Onboard new items: embed, assign semantic ids, push to the online and offline store."""
        records = [item.model_dump(exclude_none=True)
                   for item in body.items]  # type: ignore[attr-defined]
        try:
            result = onboard(records)
        except BadInputError as e:
            return _json(invalid_request([{"loc": ("body", "items"), "msg": str(e),
                                           "type": "value_error"}]), 422)
        except OnboardRefused as e:
            return _json({"detail": str(e)}, 409)
        except (StoreUnavailable, OnlineStoreUnavailable) as e:
            return _json({"detail": redact(str(e)), "store": svc.reader.name}, 503)
        except Exception as e:  # never a traceback or a secret in the response
            log.exception("onboarding failed")
            return _json({"detail": redact(f"internal error: {type(e).__name__}: {e}")}, 500)
        if svc.reader.item_cache is not None:
            svc.reader.item_cache.invalidate(result["added"])
        return _json({k: result[k] for k in ItemsResponse.model_fields})


def _configure_logging(cfg: Config) -> None:
    logging.basicConfig(level=cfg.serving.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def worker_app(make_onboard: Callable[[Config], Onboard | None] | None = None) -> FastAPI:
    """The app of one worker process (serving.workers > 1; a uvicorn factory): the config and
    the metrics folder from ``$SAVIORREC_SERVE_WORKER``; ``make_onboard(cfg)`` gives POST
    /items its onboarder (the CLI's: this package may not import the encoder)."""
    handed = json.loads(os.environ[WORKER_ENV])
    cfg = Config.model_validate(handed["config"])
    _configure_logging(cfg)
    service = RankingService.start(cfg)
    service.counters.share(Path(handed["metrics"]))
    return create_app(cfg, service, onboard=make_onboard(cfg) if make_onboard else None)


def serve(cfg: Config, host: str | None = None, port: int | None = None,
          onboard: Onboard | None = None, worker_factory: str = "serving.app:worker_app"
          ) -> None:
    """Run the service with uvicorn until interrupted: one process (sync handlers in threads),
    or serving.workers processes, each built by ``worker_factory`` (a uvicorn factory import
    string, :func:`worker_app` or one that calls it; ``onboard`` is then not used)."""
    import uvicorn

    _configure_logging(cfg)
    where = {"host": host if host is not None else cfg.serving.host,
             "port": port if port is not None else cfg.serving.port,
             "log_level": cfg.serving.log_level, "access_log": False}
    if cfg.serving.workers == 1:
        uvicorn.run(create_app(cfg, onboard=onboard), **where)
        return
    metrics = Path(tempfile.mkdtemp(prefix="saviorrec-serve-metrics-"))
    os.environ[WORKER_ENV] = json.dumps({"config": cfg.model_dump(mode="json"),
                                         "metrics": str(metrics)})
    log.info("starting %d workers (%s)", cfg.serving.workers, worker_factory)
    try:
        uvicorn.run(worker_factory, factory=True, workers=cfg.serving.workers,
                    timeout_worker_healthcheck=WORKER_HEALTHCHECK_S, **where)
    finally:
        shutil.rmtree(metrics, ignore_errors=True)
