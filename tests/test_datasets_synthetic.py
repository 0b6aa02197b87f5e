"""Properties of the synthetic generator, each against an expectation worked out independently:
Zipf popularity, determinism by seed, late cold items, topic-driven clicks, topic-driven text and
images, and flat memory when streaming more events."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from saviorrec.config import SyntheticConfig
from saviorrec.datasets import synthetic, synthetic_media
from saviorrec.datasets.prepare import write_events
from saviorrec.schema import EVENTS, ORACLE


def generate(cfg: SyntheticConfig) -> tuple[synthetic.World, pd.DataFrame]:
    world = synthetic.make_world(cfg)
    table = pa.concat_tables(events for events, _ in synthetic.iter_event_chunks(cfg, world))
    EVENTS.validate_arrow(table)
    frame = table.to_pandas()
    frame["ts"] = table["event_timestamp"].cast(pa.int64()).to_numpy()
    return world, frame


def _rank_counts(alpha: float) -> np.ndarray:
    # Many users and items: a user's events (unique per user and chunk) are far from exhausting
    # the head, so the counts follow the drawing weights rank ** -alpha.
    cfg = SyntheticConfig(n_events=200_000, n_items=20_000, n_users=20_000, n_topics=10,
                          popularity_alpha=alpha, cold_item_fraction=0.0, chunk_events=200_000)
    _, events = generate(cfg)
    return np.sort(np.bincount(events["item_id"], minlength=cfg.n_items + 1)[1:])[::-1]


def test_popularity_is_a_power_law_with_the_configured_exponent() -> None:
    slopes = {}
    for alpha in (0.8, 1.4):
        counts = _rank_counts(alpha)
        log_rank, log_count = np.log(np.arange(10, 501)), np.log(counts[9:500])
        slope, intercept = np.polyfit(log_rank, log_count, 1)
        residual = log_count - (slope * log_rank + intercept)
        r2 = 1 - (residual**2).sum() / ((log_count - log_count.mean()) ** 2).sum()
        assert r2 > 0.98  # a straight line in log-log: a power law
        assert slope == pytest.approx(-alpha, abs=0.2)
        slopes[alpha] = slope
        zipf = np.arange(1, 20_001, dtype=float) ** -alpha
        top_1pct = counts[:200].sum() / counts.sum()
        assert 0.7 * zipf[:200].sum() / zipf.sum() < top_1pct <= zipf[:200].sum() / zipf.sum()
    assert slopes[1.4] < slopes[0.8] - 0.3  # a larger alpha gives a heavier head


def test_same_seed_same_events_and_bytes_other_seed_differs(tmp_path: Path) -> None:
    cfg = SyntheticConfig(n_events=12_000, n_items=300, n_users=200, chunk_events=5_000)
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"]
    for path, seed in zip(paths, (0, 0, 1), strict=True):
        seeded = cfg.model_copy(update={"seed": seed})
        counts = write_events(seeded, synthetic.make_world(seeded), path, 1.0)
        assert counts["events"] == 12_000
    assert paths[0].read_bytes() == paths[1].read_bytes()
    a, c = pq.read_table(paths[0]), pq.read_table(paths[2])
    assert not a.equals(c)
    assert pq.ParquetFile(paths[0]).num_row_groups == 3  # one per chunk of 5,000


def test_cold_items_appear_only_in_the_last_window() -> None:
    cfg = SyntheticConfig(n_events=60_000, n_items=500, n_users=500, cold_item_fraction=0.2,
                          chunk_events=10_000)
    world, events = generate(cfg)
    cutoff = synthetic.cold_cutoff_us(world)
    assert cutoff - world.start_us == int(0.8 * world.span_us)
    is_cold = world.cold[events["item_id"] - 1]
    assert world.cold.sum() == 100
    assert (events.loc[is_cold, "ts"] >= cutoff).all()
    first_seen = events.groupby("item_id")["ts"].min()
    late = set(first_seen.index[first_seen >= cutoff])
    cold_ids = set(np.flatnonzero(world.cold) + 1)
    assert len(cold_ids & set(first_seen.index)) > 80  # cold items do get events, late
    assert cold_ids & set(first_seen.index) <= late
    assert (events["ts"] < cutoff).mean() == pytest.approx(0.8, abs=0.02)


def test_timestamps_form_sessions_and_rows_are_unique() -> None:
    cfg = SyntheticConfig(n_events=50_000, n_items=500, n_users=300, chunk_events=10_000)
    world, events = generate(cfg)
    assert not events.duplicated(["user_id", "item_id", "ts"]).any()
    assert events["ts"].min() >= world.start_us
    assert events["ts"].max() < world.start_us + world.span_us + 86_400 * 10**6
    assert events["user_id"].between(1, cfg.n_users).all()
    assert events["item_id"].between(1, cfg.n_items).all()
    assert set(events["rating"].unique()) <= set(np.arange(1, 11) / 2)
    gaps = events.sort_values(["user_id", "ts"]).groupby("user_id")["ts"].diff().dropna()
    assert 1e6 <= gaps.median() <= 600e6  # within a session: seconds to minutes
    spread = events.groupby("user_id")["ts"].agg(lambda t: t.max() - t.min())
    assert spread.median() > 30 * 86_400e6  # a user returns over months


def _auc_with_topic(events: pd.DataFrame, item_topic: np.ndarray) -> tuple[float, float]:
    """Test AUC of a user click rate, and of a (user, topic) click rate, learnt on the first 70%
    of time."""
    events = events.sort_values("ts").assign(
        click=lambda e: (e["rating"] >= 4.0).astype(int),
        topic=lambda e: item_topic[e["item_id"] - 1])
    cut = int(0.7 * len(events))
    train, test = events.iloc[:cut], events.iloc[cut:]
    prior = train["click"].mean()
    by_user = train.groupby("user_id")["click"].agg(["sum", "count"])
    user_rate = (by_user["sum"] + 5 * prior) / (by_user["count"] + 5)
    by_pair = train.groupby(["user_id", "topic"])["click"].agg(["sum", "count"])
    u = test["user_id"].map(user_rate).fillna(prior).to_numpy()
    keys = pd.MultiIndex.from_arrays([test["user_id"], test["topic"]])
    pair = by_pair.reindex(keys)
    pair_rate = (pair["sum"].fillna(0).to_numpy() + 5 * u) / (pair["count"].fillna(0).to_numpy()
                                                              + 5)
    return roc_auc_score(test["click"], u), roc_auc_score(test["click"], pair_rate)


def test_clicks_depend_on_the_item_topic() -> None:
    cfg = SyntheticConfig(n_events=100_000, n_items=1_000, n_users=500, n_topics=10,
                          chunk_events=25_000)
    world, events = generate(cfg)
    user_auc, topic_auc = _auc_with_topic(events, world.item_topic)
    assert topic_auc > user_auc + 0.05
    shuffled = np.random.default_rng(0).permutation(world.item_topic)
    user_auc_s, topic_auc_s = _auc_with_topic(events, shuffled)
    assert topic_auc_s < user_auc_s + 0.02  # the gain is the topic's, not extra parameters


def test_text_and_images_reveal_the_topic() -> None:
    rng = np.random.default_rng(3)
    n_topics, n = 10, 400
    topics = np.arange(n) % n_topics
    text = synthetic_media.item_text(topics, np.ones(n, bool), n_topics, rng)
    train, test = np.arange(n) < 300, np.arange(n) >= 300
    words_by_topic = [set() for _ in range(n_topics)]
    for i in np.flatnonzero(train):
        words_by_topic[topics[i]] |= set(text.overview[i].lower().strip(".").split())
    predicted = [max(range(n_topics), key=lambda t, i=i: len(
        set(text.overview[i].lower().strip(".").split()) & words_by_topic[t]))
        for i in np.flatnonzero(test)]
    assert np.mean(np.array(predicted) == topics[test]) > 0.9  # chance: 0.1

    images = dict(synthetic_media.item_images(np.arange(1, n + 1), topics, n_topics, 32, rng))
    pixels = np.stack([np.asarray(images[i + 1], dtype=float).ravel() for i in range(n)])
    centroids = np.stack([pixels[train & (topics == t)].mean(0) for t in range(n_topics)])
    nearest = ((pixels[test][:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert np.mean(nearest == topics[test]) > 0.9


def test_optional_text_items_are_empty() -> None:
    text = synthetic_media.item_text(np.array([0, 1, 0]), np.array([True, False, True]), 2,
                                     np.random.default_rng(0))
    assert text.title[1] == "" and text.overview[1] is None and text.genres[1] is None
    assert text.title[0] != "" and text.overview[0] is not None
    assert text.genres[0] == "Action|Children"  # topic 0: GENRES[0], GENRES[(0 * 7 + 3) % 19]


def _peak_bytes(n_events: int, path: Path) -> int:
    cfg = SyntheticConfig(n_events=n_events, n_items=2_000, n_users=1_000, chunk_events=5_000)
    world = synthetic.make_world(cfg)
    tracemalloc.start()
    try:
        write_events(cfg, world, path, 0.5)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streaming_memory_is_flat_in_the_number_of_events(tmp_path: Path) -> None:
    small = _peak_bytes(20_000, tmp_path / "small.parquet")
    large = _peak_bytes(200_000, tmp_path / "large.parquet")
    assert large < 1.3 * small, (small, large)
    assert pq.ParquetFile(tmp_path / "large.parquet").metadata.num_row_groups == 40


# --- the oracle: each event's true click probability ---------------------------------------------
def test_click_probability_by_hand() -> None:
    # threshold 4.0: a click when mean + noise >= 3.75, noise ~ N(0, 0.6)
    p = synthetic.click_probability(np.array([3.75, 3.75 + 0.6, 3.75 - 1.2]), 4.0)
    np.testing.assert_allclose(p, [0.5, 0.8413447, 0.0227501], atol=1e-6)
    # a threshold between half stars needs the next half star (4.2 -> 4.5 -> mean + noise >= 4.25)
    np.testing.assert_allclose(synthetic.click_probability(np.array([4.25]), 4.2), [0.5])
    assert synthetic.click_probability(np.array([0.0]), 0.5).tolist() == [1.0]
    assert synthetic.click_probability(np.array([9.0]), 5.5).tolist() == [0.0]


def test_click_probability_matches_simulated_ratings() -> None:
    """Independent expectation: draw the generator's ratings many times and count clicks."""
    rng = np.random.default_rng(7)
    means = np.array([2.0, 3.1, 3.6, 3.75, 4.0, 4.6])
    draws = 200_000
    for threshold in (3.5, 4.0, 4.5):
        score = means[:, None] + rng.normal(0, synthetic.RATING_NOISE_SD, (len(means), draws))
        rating = np.clip(np.round(score * 2) / 2, synthetic.RATING_MIN, synthetic.RATING_MAX)
        simulated = (rating >= threshold).mean(axis=1)
        np.testing.assert_allclose(synthetic.click_probability(means, threshold), simulated,
                                   atol=0.004)


