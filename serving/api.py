"""The HTTP contract of the ranking service: request and response models, and an exact OpenAPI.

Every body the service sends has a model here, so ``/openapi.json`` describes each response
(schemathesis checks the running service against it: tests/test_service_process.py). Ids are
int64 (``format: int64``, bounds 0 or 1 to 2**63 - 1). FastAPI's OpenAPI models turn numeric
bounds into floats (2**63 - 1 becomes 2**63, which the service then refuses), so
:func:`exact_openapi` puts pydantic's own schemas of these models back into the document.

:func:`parse_rank_body` reads POST /rank's body as JSON whatever the Content-Type (a plain
``curl -d`` sends ``application/x-www-form-urlencoded``): the endpoint only reads features and
scores, so a cross-site form post can change nothing, and the caller gets its ranking instead
of "Input should be a valid dictionary". Numbers with a fraction part are parsed as Decimal:
JSON Schema counts 7.0 as an integer, and an id written so is taken exactly (a float would
round ids above 2**53), while 7.5 stays refused.
"""

# No `from __future__ import annotations`: pydantic's create_model reads the annotations.

import json
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Annotated, Any, NoReturn

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
)

INT64_MAX = 2**63 - 1
SHORT_INPUT = 64  # characters of an invalid value (as JSON) that a 422 echoes; longer: left out
MAX_ERRORS = 20  # errors listed in one 422 body (errors_total counts them all)
BODY_SHAPE = '{"user_id": int, "item_ids": [int, ...]}'


def _integral(value: Any) -> Any:
    """7.0 (a Decimal from the JSON text) -> 7; anything else is left to strict int."""
    if isinstance(value, Decimal) and value.is_finite() and value.adjusted() < 19 and \
            value == value.to_integral_value():
        return int(value)
    return value


def _int64(low: int) -> Any:
    # Field before BeforeValidator, or the JSON schema says "ge"/"le" instead of the bounds
    return Annotated[int, Field(ge=low, le=INT64_MAX, json_schema_extra={"format": "int64"}),
                     BeforeValidator(_integral)]


UserId = _int64(0)
ItemId = _int64(1)


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
    item_ids = Annotated[list[ItemId], Field(min_length=1, max_length=max_candidates,
                                             json_schema_extra={"uniqueItems": True}),
                         AfterValidator(_unique)]
    return create_model("RankRequest", __base__=_Strict,
                        user_id=(UserId, ...), item_ids=(item_ids, ...))


class RankedItem(BaseModel):
    item_id: ItemId
    score: float = Field(description="predicted click probability")
    has_features: bool = Field(description="false: no row online, scored with defaults")


class RankResponse(BaseModel):
    user_id: UserId
    model_version: str
    variant: str
    rqvae_version: str | None = Field(description="RQ-VAE version of the model's semantic ids")
    items: list[RankedItem] = Field(description="every candidate, best score first")
    missing_item_ids: list[ItemId] = Field(description="candidates without features, in "
                                                       "request order")
    unknown_user: bool = Field(description="no sequence online: scored as a new user")
    sequence_length: int = Field(ge=0, description="clicks in the user's stored sequence")


class Problem(BaseModel):
    detail: str


class StoreProblem(BaseModel):
    detail: str = Field(description="the online store and the error, never a password")
    store: str = Field(description="the online store: Redis host:port or the sqlite path")


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    input: Any = Field(None, description=f"the invalid value when its JSON is at most "
                                         f"{SHORT_INPUT} characters; absent otherwise")
    ctx: dict[str, Any] | None = None


class InvalidRequest(BaseModel):
    detail: list[FieldError] = Field(description=f"the first {MAX_ERRORS} errors")
    errors_total: int = Field(ge=1)


class Health(BaseModel):
    status: str
    model_version: str
    worker: int = Field(description="process id of the worker that answered "
                                    "(serving.workers > 1 runs several)")


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str] = Field(description="store, rqvae_version and model: 'ok', "
                                               "'unchecked' or what failed")
    store: str


