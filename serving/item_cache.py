"""An in-process cache of item features: a bounded LRU whose entries expire after a TTL.

Item features are shared by every user and change at most daily (item_stats are daily
snapshots; embeddings and semantic ids change with a model version), while a request reads
the features of all its candidates and sequence items: at 200 candidates the Redis read and
the protobuf decoding of ~250 items were most of the service's Python time. The cache keeps
each item's decoded values (defaults filled in) and whether the store had a row for it, so an
item without features stays flagged and counted while cached. An entry is served for at most
``ttl_s`` seconds after it was read, then read again: staleness is bounded by the TTL. The
user's sequence row is never cached (a user's sequence changes with every click).

An item the store had no row for (``missing``) is kept for ``missing_ttl_s`` only (0: never),
so that an item onboarded after the service started (``saviorrec items add`` in another
process) is read with its own features within that delay instead of the unknown-item defaults
for the whole TTL; :meth:`ItemCache.invalidate` drops entries at once (POST /items calls it for
the items it pushed).

A cache that does not hit costs more than no cache: at a 1M-item catalogue with candidates drawn
uniformly, 5% of lookups hit and the cached path took 20 ms of server CPU per request against
13 ms without it (checking, wrapping and evicting ~250 entries a request, plus a second round
trip; benchmarks/results/pipeline_scale.json, serving_1M_before_cache_floor). So with
``bypass=(min_hit_rate, probe_every)`` the cache judges itself: once full, over each window of
``max_items`` lookups, a hit rate under ``min_hit_rate`` sets :attr:`ItemCache.bypassing`, and then only one request in
``probe_every`` goes through the cache (:meth:`ItemCache.use`), which keeps the estimate and the
entries current; the others read the store directly. A workload whose hit rate climbs back
over the floor turns the cache on again at the next window. A filling cache is never judged:
its misses say nothing about the workload, so the window starts afresh when the cache first
becomes full.

``OrderedDict`` under a lock rather than ``cachetools.TTLCache`` (the project does not depend
on cachetools and the cache needs ~30 lines). Thread-safe: uvicorn runs sync handlers in a
thread pool.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple


class CachedItem(NamedTuple):
    values: dict[str, Any]  # every item feature, defaults filled in; lists as numpy arrays
    missing: bool  # no row in item_stats or item_multimodal when it was read


class ItemCache:
    """``get_many(ids) -> (found, absent)``, ``put_many({id: item})``; at most ``max_items``
    entries, each served for ``ttl_s`` seconds after it was put."""

    def __init__(self, *, ttl_s: float, max_items: int, missing_ttl_s: float | None = None,
                 bypass: tuple[float, int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s <= 0 or max_items < 1:
            raise ValueError(f"an item cache needs ttl_s > 0 and max_items >= 1, got "
                             f"ttl_s={ttl_s}, max_items={max_items} (0 disables it: no cache)")
        missing_ttl_s = ttl_s if missing_ttl_s is None else missing_ttl_s
        if missing_ttl_s < 0:
            raise ValueError(f"missing_ttl_s={missing_ttl_s}: use >= 0 (0: never cache a "
                             "missing item)")
        # (min_hit_rate, probe_every): serving.item_cache_min_hit_rate / _probe_every; None: the
        # cache never bypasses itself.
        min_hit_rate, probe_every = bypass if bypass is not None else (0.0, 1)
        if not 0.0 <= min_hit_rate <= 1.0 or probe_every < 1:
            raise ValueError(f"min_hit_rate={min_hit_rate} must be in [0, 1] and "
                             f"probe_every={probe_every} >= 1")
        self.ttl_s, self.max_items, self._clock = ttl_s, max_items, clock
        self.min_hit_rate, self.probe_every = min_hit_rate, probe_every
        self.missing_ttl_s = min(missing_ttl_s, ttl_s)
        self._entries: OrderedDict[int, tuple[float, CachedItem]] = OrderedDict()  # LRU first
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0  # absent or expired when asked for
        self.bypassing = False  # the last full window hit under min_hit_rate
        self.bypassed = 0  # requests that read the store directly while bypassing
        self._requests = 0
        self._window = [0, 0]  # hits, lookups since the window began
        self._full = False  # has been full once: from then on every window is judged

    def __len__(self) -> int:
        return len(self._entries)

    def use(self) -> bool:
        """Whether this request goes through the cache: always unless :attr:`bypassing`, then
        one request in ``probe_every``."""
        with self._lock:
            self._requests += 1
            if not self.bypassing or self._requests % self.probe_every == 0:
                return True
            self.bypassed += 1
            return False

    def _judge(self, hits: int, lookups: int) -> None:
        """Add a request's lookups to the window; at its end, decide :attr:`bypassing`."""
        self._window[0] += hits
        self._window[1] += lookups
        if self.min_hit_rate <= 0 or self._window[1] < self.max_items:
            return
        if self._full:  # the window holds only lookups made since the cache was full
            self.bypassing = self._window[0] < self.min_hit_rate * self._window[1]
        self._window = [0, 0]

    def get_many(self, item_ids: Iterable[int]) -> tuple[dict[int, CachedItem], list[int]]:
        """The fresh entries among ``item_ids`` and the ids to read from the store."""
        found: dict[int, CachedItem] = {}
        absent: list[int] = []
        now = self._clock()
        with self._lock:
            for item_id in item_ids:
                entry = self._entries.get(item_id)
                if entry is not None and now < entry[0]:
                    self._entries.move_to_end(item_id)
                    found[item_id] = entry[1]
                else:
                    absent.append(item_id)
            self.hits += len(found)
            self.misses += len(absent)
            self._judge(len(found), len(found) + len(absent))
        return found, absent

    def put_many(self, items: dict[int, CachedItem]) -> None:
        now = self._clock()
        with self._lock:
            for item_id, item in items.items():
                if item.missing and self.missing_ttl_s == 0:
                    self._entries.pop(item_id, None)
                    continue
                expires = now + (self.missing_ttl_s if item.missing else self.ttl_s)
                self._entries[item_id] = (expires, item)
                self._entries.move_to_end(item_id)
            if not self._full and len(self._entries) >= self.max_items:
                self._full = True
                self._window = [0, 0]  # the lookups of the filling do not count
            while len(self._entries) > self.max_items:
                self._entries.popitem(last=False)

    def invalidate(self, item_ids: Iterable[int]) -> None:
        """Forget these items: the next request reads them from the store."""
        with self._lock:
            for item_id in item_ids:
                self._entries.pop(int(item_id), None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