def test_oracle_side_file_is_row_aligned_and_calibrated(tmp_path: Path) -> None:
    cfg = SyntheticConfig(n_events=12_000, n_users=400, n_items=300, n_topics=6,
                          chunk_events=5_000)
    events_path, oracle_path = tmp_path / "events.parquet", tmp_path / "oracle.parquet"
    write_events(cfg, synthetic.make_world(cfg), events_path, 0.5,
                 oracle=(oracle_path, 4.0))
    events, oracle = pq.read_table(events_path), pq.read_table(oracle_path)
    ORACLE.validate_arrow(oracle)
    assert oracle.num_rows == events.num_rows
    for key in ("user_id", "item_id", "event_timestamp"):
        assert oracle[key].equals(events[key])
    p = oracle["click_probability"].to_numpy()
    clicks = events["rating"].to_numpy() >= 4.0
    assert 0.0 <= p.min() and p.max() <= 1.0
    # calibrated: in each decile of p the click rate is the mean p (binomial error ~0.02)
    edges = np.quantile(p, np.linspace(0, 1, 11))
    decile = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 9)
    for d in range(10):
        rows = decile == d
        assert abs(clicks[rows].mean() - p[rows].mean()) < 0.06, d
    # and it ranks: the oracle's AUC on its own events is far above chance
    assert roc_auc_score(clicks, p) > 0.7


