"""Seeded synthetic events whose clicks share latent topics with item text and images.

The world (``make_world``): every item has a topic, a Zipf popularity weight
(rank ** -popularity_alpha over a random ranking) and a quality; a cold_item_fraction of items
is released only in the last COLD_WINDOW of the time span. Every user has a Dirichlet taste over
topics whose mean is the topics' popularity mass, so the item marginal stays Zipf.

Events (``iter_event_chunks``) come in time-ordered chunks of ``chunk_events`` with flat memory:
sessions of a user (geometric length, exponential gaps), each event's topic drawn from the
user's taste (or, with probability ``exploration``, from the global mix), its item by popularity
within the topic, and its rating from the user's taste for the topic relative to the topic's
mass plus item quality and noise; ratings are MovieLens-like half stars in [0.5, 5]. Within a
chunk a (user, item) pair is redrawn until unique (up to MAX_REDRAWS rounds, for users who have
seen nearly every item of their topics); across chunks a user may view an item again.

The oracle (``click_probability``): the rating's noise is the only randomness left once the user,
the item and hence the rating's mean are known, so P(click | user, item) is exact, a normal
tail. ``event_chunk`` returns it beside the events; ``saviorrec data prepare`` writes it to a
side file (ORACLE) that no model reads and that evaluation scores as the ceiling.

The content oracle (``content_click_probability``): an item's content carries its topic and
nothing of its quality, so for an item without events (PV 0) no model can know more than the
user's taste for the topic; its quality is a draw from N(0, QUALITY_SD^2) independent of which
items a user views. The best score such a model can give is P(click | user, topic), the oracle
with the quality integrated out: the ceiling on PV 0 (benchmarks/synthetic_coldstart.py).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from scipy.special import ndtr

from saviorrec.config import SyntheticConfig
from saviorrec.schema import EVENTS

COLD_WINDOW = 0.2  # cold items appear only in the last 20% of time (config doc)
MEAN_SESSION_EVENTS = 8.0
MEAN_GAP_S = 90.0  # mean seconds between two events of a session
RATING_MIN, RATING_MAX = 0.5, 5.0
RATING_NOISE_SD = 0.6  # standard deviation of the rating's Gaussian noise
AFFINITY_SLOPE = 0.7  # rating mean = 3 + tanh(AFFINITY_SLOPE * affinity) + quality
QUALITY_SD = 0.4  # standard deviation of the items' quality (Gaussian, mean 0)
MAX_REDRAWS = 50  # a pair still repeated after this many redraws stays (a re-view)


@dataclass(frozen=True)
class World:
    """Latent state; item i+1 is row i, user u+1 is row u."""

    item_topic: np.ndarray  # (n_items,) int64
    popularity: np.ndarray  # (n_items,) float64, sums to 1
    cold: np.ndarray  # (n_items,) bool
    quality: np.ndarray  # (n_items,) float64, added to the rating score
    topic_mass: np.ndarray  # (n_topics,) popularity mass of each topic
    taste: np.ndarray  # (n_users, n_topics) rows sum to 1
    activity: np.ndarray  # (n_users,) float64, sums to 1
    start_us: int  # first microsecond of the time span
    span_us: int


def make_world(cfg: SyntheticConfig) -> World:
    if cfg.n_topics > cfg.n_items:
        raise ValueError(f"synthetic.n_topics = {cfg.n_topics} exceeds n_items = {cfg.n_items}")
    rng = np.random.default_rng([cfg.seed, 0])
    n_items, n_topics = cfg.n_items, cfg.n_topics
    item_topic = rng.permutation(np.arange(n_items) % n_topics).astype(np.int64)
    rank = rng.permutation(n_items) + 1
    popularity = rank.astype(np.float64) ** -cfg.popularity_alpha
    popularity /= popularity.sum()
    n_cold = min(round(cfg.cold_item_fraction * n_items), n_items - 1)
    cold = np.zeros(n_items, dtype=bool)
    cold[rng.choice(n_items, size=n_cold, replace=False)] = True
    quality = rng.normal(0.0, QUALITY_SD, n_items)
    topic_mass = np.bincount(item_topic, weights=popularity, minlength=n_topics)
    taste = rng.gamma(cfg.user_topic_concentration * n_topics * topic_mass, size=(cfg.n_users,
                                                                                 n_topics))
    sums = taste.sum(axis=1, keepdims=True)
    taste = np.where(sums > 0, taste / np.where(sums > 0, sums, 1.0), topic_mass)
    activity = rng.lognormal(0.0, 1.0, cfg.n_users)
    start = dt.datetime.fromisoformat(cfg.start_date).replace(tzinfo=dt.UTC)
    return World(
        item_topic=item_topic, popularity=popularity, cold=cold, quality=quality,
        topic_mass=topic_mass, taste=taste, activity=activity / activity.sum(),
        start_us=int(start.timestamp() * 1_000_000), span_us=cfg.span_days * 86_400 * 1_000_000,
    )


def cold_cutoff_us(world: World) -> int:
    """Cold items have no event before this time."""
    return world.start_us + int(world.span_us * (1.0 - COLD_WINDOW))


# --- vectorised sampling from many categorical distributions at once ----------------------------
def _stacked_cdf(weights_by_row: np.ndarray) -> np.ndarray:
    """Row r's CDF shifted to (r, r + 1], flattened: ``searchsorted(cdf, r + u)`` samples row r."""
    cdf = np.cumsum(weights_by_row, axis=1)
    cdf /= cdf[:, -1:]
    return (cdf + np.arange(len(cdf))[:, None]).ravel()


