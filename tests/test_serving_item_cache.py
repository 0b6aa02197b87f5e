"""The item-feature cache of the serving reader, against a real redis-server.

An item's Redis hash is deleted behind the reader's back: while the cached entry is fresh the
reader still gives the item's stored features (the world's truth), after the TTL it reads the
store again and finds no row (defaults, flagged missing). A fake clock moves time.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from test_serving_app import metric
from test_serving_fixture import (  # noqa: F401 (fixtures)
    T0,
    Served,
    redis_copy_fixture,
    served_fixture,
)

from feature_repo.store import get_store
from serving.app import create_app
from serving.features import FeatureReader, StoreUnavailable
from serving.item_cache import CachedItem, ItemCache

ITEM = 5  # has statistics and a multimodal row in the world


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reader_with(served: Served, *, ttl_s: float, max_items: int, clock: Clock) -> FeatureReader:
    reader = FeatureReader(served.cfg.with_overrides(serving={"item_cache_ttl_s": 0}))
    assert reader.item_cache is None and reader.direct is not None
    reader.item_cache = ItemCache(ttl_s=ttl_s, max_items=max_items, clock=clock)
    return reader


def drop_item(reader: FeatureReader, item_id: int) -> None:
    assert reader.direct is not None
    assert reader.direct.client.delete(reader.direct._item_key(item_id)) == 1


def test_cached_item_is_served_within_the_ttl_and_read_again_after(served: Served, redis_copy
                                                                   ) -> None:
    clock = Clock()
    reader = reader_with(served, ttl_s=60.0, max_items=100, clock=clock)
    truth = served.world.stats[ITEM]["pv"]
    first = reader.read(1, [ITEM])
    assert first.items[ITEM]["pv"] == truth and ITEM not in first.missing
    np.testing.assert_array_equal(first.items[ITEM]["embedding"],
                                  np.float32(served.world.multimodal[ITEM]["embedding"]))
    drop_item(reader, ITEM)

    clock.now += 59.0  # within the TTL: the cached row, although the store has none now
    cached = reader.read(1, [ITEM])
    assert cached.items[ITEM]["pv"] == truth and ITEM not in cached.missing
    assert reader.item_cache is not None and reader.item_cache.hits >= 1

    clock.now += 2.0  # 61 s after the read: expired, read again, the row is gone
    fresh = reader.read(1, [ITEM])
    assert ITEM in fresh.missing
    assert fresh.items[ITEM]["pv"] == 0
    assert fresh.items[ITEM]["embedding"].tolist() == [0.0] * served.cfg.encoder.dim


def test_zero_ttl_disables_the_cache(served: Served, redis_copy) -> None:
    for settings in ({"item_cache_ttl_s": 0}, {"item_cache_items": 0}):
        reader = FeatureReader(served.cfg.with_overrides(serving=settings))
        assert reader.item_cache is None
    assert ITEM not in reader.read(1, [ITEM]).missing
    drop_item(reader, ITEM)
    assert ITEM in reader.read(1, [ITEM]).missing  # the very next read sees the store


def test_cache_holds_at_most_max_items_least_recently_used_first_out(served: Served,
                                                                    redis_copy) -> None:
    clock = Clock()
    reader = reader_with(served, ttl_s=60.0, max_items=3, clock=clock)
    cache = reader.item_cache
    assert cache is not None
    reader.read(999, [1, 2, 3])  # unknown user: no sequence items, exactly these three
    reader.read(999, [1])  # 1 is now the most recently used
    reader.read(999, [4])  # evicts 2, the least recently used
    assert len(cache) == 3
    found, absent = cache.get_many([1, 2, 3, 4])
    assert sorted(found) == [1, 3, 4] and absent == [2]
    reader.read(999, list(range(1, 11)))
    assert len(cache) == 3


def test_item_cache_unit_ttl_and_lru() -> None:
    clock = Clock()
    cache = ItemCache(ttl_s=10.0, max_items=2, clock=clock)
    a, b, c = (CachedItem({"pv": v}, False) for v in (1, 2, 3))
    cache.put_many({1: a, 2: b})
    assert cache.get_many([2, 1, 3]) == ({2: b, 1: a}, [3])  # 1 used last
    cache.put_many({3: c})  # evicts 2
    assert cache.get_many([1, 2, 3]) == ({1: a, 3: c}, [2])
    clock.now += 10.0  # expired at exactly ttl_s
    assert cache.get_many([1, 3]) == ({}, [1, 3])
    assert (cache.hits, cache.misses) == (4, 4)
    with pytest.raises(ValueError, match="ttl_s=0"):
        ItemCache(ttl_s=0, max_items=2)


def test_cache_under_its_hit_rate_floor_bypasses_itself_and_comes_back() -> None:
    cache = ItemCache(ttl_s=60.0, max_items=4, bypass=(0.5, 3))
    item = CachedItem({"pv": 1}, False)
    # Filling: never judged, however low the hit rate.
    assert cache.use() and cache.get_many([1, 2]) == ({}, [1, 2]) and not cache.bypassing
    cache.put_many({1: item, 2: item})
    assert cache.use() and cache.get_many([3, 4]) == ({}, [3, 4]) and not cache.bypassing
    cache.put_many({3: item, 4: item})  # full now
    # A full window (4 lookups) with 1 hit in 4: under 0.5 -> bypass.
    cache.get_many([1, 5, 6, 7])
    assert cache.bypassing
    # While bypassing, one request in probe_every (3) goes through the cache.
    used = [cache.use() for _ in range(6)]
    assert used.count(True) == 2 and cache.bypassed == 4
    # A probe window with 3 hits in 4 turns the cache back on.
    cache.get_many([1, 2, 3, 9])
    assert not cache.bypassing and all(cache.use() for _ in range(5))
    with pytest.raises(ValueError, match="min_hit_rate"):
        ItemCache(ttl_s=1.0, max_items=1, bypass=(1.5, 16))


def test_the_lookups_that_filled_the_cache_are_not_judged() -> None:
    cache = ItemCache(ttl_s=60.0, max_items=4, bypass=(0.5, 3))
    item = CachedItem({"pv": 1}, False)
    cache.get_many([1, 2, 3])  # 3 misses while filling
    cache.put_many({i: item for i in (1, 2, 3, 4)})  # full: the window starts afresh
    cache.get_many([1, 2])
    cache.get_many([3, 4])  # 4 hits in 4 (counting the filling's misses: 4 in 7, under 0.5)
    assert not cache.bypassing
    assert not ItemCache(ttl_s=1.0, max_items=1).bypassing  # bypass=None: never judged


def test_bypassing_reader_gives_the_stores_features(served: Served, redis_copy) -> None:
    """A cache of 2 items under uniform reads of many: the reader turns to direct reads, which
    give the same features as a reader with no cache, and /metrics-level counters say so."""
    reader = FeatureReader(served.cfg.with_overrides(
        serving={"item_cache_items": 2, "item_cache_min_hit_rate": 0.9}))
    plain = FeatureReader(served.cfg.with_overrides(serving={"item_cache_ttl_s": 0}))
    cache = reader.item_cache
    assert cache is not None and cache.min_hit_rate == 0.9
    ids = list(range(1, served.world.n_items + 1))
    for start in range(0, 40, 4):
        got = reader.read(999, ids[start % len(ids):][:4])
        want = plain.read(999, ids[start % len(ids):][:4])
        assert got.missing == want.missing and sorted(got.items) == sorted(want.items)
        assert got.sequence == want.sequence
        for i, values in want.items.items():
            assert sorted(got.items[i]) == sorted(values)
            for name, value in values.items():  # arrays when cached, lists when read directly
                np.testing.assert_array_equal(np.asarray(got.items[i][name]), np.asarray(value))
    assert cache.bypassing and cache.bypassed > 0


def test_store_outage_is_503_although_the_items_are_cached(served: Served, redis_copy) -> None:
    client = TestClient(create_app(served.cfg))
    body = {"user_id": 1, "item_ids": [1, 2, 3]}
    assert client.post("/rank", json=body).status_code == 200
    again = client.post("/rank", json=body)
    assert again.status_code == 200
    assert metric(client, "saviorrec_serving_item_cache_hits_total") >= 3
    assert metric(client, "saviorrec_serving_item_cache_items") >= 3
    redis_copy.stop()
    down = client.post("/rank", json=body)  # the user's sequence is never cached
    assert down.status_code == 503 and redis_copy.address in down.json()["detail"]
    with pytest.raises(StoreUnavailable):
        client.app.state.service.reader.read(1, [1, 2, 3])


def test_store_refilled_with_another_version_is_refused_once_the_cache_expires(
        served: Served, redis_copy) -> None:
    """Cached rows are of the model's version (checked when read): they serve until the TTL."""
    client = TestClient(create_app(served.cfg))
    clock = Clock()
    service = client.app.state.service
    service.reader.item_cache = ItemCache(ttl_s=60.0, max_items=100, clock=clock)
    body = {"user_id": 999, "item_ids": [2, 3]}  # unknown user: only these two items are read
    assert client.post("/rank", json=body).status_code == 200
    rows = [{**served.world.multimodal[i], "rqvae_version": "rq-next",
             "event_timestamp": T0 + timedelta(days=50)} for i in (2, 3)]
    get_store(served.cfg).write_to_online_store("item_multimodal", pd.DataFrame(rows))
    assert client.post("/rank", json=body).status_code == 200
    clock.now += 61.0
    refused = client.post("/rank", json=body)
    assert refused.status_code == 500 and "rq-next" in refused.json()["detail"]