def _echo(value: Any) -> tuple[bool, Any]:
    """(True, value as JSON data) when it is short enough to send back, else (False, None)."""
    if isinstance(value, list | dict | str | bytes) and len(value) > SHORT_INPUT:
        return False, None
    try:
        data = jsonable_encoder(value)
        return len(json.dumps(data)) <= SHORT_INPUT, data
    except (TypeError, ValueError):
        return False, None


def invalid_request(errors: Sequence[Any]) -> dict[str, Any]:
    """A 422 body: where and why, never the whole input back (a 44 MB body once came back)."""
    detail = []
    for error in errors[:MAX_ERRORS]:
        item: dict[str, Any] = {"loc": list(error["loc"]), "msg": error["msg"],
                                "type": error["type"]}
        short, value = _echo(error["input"]) if "input" in error else (False, None)
        if short:
            item["input"] = value
        if error.get("ctx"):
            item["ctx"] = {k: str(v) if isinstance(v, BaseException) else v
                           for k, v in error["ctx"].items()}
        detail.append(item)
    return {"detail": detail, "errors_total": len(errors)}


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not JSON")


def parse_rank_body(raw: bytes, model: type[BaseModel]) -> BaseModel:
    """The body as ``model``; RequestValidationError (422) for anything else, JSON or not."""
    try:
        data = json.loads(raw, parse_float=Decimal, parse_constant=_not_json)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deeply
        raise RequestValidationError([{
            "loc": ("body",), "type": "json_invalid",
            "msg": f"the body is not JSON ({type(e).__name__}: {str(e)[:100]}); "
                   f"POST /rank takes {BODY_SHAPE}"}]) from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])}
                                      for error in e.errors(include_url=False)]) from None


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI requestBody of an endpoint that parses its body with parse_rank_body."""
    return {"requestBody": {
        "required": True,
        "description": "JSON, read as such whatever the Content-Type",
        "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def exact_openapi(app: FastAPI, models: Sequence[type[BaseModel]]) -> Callable[[], dict]:
    """``app.openapi`` with pydantic's own schemas of ``models`` (exact integer bounds)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = generate().setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
        return app.openapi_schema  # type: ignore[return-value]

    return openapi


class NewItem(_Strict):
    """One item to onboard (the movies.csv / overviews.csv layout); only the id is required."""
    item_id: ItemId
    title: str | None = None
    genres: str | None = Field(None, description="pipe separated, e.g. Comedy|Drama")
    tags: str | None = Field(None, description="free text, e.g. 'dark, twist ending' "
                                               "(MovieLens' tags of the item, joined)")
    overview: str | None = None
    poster_path: str | None = Field(None, description="absolute path of the poster on the "
                                                      "service's host")


def items_request_model(max_items: int) -> type[BaseModel]:
    """The body of POST /items: at most ``max_items`` items."""
    items = Annotated[list[NewItem], Field(min_length=1, max_length=max_items)]
    return create_model("ItemsRequest", __base__=_Strict, items=(items, ...))


class ItemsResponse(BaseModel):
    added: list[ItemId] = Field(description="items embedded and pushed now")
    unchanged: list[ItemId] = Field(description="items already there with the same content")
    without_content: list[ItemId] = Field(description="added with neither text nor image: "
                                                      "embedded from the missing-modality tokens")
    seconds: float


def parse_json_body(raw: bytes, model: type[BaseModel], shape: str) -> BaseModel:
    """Like parse_rank_body, for another endpoint's body ``shape``."""
    try:
        data = json.loads(raw, parse_float=Decimal, parse_constant=_not_json)
    except (ValueError, RecursionError) as e:
        raise RequestValidationError([{
            "loc": ("body",), "type": "json_invalid",
            "msg": f"the body is not JSON ({type(e).__name__}: {str(e)[:100]}); "
                   f"expected {shape}"}]) from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])}
                                      for error in e.errors(include_url=False)]) from None
