"""The ranking service end to end: real Redis (with a password), real Feast, real SavedModel.

Expected scores come from the Keras model on features taken from the hand-made world (not from
Feast nor from the serving code), one row per candidate as in training.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from test_serving_fixture import (  # noqa: F401 (fixtures)
    PASSWORD,
    REDIS_ENV,
    Served,
    redis_copy_fixture,
    served_fixture,
)

from feature_repo.online import online_features
from serving.app import create_app

N_ITEMS = 40
COLD, UNKNOWN = [N_ITEMS - 3, N_ITEMS - 2], [N_ITEMS - 1, N_ITEMS, 777]


@pytest.fixture(scope="module")
def client(served: Served) -> TestClient:
    return TestClient(create_app(served.cfg))


def expected_scores(served: Served, user_id: int, item_ids: list[int]) -> np.ndarray:
    inputs = served.world.per_sample_inputs(user_id, item_ids)
    return np.asarray(served.model(inputs, training=False)).reshape(-1)


def metric(client: TestClient, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@pytest.mark.parametrize("user_id", [1, 2, 7, 999])  # 999: unknown user, empty sequence
def test_scores_equal_the_offline_model(client: TestClient, served: Served, user_id: int) -> None:
    items = [5, 1, 12, *COLD, 30, *UNKNOWN, 3]
    response = client.post("/rank", json={"user_id": user_id, "item_ids": items})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = dict(zip(items, expected_scores(served, user_id, items), strict=True))
    got = {r["item_id"]: r["score"] for r in body["items"]}
    assert got.keys() == expected.keys()
    for item in items:
        assert got[item] == pytest.approx(expected[item], abs=1e-5), item
    scores = [r["score"] for r in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert np.ptp(scores) > 1e-3  # the model tells the items apart: the check has teeth
    assert body["missing_item_ids"] == [*COLD, *UNKNOWN]
    assert {r["item_id"] for r in body["items"] if not r["has_features"]} == {*COLD, *UNKNOWN}
    assert body["unknown_user"] is (user_id == 999)
    assert body["rqvae_version"] == "rq-serving-test" and body["variant"] == "full"
    assert body["model_version"].startswith("full-seed0-")


def test_sequence_and_candidate_items_change_the_score(client: TestClient) -> None:
    """Same candidate, different users (sequences) -> different scores; unknown = padding."""
    def score(user: int) -> float:
        return client.post("/rank", json={"user_id": user, "item_ids": [5]}).json()["items"][0]["score"]

    assert score(1) != pytest.approx(score(2), abs=1e-6)
    assert score(998) == pytest.approx(score(999), abs=1e-7)


def test_direct_redis_reader_equals_feast(client: TestClient, served: Served) -> None:
    service = client.app.state.service
    assert service.reader.direct is not None
    items = list(range(1, N_ITEMS + 1)) + [777]
    for user in (1, 3, 999):
        direct = service.reader.direct.read(user, items)
        feast = online_features(service.reader.store, user, items)
        assert direct.sequence == feast.sequence
        assert direct.missing == feast.missing
        assert direct.items.keys() == feast.items.keys()
        buffers = 0
        for item, values in feast.items.items():
            assert direct.items[item].keys() == values.keys()
            for name, value in values.items():
                got = direct.items[item][name]
                if isinstance(got, np.ndarray):  # an embedding read as one float32 buffer
                    assert name == "embedding" and got.dtype == np.float32
                    assert got.tolist() == value  # exactly the proto's floats
                    buffers += 1
                    continue
                assert got == (pytest.approx(value) if isinstance(value, list | float) else value)
        with_rows = [i for i in items if i in served.world.multimodal]
        assert buffers == len(with_rows) > 0  # every stored embedding took the fast path


def test_the_column_decoder_reads_what_protobuf_reads(client: TestClient) -> None:
    """Hand-written replies: an embedding of the view's width comes back as the float32
    buffer, one of another width and a field of another type as protobuf gives them, a null as
    the default (the item flagged when the field is required); the expectation is protobuf's
    own parse of the same bytes."""
    from feast.protos.feast.types.Value_pb2 import FloatList, Int64List, Value

    direct = client.app.state.service.reader.direct
    names, dim = direct._item_names, len(direct._defaults["embedding"])
    row = {"pv": Value(int64_val=300), "clicks": Value(int64_val=7),
           "ctr": Value(float_val=0.1), "pv_recent": Value(int64_val=300),
           "clicks_recent": Value(int64_val=2**40), "ctr_recent": Value(float_val=-1.5),
           "pv_bucket": Value(int64_val=3),
           "embedding": Value(float_list_val=FloatList(val=[k / 3 for k in range(dim)])),
           "semantic_ids": Value(int64_list_val=Int64List(val=[1, 2, 0])),
           "encoder_version": Value(string_val="enc"), "rqvae_version": Value(string_val="rq")}
    assert sorted(row) == sorted(names)

    def reply(**changed: Value | None) -> list[bytes | None]:
        values = {**row, **changed}
        return [None if values[n] is None else values[n].SerializeToString() for n in names]

    replies = [reply(), reply(),  # the same scalars twice: parsed once, both filled
               reply(embedding=Value(float_list_val=FloatList(val=[0.5] * (dim + 1)))),
               reply(embedding=None, clicks=None),  # no multimodal row: missing
               reply(clicks=Value(string_val="7"))]  # another type than the view declares
    decoded = direct._decode_items(replies)
    expected = [{n: raw if raw is None else Value.FromString(raw) for n, raw in zip(names, r)}
                for r in replies]
    for (values, absent), protos, case in zip(decoded, expected, range(5), strict=True):
        assert absent == (case == 3)
        for name in names:
            proto, got = protos[name], values[name]
            if proto is None:
                assert got == direct._defaults[name]
            elif name == "embedding" and len(proto.float_list_val.val) == dim:
                assert isinstance(got, np.ndarray) and got.dtype == np.float32
                assert got.tolist() == list(proto.float_list_val.val)
            else:
                kind = proto.WhichOneof("val")
                field = getattr(proto, kind)
                assert got == (list(field.val) if kind.endswith("_list_val") else field)
                assert not isinstance(got, np.ndarray)
    assert decoded[4][0]["clicks"] == "7"
    assert direct._decode_items([]) == []


def test_direct_reader_item_keys_are_feasts(client: TestClient) -> None:
    """The reader builds item keys from a template; Feast's serializer is the expectation."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    service = client.app.state.service
    direct, config = service.reader.direct, service.reader.store.config
    assert direct._item_layout is not None
    for item in (0, 1, 7, 40, 777, 2**31, 2**63 - 1, -1, -(2**63)):
        entity = EntityKey(join_keys=["item_id"], entity_values=[Value(int64_val=item)])
        expected = serialize_entity_key(
            entity, entity_key_serialization_version=config.entity_key_serialization_version)
        assert direct._item_key(item) == expected + config.project.encode()


