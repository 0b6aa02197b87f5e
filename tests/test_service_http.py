"""The service's HTTP contract on the real app over the real store (Redis, Feast, SavedModel).

Content types, the body-size limit, 422 bodies that never echo the input, ids written as JSON
numbers with a zero fraction, and an OpenAPI document that describes every response the
service actually sends (each body checked against its documented schema with jsonschema-rs).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient
from test_serving_fixture import (  # noqa: F401 (fixtures)
    Served,
    redis_copy_fixture,
    served_fixture,
)

from saviorrec.config import ServingConfig
from serving.app import create_app

BODY = {"user_id": 1, "item_ids": [5, 1, 12, 3]}
LIMIT = 4096  # serving.max_body_bytes of the small client: 8 candidates fit (64 + 21 * 8)


@pytest.fixture(scope="module")
def client(served: Served) -> TestClient:
    return TestClient(create_app(served.cfg))


@pytest.fixture(scope="module")
def small(served: Served) -> TestClient:
    return TestClient(create_app(served.cfg.with_overrides(
        serving={"max_candidates": 8, "max_body_bytes": LIMIT})))


@pytest.fixture(scope="module")
def openapi(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def conforms(openapi: dict[str, Any], path: str, method: str, response: Any) -> None:
    """``response`` has a documented status, content type and a body valid for its schema."""
    documented = openapi["paths"][path][method]["responses"]
    assert str(response.status_code) in documented, (response.status_code, sorted(documented))
    content = documented[str(response.status_code)]["content"]
    media_type = response.headers["content-type"].split(";")[0]
    assert media_type in content, (media_type, sorted(content))
    schema = content[media_type]["schema"]
    if media_type == "application/json":  # resolve #/components/... within the document
        jsonschema_rs.validator_for({**openapi, **schema}).validate(response.json())


def metric(client: TestClient, status: str) -> float:
    prefix = f'saviorrec_serving_requests_total{{status="{status}"}} '
    lines = [x for x in client.get("/metrics").text.splitlines() if x.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


# --- content types ---------------------------------------------------------------------------
@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded",
                                          "text/plain", "application/json; charset=utf-8"])
def test_a_json_body_is_ranked_whatever_the_content_type(client: TestClient, content_type: str
                                                         | None) -> None:
    """A plain `curl -d` sends application/x-www-form-urlencoded; it used to get 422."""
    expected = client.post("/rank", json=BODY)
    assert expected.status_code == 200
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/rank", content=json.dumps(BODY).encode(), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == expected.json()


@pytest.mark.parametrize("raw", [b"user_id=1&item_ids=2", b"{not json", b"", b"NaN",
                                 b"\xff\xfe\x00garbage", b"[" * 100_000 + b"]" * 100_000])
def test_a_body_that_is_not_json_is_422_naming_the_shape(client: TestClient, openapi: dict,
                                                         raw: bytes) -> None:
    for headers in ({"content-type": "application/json"}, {}):
        response = client.post("/rank", content=raw, headers=headers)
        assert response.status_code == 422, response.text
        error = response.json()["detail"][0]
        assert error["loc"] == ["body"] and error["type"] == "json_invalid"
        assert "the body is not JSON" in error["msg"]
        assert '{"user_id": int, "item_ids": [int, ...]}' in error["msg"]
        conforms(openapi, "/rank", "post", response)


def test_ids_written_with_a_zero_fraction_are_taken_exactly(client: TestClient) -> None:
    """JSON Schema counts 5.0 as an integer; a float would turn 2**53 + 1 into 2**53."""
    as_ints = client.post("/rank", json=BODY).json()
    raw = b'{"user_id": 1.0, "item_ids": [5.0, 1E0, 12.000, 3]}'
    assert client.post("/rank", content=raw).json() == as_ints
    big = 2**53 + 1
    response = client.post("/rank", content=f'{{"user_id": 1, "item_ids": [{big}.0]}}')
    assert response.status_code == 200, response.text
    assert response.json()["missing_item_ids"] == [big]
    for bad in ("5.5", "1e-3", "1e400", '"5"', "true"):
        response = client.post("/rank", content=f'{{"user_id": 1, "item_ids": [{bad}]}}')
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["detail"][0]["loc"] == ["body", "item_ids", 0]


# --- size limit and 422 bodies ----------------------------------------------------------------
def padded(body: dict[str, Any], size: int) -> bytes:
    raw = json.dumps(body).encode()
    return raw + b" " * (size - len(raw))


def test_the_body_limit_itself_is_accepted(small: TestClient) -> None:
    response = small.post("/rank", content=padded({"user_id": 1, "item_ids": [1, 2]}, LIMIT))
    assert response.status_code == 200, response.text


def test_a_body_over_the_limit_is_413_naming_the_setting(small: TestClient, openapi: dict
                                                         ) -> None:
    before = metric(small, "413")
    response = small.post("/rank", content=padded({"user_id": 1, "item_ids": [1, 2]}, LIMIT + 1))
    assert response.status_code == 413
    assert response.json() == {"detail": (
        f"the request body is larger than serving.max_body_bytes = {LIMIT} bytes; a request "
        "ranks at most serving.max_candidates = 8 items")}
    conforms(openapi, "/rank", "post", response)
    assert metric(small, "413") == before + 1


def test_a_streamed_body_over_the_limit_is_413(small: TestClient) -> None:
    """No Content-Length (chunked): counted as it arrives, refused when it crosses the limit."""
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b" " * 1024

    response = small.post("/rank", content=chunks())
    assert response.status_code == 413, response.text
    assert "serving.max_body_bytes = 4096" in response.json()["detail"]


def test_422_never_echoes_the_body(client: TestClient, openapi: dict) -> None:
    """Before: a 44 MB body of 5M ids came back whole in the 422 (39 MB)."""
    too_many = {"user_id": 1, "item_ids": list(range(10**15, 10**15 + 1001))}
    response = client.post("/rank", json=too_many)
    assert response.status_code == 422
    assert len(response.content) < 400
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "item_ids"] and "at most 1000 items" in error["msg"]
    assert "input" not in error
    conforms(openapi, "/rank", "post", response)
    not_ids = {"user_id": 1, "item_ids": [f"item-{i}" for i in range(1000)]}
    response = client.post("/rank", json=not_ids)
    body = response.json()
    assert response.status_code == 422 and body["errors_total"] == 1000
    assert len(body["detail"]) == 20 and len(response.content) < 4000
    assert body["detail"][3] == {"loc": ["body", "item_ids", 3], "type": "int_type",
                                 "msg": "Input should be a valid integer", "input": "item-3"}
    conforms(openapi, "/rank", "post", response)


def test_a_short_invalid_value_is_still_named(client: TestClient) -> None:
    response = client.post("/rank", json={"user_id": "1", "item_ids": [1]})
    assert response.json()["detail"] == [{"loc": ["body", "user_id"], "type": "int_type",
                                          "msg": "Input should be a valid integer",
                                          "input": "1"}]


# --- OpenAPI ----------------------------------------------------------------------------------
def test_ids_are_int64_with_integer_bounds(openapi: dict) -> None:
    """FastAPI's OpenAPI wrote the bound as the float 2**63 (9223372036854775999 was "valid")."""
    request = openapi["components"]["schemas"]["RankRequest"]
    user_id, item_ids = request["properties"]["user_id"], request["properties"]["item_ids"]
    for schema, low in ((user_id, 0), (item_ids["items"], 1)):
        assert schema["type"] == "integer" and schema["format"] == "int64"
        assert schema["minimum"] == low and type(schema["minimum"]) is int
        assert schema["maximum"] == 2**63 - 1 and type(schema["maximum"]) is int
    assert item_ids["uniqueItems"] is True
    assert (item_ids["minItems"], item_ids["maxItems"]) == (1, 1000)
    body = openapi["paths"]["/rank"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RankRequest"}


def test_every_response_is_documented(openapi: dict) -> None:
    rank = openapi["paths"]["/rank"]["post"]["responses"]
    assert sorted(rank) == ["200", "413", "422", "500", "503"]
    assert rank["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RankResponse"}
    assert sorted(openapi["paths"]["/readyz"]["get"]["responses"]) == ["200", "503"]
    metrics = openapi["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert metrics == {"text/plain": {"schema": {"type": "string"}}}


def test_real_responses_match_the_document(openapi: dict, served: Served, redis_copy: Any
                                           ) -> None:
    app = TestClient(create_app(served.cfg))  # on the restartable copy of the store
    checks = [("/rank", "post", app.post("/rank", json=BODY)),
              ("/rank", "post", app.post("/rank", json={"user_id": 1, "item_ids": [3, 3]})),
              ("/healthz", "get", app.get("/healthz")),
              ("/readyz", "get", app.get("/readyz")),
              ("/metrics", "get", app.get("/metrics"))]
    redis_copy.stop()
    checks += [("/rank", "post", app.post("/rank", json=BODY)),
               ("/readyz", "get", app.get("/readyz"))]
    assert [r.status_code for *_, r in checks] == [200, 422, 200, 200, 200, 503, 503]
    for path, method, response in checks:
        conforms(openapi, path, method, response)


# --- configuration ----------------------------------------------------------------------------
def test_default_port_is_not_tf_servings() -> None:
    assert ServingConfig().port == 8080  # TF-Serving: 8500 gRPC, 8501 REST


def test_a_body_limit_too_small_for_the_candidates_is_refused() -> None:
    with pytest.raises(ValueError, match="max_body_bytes = 4096 cannot hold a request of "
                                         "max_candidates = 1000"):
        ServingConfig(max_body_bytes=4096)