def test_content_oracle_is_the_oracle_averaged_over_unknown_quality() -> None:
    """Independent expectation: for fixed users and items, redraw the items' quality from its
    distribution many times, score each draw with the exact oracle, and average."""
    cfg = SyntheticConfig(n_events=1_000, n_items=200, n_users=50, n_topics=5, seed=3)
    world = synthetic.make_world(cfg)
    rng = np.random.default_rng(11)
    users, items = rng.integers(0, cfg.n_users, 40), rng.integers(0, cfg.n_items, 40)
    topic = world.item_topic[items]
    no_quality = synthetic.World(**{**world.__dict__, "quality": np.zeros(cfg.n_items)})
    mean = synthetic.rating_mean(no_quality, users, topic, items)  # [40]
    quality = rng.normal(0.0, synthetic.QUALITY_SD, (200_000, len(items)))
    for threshold in (3.5, 4.0):
        drawn = synthetic.click_probability((mean + quality).ravel(), threshold).reshape(quality.shape)
        np.testing.assert_allclose(
            synthetic.content_click_probability(world, users, items, threshold),
            drawn.mean(axis=0), atol=0.003)
    # and it ignores the item's own quality: two items of one topic score alike for a user
    same = np.flatnonzero(world.item_topic == world.item_topic[0])[:2]
    p = synthetic.content_click_probability(world, np.array([4, 4]), same, 4.0)
    assert p[0] == p[1] and world.quality[same[0]] != world.quality[same[1]]
