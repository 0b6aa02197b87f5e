"""Service counters, exposed at ``GET /metrics`` in the Prometheus text format.

One registry per app (tests build several apps in one process). The values live in plain Python
objects read by a custom collector, not in ``prometheus_client.Counter``: importing Feast
(``feast.metrics``) sets ``PROMETHEUS_MULTIPROCESS_DIR``, which switches every
``prometheus_client`` metric created afterwards to files shared by metric name within the
process, so two apps' counters would add up.

With ``serving.workers`` > 1 each uvicorn worker process counts its own requests, and GET /metrics
is answered by whichever worker accepted the connection. :meth:`Counters.share` makes every
worker write its samples to a file of its own in a folder the parent process made (at once
before it answers /metrics, and every ``FLUSH_S`` seconds while they change), and /metrics
then sums the files of all workers: counters and histograms of every worker that has run (a
worker that died keeps its counts, so no counter goes down), gauges of the live ones only.
Another worker's requests of the last ``FLUSH_S`` seconds may be missing from one scrape; they
appear in the next. ``saviorrec_serving_workers`` says how many workers are alive and counted.
"""

from __future__ import annotations

import bisect
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample

from serving.item_cache import ItemCache

PREFIX = "saviorrec_serving"
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.5, 1.0, 5.0)
FLUSH_S = 0.5  # a shared worker writes its samples this often while they change


