"""HTTP JSON ranking service (FastAPI + uvicorn): ``saviorrec serve``.

- ``POST /rank`` {"user_id": int, "item_ids": [int, ...]} -> the items with scores, best first,
  the model and RQ-VAE versions, and which candidates had no features (scored with defaults).
- ``GET /healthz``: the process is up. ``GET /readyz``: the store answers and the model scores.
- ``GET /metrics``: counters in the Prometheus text format.

Errors: 422 for a malformed body, wrong types, ids out of range, duplicates or more than
``serving.max_candidates`` candidates (the reason in ``detail``); 503 naming the online store
(host:port or path, never a password) while it is unreachable, recovering by itself when it is
back; 500 when the store's semantic ids are of another RQ-VAE version than the model's.
"""

# No `from __future__ import annotations`: FastAPI resolves the request model built in
# create_app from the endpoint's real annotation.

import json
import logging
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from saviorrec.config import Config
from saviorrec.serving.features import StoreUnavailable
from saviorrec.serving.redact import install_log_redaction, redact, secrets_of
from saviorrec.serving.service import RankingService
from saviorrec.serving.tensors import FeatureShapeError
from saviorrec.serving.versions import VersionMismatch

log = logging.getLogger(__name__)

INT64_MAX = 2**63 - 1


def _unique(item_ids: list[int]) -> list[int]:
    if len(set(item_ids)) != len(item_ids):
        seen: set[int] = set()
        dupes = sorted({i for i in item_ids if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate item ids {dupes[:10]}")
    return item_ids


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def request_model(max_candidates: int) -> type[BaseModel]:
    """The body of POST /rank, with the configured candidate limit."""
    item_id = Annotated[int, Field(ge=1, le=INT64_MAX)]
    return create_model(
        "RankRequest", __base__=_Strict,
        user_id=(Annotated[int, Field(ge=0, le=INT64_MAX)], ...),
        item_ids=(Annotated[list[item_id], Field(min_length=1, max_length=max_candidates),
                            AfterValidator(_unique)], ...),
    )


def _json(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(payload), status_code=status, media_type="application/json")


def create_app(cfg: Config, service: RankingService | None = None) -> FastAPI:
    """The app; ``service`` defaults to ``RankingService.start(cfg)`` (model, store, checks)."""
    install_log_redaction(secrets_of(cfg))
    svc = service if service is not None else RankingService.start(cfg)
    counters = svc.counters
    app = FastAPI(title="saviorrec ranking service", version=svc.ranker.model_version)
    app.state.service = svc
    RankRequest = request_model(cfg.serving.max_candidates)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        counters.requests.labels("422").inc()
        return await request_validation_exception_handler(request, exc)

    @app.post("/rank")
    def rank(body: RankRequest) -> Response:  # type: ignore[valid-type]
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

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "model_version": svc.ranker.model_version}

    @app.get("/readyz")
    def readyz() -> Response:
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

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(counters.render(), media_type="text/plain; version=0.0.4")

    return app


def serve(cfg: Config, host: str | None = None, port: int | None = None) -> None:
    """Run the service with uvicorn until interrupted (one process; sync handlers in threads)."""
    import uvicorn

    logging.basicConfig(level=cfg.serving.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(cfg)
    uvicorn.run(app, host=host or cfg.serving.host, port=port or cfg.serving.port,
                log_level=cfg.serving.log_level, access_log=False)
