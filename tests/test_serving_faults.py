"""Faults: the store goes away and comes back, a model of another RQ-VAE version, sqlite."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from test_serving_fixture import (  # noqa: F401
    REDIS_ENV,
    T0,
    Served,
    World,
    build_world,
    redis_copy_fixture,
    save_ranker,
    served_fixture,
    world_config,
)

from feature_repo.store import get_store
from saviorrec.config import Config
from serving.app import create_app
from serving.versions import VersionMismatch
from tf_ranker.export import run_export

BODY = {"user_id": 1, "item_ids": [1, 2, 3]}


def test_store_down_is_503_naming_it_and_recovers_without_restart(served: Served, redis_copy
                                                                  ) -> None:
    client = TestClient(create_app(served.cfg))
    first = client.post("/rank", json=BODY)
    assert first.status_code == 200
    redis_copy.stop()
    for _ in range(3):
        down = client.post("/rank", json=BODY)
        assert down.status_code == 503
        assert down.json()["store"] == f"Redis online store at {redis_copy.address}"
        assert redis_copy.address in down.json()["detail"]
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200  # the process is up all along
    redis_copy.start()  # loads the snapshot: same data
    back = client.post("/rank", json=BODY)
    assert back.status_code == 200, back.text
    assert back.json() == first.json()
    assert client.get("/readyz").status_code == 200


def test_service_starts_while_the_store_is_down(served: Served, redis_copy) -> None:
    redis_copy.stop()
    client = TestClient(create_app(served.cfg))  # model loads; version check deferred
    assert client.get("/readyz").json()["checks"]["store"].startswith("Redis online store at")
    assert client.post("/rank", json=BODY).status_code == 503
    redis_copy.start()
    assert client.get("/readyz").json()["checks"] == {"store": "ok", "rqvae_version": "ok",
                                                      "model": "ok"}
    assert client.post("/rank", json=BODY).status_code == 200


def _copy_run(served: Served, tmp_path: Path) -> Config:
    """The session run (lake, registry) copied, so a new export does not disturb other tests."""
    shutil.copytree(served.cfg.run_dir(), tmp_path / "run")
    return served.cfg.with_overrides(run={"root": str(tmp_path / "run")})


def test_model_of_another_rqvae_version_is_refused_at_start(served: Served, tmp_path: Path) -> None:
    cfg = _copy_run(served, tmp_path)
    save_ranker(World(cfg, served.world.n_items, served.world.n_users), rqvae_version="rq-other")
    run_export(cfg, variant="full", seed=0)
    with pytest.raises(VersionMismatch) as err:
        create_app(cfg)
    message = str(err.value)
    assert "'rq-other'" in message and "'rq-serving-test'" in message
    assert served.redis.address in message


def test_store_refilled_with_another_version_is_refused_per_request(
        served: Served, redis_copy) -> None:
    # Without the item cache every request reads its items; with it, after the TTL
    # (tests/test_serving_item_cache.py).
    client = TestClient(create_app(served.cfg.with_overrides(serving={"item_cache_ttl_s": 0})))
    assert client.post("/rank", json=BODY).status_code == 200
    rows = [{**served.world.multimodal[i], "rqvae_version": "rq-next",
             "event_timestamp": T0 + timedelta(days=50)} for i in (2, 3)]
    get_store(served.cfg).write_to_online_store("item_multimodal", pd.DataFrame(rows))
    response = client.post("/rank", json=BODY)
    assert response.status_code == 500
    detail = response.json()["detail"]
    assert "mismatch" in detail and "rq-next" in detail and "rq-serving-test" in detail
    # a request that reads neither item (unknown user: empty sequence) is still served
    assert client.post("/rank", json={"user_id": 999, "item_ids": [4]}).status_code == 200


def test_local_profile_sqlite_end_to_end(config: Config) -> None:
    cfg = world_config(config, profile="local", redis_env=REDIS_ENV)
    world, model = build_world(cfg)
    client = TestClient(create_app(cfg))
    assert client.app.state.service.reader.direct is None
    items = [4, 8, 37, 38, 39, 40]
    body = client.post("/rank", json={"user_id": 3, "item_ids": items}).json()
    expected = np.asarray(model(world.per_sample_inputs(3, items))).reshape(-1)
    got = {r["item_id"]: r["score"] for r in body["items"]}
    assert [got[i] for i in items] == pytest.approx(expected.tolist(), abs=1e-5)
    assert body["missing_item_ids"] == [37, 38, 39, 40]
    assert "sqlite online store at" in client.get("/readyz").json()["store"]