def test_feast_reader_gives_the_same_scores(client: TestClient, served: Served) -> None:
    via_feast = TestClient(create_app(served.cfg.with_overrides(serving={"online_reader": "feast"})))
    body = {"user_id": 4, "item_ids": [2, 9, 33, *COLD, *UNKNOWN]}
    a, b = client.post("/rank", json=body).json(), via_feast.post("/rank", json=body).json()
    assert via_feast.app.state.service.reader.direct is None
    assert [r["item_id"] for r in a["items"]] == [r["item_id"] for r in b["items"]]
    assert [r["score"] for r in a["items"]] == pytest.approx([r["score"] for r in b["items"]],
                                                              abs=1e-6)


BAD_BODIES = [
    ({"user_id": "1", "item_ids": [1]}, "int"),
    ({"user_id": 1.5, "item_ids": [1]}, "int"),
    ({"user_id": True, "item_ids": [1]}, "int"),
    ({"user_id": -1, "item_ids": [1]}, "greater than or equal to 0"),
    ({"item_ids": [1]}, "Field required"),
    ({"user_id": 1}, "Field required"),
    ({"user_id": 1, "item_ids": []}, "at least 1 item"),
    ({"user_id": 1, "item_ids": [1, "2"]}, "int"),
    ({"user_id": 1, "item_ids": [0]}, "greater than or equal to 1"),
    ({"user_id": 1, "item_ids": [2**63]}, "less than or equal to"),
    ({"user_id": 1, "item_ids": [3, 4, 3]}, "duplicate item ids [3]"),
    ({"user_id": 1, "item_ids": 5}, "list"),
    ({"user_id": 1, "item_ids": [1], "extra": 1}, "Extra inputs"),
    ({"user_id": 1, "item_ids": list(range(1, 10))}, "at most 8 items"),
]


@pytest.fixture(scope="module")
def small_client(served: Served) -> TestClient:
    return TestClient(create_app(served.cfg.with_overrides(serving={"max_candidates": 8})))


