"""Service counters, exposed at ``GET /metrics`` in the Prometheus text format.

One registry per app (tests build several apps in one process).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

PREFIX = "saviorrec_serving"


class Counters:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "POST /rank requests by HTTP status",
                                ["status"], registry=r)
        self.candidates = Counter(f"{PREFIX}_candidates", "candidates scored", registry=r)
        self.candidates_without_features = Counter(
            f"{PREFIX}_candidates_without_features",
            "candidates with no row in item_stats or item_multimodal (scored with defaults)",
            registry=r)
        self.sequence_items_without_features = Counter(
            f"{PREFIX}_sequence_items_without_features",
            "sequence items with no row in item_stats or item_multimodal", registry=r)
        self.unknown_users = Counter(f"{PREFIX}_unknown_users",
                                     "requests whose user has no sequence (empty sequence used)",
                                     registry=r)
        self.store_unavailable = Counter(f"{PREFIX}_store_unavailable",
                                         "requests refused because the online store failed",
                                         registry=r)
        self.latency = Histogram(
            f"{PREFIX}_request_seconds", "POST /rank latency by stage", ["stage"], registry=r,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.5, 1.0, 5.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