class Count:
    """A monotonically increasing number (one child of a labelled counter)."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"counters only go up, got {amount}")
        with self._lock:
            self.value += amount


class Observations:
    """Bucketed observations (one child of a labelled histogram)."""

    def __init__(self, lock: threading.Lock, buckets: tuple[float, ...]) -> None:
        self._lock = lock
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # last: above every bucket (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.buckets, value)] += 1
            self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        bounds = [*map(str, self.buckets), "+Inf"]
        running, out = 0, []
        for bound, count in zip(bounds, self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


class _Family:
    def __init__(self, name: str, doc: str, labels: tuple[str, ...], make) -> None:
        self.name, self.doc, self.label_names, self._make = name, doc, labels, make
        self.children: dict[tuple[str, ...], Count | Observations] = {}
        self._lock = threading.Lock()
        if not labels:
            self.children[()] = make()

    def labels(self, *values: str):
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {values}")
        with self._lock:
            if values not in self.children:
                self.children[values] = self._make()
            return self.children[values]

    def inc(self, amount: float = 1.0) -> None:
        self.children[()].inc(amount)  # type: ignore[union-attr]


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        count = lambda: Count(self._lock)
        self.requests = _Family(f"{PREFIX}_requests", "POST /rank requests by HTTP status",
                                ("status",), count)
        self.candidates = _Family(f"{PREFIX}_candidates", "candidates scored", (), count)
        self.candidates_without_features = _Family(
            f"{PREFIX}_candidates_without_features",
            "candidates with no row in item_stats or item_multimodal (scored with defaults)",
            (), count)
        self.sequence_items_without_features = _Family(
            f"{PREFIX}_sequence_items_without_features",
            "sequence items with no row in item_stats or item_multimodal", (), count)
        self.unknown_users = _Family(f"{PREFIX}_unknown_users",
                                     "requests whose user has no sequence (empty sequence used)",
                                     (), count)
        self.store_unavailable = _Family(f"{PREFIX}_store_unavailable",
                                         "requests refused because the online store failed",
                                         (), count)
        self.latency = _Family(f"{PREFIX}_request_seconds", "POST /rank latency by stage",
                               ("stage",), lambda: Observations(self._lock, LATENCY_BUCKETS))
        self._counters = [self.requests, self.candidates, self.candidates_without_features,
                          self.sequence_items_without_features, self.unknown_users,
                          self.store_unavailable]
        self.item_cache: ItemCache | None = None  # its hits, misses and size, when set
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.shared: Path | None = None  # the workers' folder, once share() was called

    def share(self, folder: Path) -> None:
        """Count with the other workers writing to ``folder`` (serving.workers > 1): write this
        worker's samples there every FLUSH_S seconds while they change; render() sums all."""
        self.shared = Path(folder)
        self._flush()
        threading.Thread(target=self._flush_while_alive, name="metrics-flush",
                         daemon=True).start()

    def _flush_while_alive(self) -> None:
        last = None
        while True:
            time.sleep(FLUSH_S)
            last = self._flush(last)

    def _flush(self, last: str | None = None) -> str:
        """Write this worker's samples to <folder>/<pid>.json (atomically) unless unchanged."""
        assert self.shared is not None
        text = json.dumps([[m.name, m.documentation, m.type,
                            [[s.name, s.labels, s.value] for s in m.samples]]
                           for m in self.collect()])
        if text != last:
            mine = self.shared / f"{os.getpid()}.json"
            temporary = mine.with_suffix(".tmp")
            temporary.write_text(text)
            os.replace(temporary, mine)
        return text

    def render(self) -> bytes:
        """The Prometheus text: this process's counters, or with share() every worker's."""
        if self.shared is None:
            return generate_latest(self.registry) + generate_latest(_ONE_WORKER)
        self._flush()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Summed(self.shared))
        return generate_latest(registry)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            for family in self._counters:
                metric = CounterMetricFamily(family.name, family.doc, labels=family.label_names)
                for values, child in family.children.items():
                    metric.add_metric(list(values), child.value)  # type: ignore[union-attr]
                yield metric
            hist = HistogramMetricFamily(self.latency.name, self.latency.doc,
                                         labels=self.latency.label_names)
            for values, child in self.latency.children.items():
                hist.add_metric(list(values), child.cumulative(),  # type: ignore[union-attr]
                                sum_value=child.total)  # type: ignore[union-attr]
            yield hist
        cache = self.item_cache
        if cache is not None:
            for name, doc, value in (
                ("hits", "item feature lookups served from the in-process cache", cache.hits),
                ("misses", "item feature lookups read from the store (absent or expired)",
                 cache.misses),
                ("bypassed_requests", ("requests that read the store directly because the "
                                       "cache hit under serving.item_cache_min_hit_rate"),
                 cache.bypassed),
            ):
                yield CounterMetricFamily(f"{PREFIX}_item_cache_{name}", doc, value=value)
            yield GaugeMetricFamily(f"{PREFIX}_item_cache_items", "items in the cache",
                                    value=len(cache))
            yield GaugeMetricFamily(f"{PREFIX}_item_cache_bypassing",
                                    "1 while the cache's hit rate is under its floor",
                                    value=int(cache.bypassing))


def _workers(alive: int) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_workers", "worker processes alive and counted in these "
                             "metrics (serving.workers)", value=alive)


class _OneWorker:
    def collect(self) -> Iterator[Metric]:
        yield _workers(1)


_ONE_WORKER = CollectorRegistry(auto_describe=False)
_ONE_WORKER.register(_OneWorker())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class _Summed:
    """The samples of every worker's file in a folder, summed by name and labels (a collector).

    Counters and histograms of every worker that has run; gauges of the live workers only."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        sums: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
        alive = 0
        for path in sorted(self.folder.glob("*.json")):
            try:
                data: list[Any] = json.loads(path.read_text())
            except (OSError, ValueError):  # a worker's file being replaced: next scrape
                continue
            live = _alive(int(path.stem))
            alive += live
            for name, doc, kind, samples in data:
                if kind == "gauge" and not live:
                    continue
                families.setdefault(name, Metric(name, doc, kind))
                for sample, labels, value in samples:
                    key = (name, sample, tuple(sorted(labels.items())))
                    sums[key] = sums.get(key, 0.0) + value
        for (name, sample, labels), value in sums.items():
            families[name].samples.append(Sample(sample, dict(labels), value))
        yield from families.values()
        yield _workers(alive)
