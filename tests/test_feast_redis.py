"""Production profile: Feast's Spark offline store and a real redis-server online store."""

from __future__ import annotations

import logging

import pytest
from test_feast_lake import small_config, write_lake
from test_feast_store import EXPECTED, _check_training_rows, assert_online_equals_offline

from feature_repo import store as fs
from saviorrec.config import Config

pytestmark = pytest.mark.redis


def production(config: Config, monkeypatch: pytest.MonkeyPatch, url: str) -> Config:
    cfg = small_config(config).with_overrides(
        feast={"profile": "production", "redis_timeout_s": 2.0}, spark={"master": "local[2]"})
    monkeypatch.setenv(cfg.feast.redis_env, url)
    write_lake(cfg)
    return cfg


@pytest.fixture()
def prod(config: Config, monkeypatch: pytest.MonkeyPatch, redis_server) -> Config:
    cfg = production(config, monkeypatch, redis_server.url)
    fs.apply(cfg)
    return cfg


def test_spark_materialize_then_redis_equals_offline(spark, prod: Config) -> None:
    report = fs.materialize(prod, None, "2020-02-01")
    assert report["entities"] == {"item_stats": 2, "user_sequence": 3, "item_multimodal": 3}
    assert_online_equals_offline(fs.get_store(prod))


def test_training_set_through_spark_is_point_in_time(spark, prod: Config) -> None:
    report = fs.training_set(prod)
    assert report["sequence_stats_join"] == "feast"
    assert report["samples_in"] == report["samples_out"] == {"train": 3, "valid": 1, "test": 2}
    _check_training_rows(prod, EXPECTED)


def test_stopped_redis_gives_a_clear_error(prod: Config, redis_server) -> None:
    store = fs.get_store(prod)
    redis_server.stop()
    with pytest.raises(fs.OnlineStoreUnavailable,
                       match=f"Redis online store at {redis_server.address} is unreachable"):
        fs.online_features(store, 11, [1, 2])


def test_redis_with_password_works_and_never_shows_it(
    spark, config: Config, monkeypatch: pytest.MonkeyPatch, redis_server_with_password,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    server, password = redis_server_with_password, redis_server_with_password.password
    caplog.set_level(logging.DEBUG)
    cfg = production(config, monkeypatch, server.url)
    reports = [fs.apply(cfg), fs.materialize(cfg, None, "2020-02-01")]
    assert_online_equals_offline(fs.get_store(cfg))
    errors = []
    monkeypatch.setenv(cfg.feast.redis_env, server.url.replace(password, "wrong-Pa55"))
    with pytest.raises(fs.OnlineStoreUnavailable, match=server.address) as wrong:
        fs.online_features(fs.get_store(cfg), 11, [1])
    errors.append(str(wrong.value))
    monkeypatch.setenv(cfg.feast.redis_env, server.url)
    store = fs.get_store(cfg)
    server.stop()
    with pytest.raises(fs.OnlineStoreUnavailable, match=server.address) as down:
        fs.online_features(store, 11, [1])
    errors.append(str(down.value))
    out, err = capfd.readouterr()
    for text in (*errors, caplog.text, out, err, repr(reports)):
        assert password not in text and "wrong-Pa55" not in text