@pytest.mark.parametrize(("body", "reason"), BAD_BODIES)
def test_bad_input_is_422_with_the_reason(small_client: TestClient, body: dict, reason: str
                                          ) -> None:
    before = metric(small_client, "saviorrec_serving_requests_total", status="422")
    response = small_client.post("/rank", json=body)
    assert response.status_code == 422
    assert reason in response.text
    assert metric(small_client, "saviorrec_serving_requests_total", status="422") == before + 1


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b"null"])
def test_malformed_json_is_422(small_client: TestClient, raw: bytes) -> None:
    response = small_client.post("/rank", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text


def test_the_limit_itself_is_accepted(small_client: TestClient) -> None:
    response = small_client.post("/rank", json={"user_id": 1, "item_ids": list(range(1, 9))})
    assert response.status_code == 200 and len(response.json()["items"]) == 8


def test_counters_count_items_without_features(served: Served) -> None:
    client = TestClient(create_app(served.cfg))
    name = "saviorrec_serving_{}_total".format
    client.post("/rank", json={"user_id": 1, "item_ids": [1, 2, *COLD, *UNKNOWN]})
    client.post("/rank", json={"user_id": 999, "item_ids": [UNKNOWN[0]]})
    seq = served.world.sequences[1]
    seq_missing = {i for i in seq if i and (i in COLD or i in UNKNOWN)}
    assert metric(client, name("candidates")) == 8
    assert metric(client, name("candidates_without_features")) == 6
    assert metric(client, name("sequence_items_without_features")) == len(seq_missing)
    assert metric(client, name("unknown_users")) == 1
    assert metric(client, name("requests"), status="200") == 2


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"store": "ok", "rqvae_version": "ok", "model": "ok"}


def test_password_from_its_own_env_var(served: Served, redis_copy, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    monkeypatch.setenv(REDIS_ENV, f"redis://{redis_copy.address}/0")  # no password in the URL
    monkeypatch.setenv("SAVIORREC_REDIS_PASSWORD", PASSWORD)
    client = TestClient(create_app(served.cfg))
    response = client.post("/rank", json={"user_id": 1, "item_ids": [1, 2]})
    assert response.status_code == 200, response.text
    assert client.get("/readyz").status_code == 200


def test_no_secret_in_logs_or_responses(served: Served, redis_copy, caplog: pytest.LogCaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    texts = []
    client = TestClient(create_app(served.cfg))
    texts.append(client.post("/rank", json={"user_id": 1, "item_ids": [1]}).text)
    redis_copy.stop()  # unreachable
    texts += [client.post("/rank", json={"user_id": 1, "item_ids": [1]}).text,
              client.get("/readyz").text]
    redis_copy.start()
    wrong = f"redis://:{PASSWORD}x@{redis_copy.address}/0"  # a wrong password: refused by Redis
    monkeypatch.setenv(REDIS_ENV, wrong)
    bad = TestClient(create_app(served.cfg))
    failed = bad.post("/rank", json={"user_id": 1, "item_ids": [1]})
    assert failed.status_code == 503
    texts += [failed.text, bad.get("/readyz").text, bad.get("/metrics").text]
    logging.getLogger("test").error("connecting with redis://:%s@host", PASSWORD)  # redacted too
    everything = "\n".join(texts + [r.getMessage() + (r.exc_text or "") for r in caplog.records])
    assert redis_copy.address in everything  # the store is named ...
    assert PASSWORD not in everything and PASSWORD + "x" not in everything  # ... never the secret
    assert "***" in everything


def test_counters_of_two_apps_stay_apart_after_feast_is_imported() -> None:
    # feast.metrics turns prometheus_client's own metrics into per-process shared files.
    import feast.metrics  # noqa: F401

    from serving.counters import Counters

    first, second = Counters(), Counters()
    first.candidates.inc(5)
    first.requests.labels("200").inc()
    first.latency.labels("model").observe(0.003)
    families = {f.name: f for f in text_string_to_metric_families(second.render().decode())}
    assert families["saviorrec_serving_candidates"].samples[0].value == 0
    text = first.render().decode()
    assert "saviorrec_serving_candidates_total 5.0" in text
    assert 'saviorrec_serving_requests_total{status="200"} 1.0' in text
    assert 'saviorrec_serving_request_seconds_bucket{le="0.005",stage="model"} 1.0' in text
    assert 'saviorrec_serving_request_seconds_bucket{le="0.002",stage="model"} 0.0' in text