def _sample_rows(cdf: np.ndarray, width: int, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Column index drawn from row ``rows[j]`` of a stacked CDF of rows of ``width``."""
    flat = np.searchsorted(cdf, rows + u, side="right")
    return np.clip(flat - rows * width, 0, width - 1)


@dataclass(frozen=True)
class _Samplers:
    taste_cdf: np.ndarray
    topic_cdf: np.ndarray  # global topic mix
    activity_cdf: np.ndarray
    by_topic: np.ndarray  # item indices sorted by topic
    within_cdf: np.ndarray  # popularity CDF of each topic's items, topic t in (t, t + 1]
    topic_start: np.ndarray  # first position of topic t in by_topic
    topic_size: np.ndarray


def _samplers(world: World) -> _Samplers:
    by_topic = np.argsort(world.item_topic, kind="stable")
    topic_size = np.bincount(world.item_topic, minlength=len(world.topic_mass))
    topic_start = np.concatenate([[0], np.cumsum(topic_size)[:-1]])
    sorted_topic = world.item_topic[by_topic]
    within = np.cumsum(world.popularity[by_topic])
    before = np.concatenate([[0.0], within])[topic_start][sorted_topic]
    within_cdf = (within - before) / world.topic_mass[sorted_topic] + sorted_topic
    return _Samplers(
        taste_cdf=_stacked_cdf(world.taste),
        topic_cdf=_stacked_cdf(world.topic_mass[None, :]),
        activity_cdf=_stacked_cdf(world.activity[None, :]),
        by_topic=by_topic, within_cdf=within_cdf, topic_start=topic_start,
        topic_size=topic_size,
    )


def _draw_items(s: _Samplers, world: World, users: np.ndarray, exploration: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(topic, item index) of each event of ``users``."""
    n_topics = len(world.topic_mass)
    explore = rng.random(len(users)) < exploration
    topic = np.where(
        explore,
        _sample_rows(s.topic_cdf, n_topics, np.zeros(len(users), np.int64), rng.random(len(users))),
        _sample_rows(s.taste_cdf, n_topics, users, rng.random(len(users))),
    )
    pos = np.searchsorted(s.within_cdf, topic + rng.random(len(users)), side="right")
    pos = np.clip(pos, s.topic_start[topic], s.topic_start[topic] + s.topic_size[topic] - 1)
    return topic, s.by_topic[pos]


def rating_mean(world: World, users: np.ndarray, topic: np.ndarray,
                items: np.ndarray) -> np.ndarray:
    """The rating before noise: the user's affinity for the topic (log of taste relative to the
    topic's mass, squashed) plus the item's quality."""
    return _taste_mean(world, users, topic) + world.quality[items]


def _taste_mean(world: World, users: np.ndarray, topic: np.ndarray) -> np.ndarray:
    """The rating before noise and quality: 3 + the user's squashed affinity for the topic."""
    affinity = np.log(np.maximum(world.taste[users, topic], 1e-12) / world.topic_mass[topic])
    return 3.0 + np.tanh(AFFINITY_SLOPE * affinity)


def _ratings(mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    score = mean + rng.normal(0, RATING_NOISE_SD, len(mean))
    return np.clip(np.round(score * 2) / 2, RATING_MIN, RATING_MAX).astype(np.float32)


def click_probability(mean: np.ndarray, click_threshold: float,
                      noise_sd: float = RATING_NOISE_SD) -> np.ndarray:
    """P(rating >= click_threshold) for ratings of the given means and Gaussian noise of
    ``noise_sd``, exactly.

    The rating is the half star nearest to mean + noise, clipped to [RATING_MIN, RATING_MAX]; it
    reaches the smallest half star h >= click_threshold exactly when mean + noise >= h - 0.25
    (numpy rounds the tie h - 0.25 up to h or down, a set of probability 0)."""
    half_star = math.ceil(click_threshold * 2) / 2
    if half_star <= RATING_MIN:
        return np.ones(len(mean))
    if half_star > RATING_MAX:
        return np.zeros(len(mean))
    return ndtr((np.asarray(mean, np.float64) - (half_star - 0.25)) / noise_sd)


def content_click_probability(world: World, users: np.ndarray, items: np.ndarray,
                              click_threshold: float) -> np.ndarray:
    """P(rating >= click_threshold | user, the item's topic): ``click_probability`` with the item's
    quality, N(0, QUALITY_SD^2), integrated out. The rating's noise and the quality are
    independent Gaussians, so mean + quality + noise is Gaussian with variance
    RATING_NOISE_SD^2 + QUALITY_SD^2 around the mean without quality, and the tail stays exact.
    ``users``, ``items``: 0-based indices into the world (the lake's ids minus 1)."""
    return click_probability(_taste_mean(world, users, world.item_topic[items]), click_threshold,
                             noise_sd=math.hypot(RATING_NOISE_SD, QUALITY_SD))


def _sessions(n_events: int, rng: np.random.Generator) -> np.ndarray:
    """Session index of each of ``n_events`` events (geometric session lengths)."""
    lengths = rng.geometric(1.0 / MEAN_SESSION_EVENTS, size=n_events // 2 + 1)
    return np.repeat(np.arange(len(lengths)), lengths)[:n_events]


def _must_redraw(world: World, users: np.ndarray, items: np.ndarray, ts: np.ndarray,
                 cutoff: int) -> np.ndarray:
    """Events on a cold item before its release, or repeating a (user, item) pair of the chunk."""
    key = users * len(world.cold) + items
    order = np.argsort(key, kind="stable")
    repeat = np.zeros(len(key), dtype=bool)
    repeat[order[1:]] = key[order][1:] == key[order][:-1]
    return repeat | (world.cold[items] & (ts < cutoff))


def event_chunk(cfg: SyntheticConfig, world: World, samplers: _Samplers, k: int
                ) -> tuple[pa.Table, np.ndarray]:
    """Chunk ``k``: the events of the k-th time window, sorted by time, and each event's rating
    mean (the oracle's input, ``click_probability``) in the same order."""
    n_chunks = math.ceil(cfg.n_events / cfg.chunk_events)
    n = min(cfg.chunk_events, cfg.n_events - k * cfg.chunk_events)
    rng = np.random.default_rng([cfg.seed, 1, k])
    window_us = world.span_us // n_chunks
    session = _sessions(n, rng)
    n_sessions = int(session[-1]) + 1
    session_user = _sample_rows(samplers.activity_cdf, len(world.activity),
                                np.zeros(n_sessions, np.int64), rng.random(n_sessions))
    session_start = world.start_us + k * window_us + rng.integers(0, window_us, n_sessions)
    gaps = rng.exponential(MEAN_GAP_S * 1e6, n).astype(np.int64) + 1_000_000
    first = np.r_[True, session[1:] != session[:-1]]
    gaps[first] = 0
    offset = np.cumsum(gaps) - np.maximum.accumulate(np.where(first, np.cumsum(gaps), 0))
    ts = session_start[session] + offset
    users = session_user[session]
    topic, items = _draw_items(samplers, world, users, cfg.exploration, rng)
    cutoff = cold_cutoff_us(world)
    redraw = _must_redraw(world, users, items, ts, cutoff)
    for _ in range(MAX_REDRAWS):
        if not redraw.any():
            break
        topic[redraw], items[redraw] = _draw_items(
            samplers, world, users[redraw], cfg.exploration, rng)
        redraw = _must_redraw(world, users, items, ts, cutoff)
    for _ in range(MAX_REDRAWS * 20):  # a repeat may stay, a cold item before release may not
        too_early = world.cold[items] & (ts < cutoff)
        if not too_early.any():
            break
        topic[too_early], items[too_early] = _draw_items(
            samplers, world, users[too_early], cfg.exploration, rng)
    else:
        raise RuntimeError("could not draw warm items before the cold cutoff; lower "
                           "synthetic.cold_item_fraction")
    mean = rating_mean(world, users, topic, items)
    rating = _ratings(mean, rng)
    order = np.lexsort((items, users, ts))
    events = pa.table({
        "user_id": pa.array(users[order] + 1, pa.int64()),
        "item_id": pa.array(items[order] + 1, pa.int64()),
        "rating": pa.array(rating[order], pa.float32()),
        "event_timestamp": pa.array(ts[order], pa.timestamp("us", tz="UTC")),
    }, schema=EVENTS.arrow_schema())
    return events, mean[order]


def iter_event_chunks(cfg: SyntheticConfig, world: World
                      ) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """All ``n_events`` events, chunk by chunk, each with its rating means (``event_chunk``);
    the same seed gives the same chunks."""
    samplers = _samplers(world)
    for k in range(math.ceil(cfg.n_events / cfg.chunk_events)):
        yield event_chunk(cfg, world, samplers, k)
