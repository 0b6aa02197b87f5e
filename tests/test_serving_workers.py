"""`saviorrec serve` with serving.workers = 2: a real process over the real store (Redis).

Two uvicorn worker processes answer on one port, each ranking exactly as one in-process service
does; /metrics sums both workers' counters; /readyz and the body limit hold in every worker.
Also the pieces alone: the workers' counters summed from their files (a dead worker keeps its
counts, not its gauges), and TensorFlow's threads shared out between workers.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import free_port, serve_process
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from test_serving_fixture import (  # noqa: F401 (fixtures)
    Served,
    served_fixture,
)

from saviorrec.config import ServingConfig
from serving.app import create_app
from serving.counters import FLUSH_S, Counters
from serving.item_cache import CachedItem, ItemCache
from serving.service import tf_threads

WORKERS = 2
BODIES = [{"user_id": 1, "item_ids": [5, 1, 12, 3]},
          {"user_id": 4, "item_ids": [2, 9, 33, 38, 39, 40, 41]},  # cold and unknown items
          {"user_id": 999, "item_ids": list(range(1, 41))}]  # an unknown user, every item


def call(port: int, method: str, path: str, body: dict | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """One request on a new connection (the kernel hands each connection to one worker)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body),
                           headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if path != "/metrics" else {"text": raw.decode()}
    finally:
        connection.close()


def metrics(port: int) -> dict[str, float]:
    text = call(port, "GET", "/metrics")[1]["text"]
    return {f"{s.name}{sorted(s.labels.items()) if s.labels else ''}": s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def two_workers(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The port of `saviorrec serve` with serving.workers = 2, once both workers count."""
    root = tmp_path_factory.mktemp("workers")
    config = root / "serving.yaml"
    config.write_text(yaml.safe_dump(
        served.cfg.with_overrides(serving={"workers": WORKERS}).model_dump(mode="json")))
    port, log = free_port(), root / "serve.log"
    # the Redis URL comes from the environment (served sets it)
    with serve_process(config, port, log, lambda: metrics(port).get("saviorrec_serving_workers") == WORKERS,
                       timeout_s=300, what=f"saviorrec serve with {WORKERS} workers") as process:
        yield port
    assert process.returncode == 0, log.read_text()[-4000:]


def test_two_workers_answer_with_the_scores_of_one(two_workers: int, served: Served) -> None:
    one = TestClient(create_app(served.cfg))  # one process, as serving.workers = 1 serves
    expected = [one.post("/rank", json=body).json() for body in BODIES]
    answered: set[int] = set()
    for attempt in range(200):
        status, health = call(two_workers, "GET", "/healthz")
        assert status == 200
        answered.add(health["worker"])
        body = BODIES[attempt % len(BODIES)]
        status, ranked = call(two_workers, "POST", "/rank", body)
        assert status == 200
        assert ranked == expected[attempt % len(BODIES)]  # same items, order and scores
        if len(answered) == WORKERS and attempt >= 2 * len(BODIES):
            break
    assert len(answered) == WORKERS, f"only worker(s) {answered} answered 200 connections"
    assert os.getpid() not in answered


def settled(port: int) -> dict[str, float]:
    """/metrics once every worker has written its last requests (unchanged over 2 FLUSH_S)."""
    last = metrics(port)
    while True:
        time.sleep(2 * FLUSH_S)
        now = metrics(port)
        if now == last:
            return now
        last = now


def test_metrics_count_the_requests_of_every_worker(two_workers: int) -> None:
    key = "saviorrec_serving_requests_total[('status', '200')]"
    before, n = settled(two_workers).get(key, 0.0), 30
    for k in range(n):
        assert call(two_workers, "POST", "/rank", BODIES[k % len(BODIES)])[0] == 200
    deadline = time.monotonic() + 10  # the other worker's file is at most FLUSH_S old
    while (after := metrics(two_workers))[key] - before < n and time.monotonic() < deadline:
        time.sleep(0.2)
    assert after[key] - before == n
    assert after["saviorrec_serving_workers"] == WORKERS


def test_every_worker_is_ready_and_refuses_an_oversize_body(two_workers: int) -> None:
    limit = ServingConfig().max_body_bytes
    ready, refused = set(), set()
    for _ in range(100):
        status, body = call(two_workers, "GET", "/readyz")
        assert status == 200 and body["ready"] is True
        ready.add(call(two_workers, "GET", "/healthz")[1]["worker"])
        status, body = call(two_workers, "POST", "/rank", headers={
            "Content-Length": str(limit + 1)})
        assert status == 413 and "serving.max_body_bytes" in body["detail"]
        refused.add(status)
        if len(ready) == WORKERS:
            break
    assert len(ready) == WORKERS and refused == {413}


def test_the_workers_counters_are_summed_from_their_files(tmp_path: Path) -> None:
    """Each worker writes its own file; a dead worker keeps its counts but not its gauges."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        mine, other = Counters(), Counters()
        mine.requests.labels("200").inc(3)
        mine.latency.labels("model").observe(0.003)
        other.requests.labels("200").inc(4)
        other.requests.labels("503").inc()
        other.latency.labels("model").observe(0.5)
        other.item_cache = ItemCache(ttl_s=60, max_items=10)
        other.item_cache.put_many({7: CachedItem({}, False), 8: CachedItem({}, True)})
        other.shared = tmp_path
        for pid in (dead.pid, alive.pid):  # the other workers' files, as they write them
            other._flush()
            (tmp_path / f"{os.getpid()}.json").rename(tmp_path / f"{pid}.json")
        mine.share(tmp_path)
        found = {f"{s.name}{sorted(s.labels.items())}": s.value
                 for family in text_string_to_metric_families(mine.render().decode())
                 for s in family.samples}
    finally:
        alive.kill()
        alive.wait()
    assert found["saviorrec_serving_requests_total[('status', '200')]"] == 3 + 4 + 4
    assert found["saviorrec_serving_requests_total[('status', '503')]"] == 2
    assert found["saviorrec_serving_request_seconds_count[('stage', 'model')]"] == 3
    assert found["saviorrec_serving_request_seconds_bucket[('le', '0.005'), ('stage', 'model')]"
                 ] == 1
    assert found["saviorrec_serving_item_cache_items[]"] == 2  # the live worker's only
    assert found["saviorrec_serving_workers[]"] == 2  # this process and `sleep`; not `true`


def test_a_single_process_reports_one_worker() -> None:
    text = Counters().render().decode()
    assert "saviorrec_serving_workers 1.0" in text


def test_tensorflow_threads_are_shared_out_between_workers() -> None:
    cores = len(os.sched_getaffinity(0))
    assert tf_threads(ServingConfig()) == 0  # one process: TensorFlow's default
    assert tf_threads(ServingConfig(workers=2)) == max(1, cores // 2)
    assert tf_threads(ServingConfig(workers=4 * cores)) == 1
    assert tf_threads(ServingConfig(workers=2, tf_threads=3)) == 3  # set: as set
