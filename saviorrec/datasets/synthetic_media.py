"""Text and images of synthetic items, both driven by the item's latent topic.

Each topic owns a vocabulary of made-up words and a colour and stripe pattern; an item's title,
genres, tags and overview draw mostly from its topic's words, and its JPEG shows its topic's
colour and stripes under item-level noise. A model that reads text or pixels can therefore
recover the topic, which is also what drives the clicks (``synthetic.py``).
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
_CONSONANTS = "bcdfghjklmnprstvz"
_VOWELS = "aeiou"
WORDS_PER_TOPIC = 40
COMMON_WORDS = 60
TOPIC_WORD_SHARE = 0.7  # share of an overview's words taken from the item's topic
TAGGED_SHARE = 0.3  # share of items with text that also have user tags


@dataclass(frozen=True)
class ItemText:
    title: list[str]  # "" for an item without text
    genres: list[str | None]
    tags: list[str | None]
    overview: list[str | None]


def vocabularies(n_topics: int, rng: np.random.Generator) -> tuple[list[list[str]], list[str]]:
    """Disjoint made-up vocabularies: one per topic, and one of common words."""
    needed = n_topics * WORDS_PER_TOPIC + COMMON_WORDS
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < needed:
        syllables = rng.integers(2, 4)
        word = "".join(
            _CONSONANTS[rng.integers(len(_CONSONANTS))] + _VOWELS[rng.integers(len(_VOWELS))]
            for _ in range(syllables)
        )
        if word not in seen:
            seen.add(word)
            words.append(word)
    topics = [words[t * WORDS_PER_TOPIC:(t + 1) * WORDS_PER_TOPIC] for t in range(n_topics)]
    return topics, words[n_topics * WORDS_PER_TOPIC:]


def item_text(
    topics: np.ndarray, has_text: np.ndarray, n_topics: int, rng: np.random.Generator
) -> ItemText:
    """Title, genres, tags and overview of each item from its topic's words."""
    topic_words, common = vocabularies(n_topics, rng)
    out = ItemText([], [], [], [])
    for topic, text in zip(topics.tolist(), has_text.tolist(), strict=True):
        if not text:
            out.title.append("")
            out.genres.append(None)
            out.tags.append(None)
            out.overview.append(None)
            continue
        own = topic_words[topic]
        title = [own[i] for i in rng.integers(len(own), size=rng.integers(2, 4))]
        out.title.append(" ".join(w.capitalize() for w in title))
        out.genres.append("|".join(dict.fromkeys(_genres_of(topic))))
        n_words = int(rng.integers(12, 26))
        from_topic = rng.random(n_words) < TOPIC_WORD_SHARE
        words = [own[rng.integers(len(own))] if t else common[rng.integers(len(common))]
                 for t in from_topic]
        out.overview.append(" ".join(words).capitalize() + ".")
        tagged = rng.random() < TAGGED_SHARE
        tags = dict.fromkeys(own[i] for i in rng.integers(len(own), size=rng.integers(1, 4)))
        out.tags.append(", ".join(tags) if tagged else None)
    return out


def _genres_of(topic: int) -> tuple[str, str]:
    return GENRES[topic % len(GENRES)], GENRES[(topic * 7 + 3) % len(GENRES)]


# --- images -------------------------------------------------------------------------------------
def topic_template(topic: int, n_topics: int, size: int) -> np.ndarray:
    """(size, size, 3) floats in [0, 255]: the topic's hue with stripes at the topic's angle."""
    red, green, blue = colorsys.hsv_to_rgb(topic / n_topics, 0.8, 0.9)
    angle = np.pi * ((topic * 0.618034) % 1.0)
    frequency = 2 + topic % 4  # stripes per image side
    yy, xx = np.mgrid[0:size, 0:size] / size
    wave = np.sin(2 * np.pi * frequency * (xx * np.cos(angle) + yy * np.sin(angle)))
    shade = 0.65 + 0.35 * wave  # (size, size)
    return shade[..., None] * np.array([red, green, blue]) * 255.0


def item_images(
    item_ids: np.ndarray, topics: np.ndarray, n_topics: int, size: int, rng: np.random.Generator
) -> Iterator[tuple[int, Image.Image]]:
    """(item_id, image) for each item: its topic's template, a brightness jitter and noise."""
    templates: dict[int, np.ndarray] = {}
    for item_id, topic in zip(item_ids.tolist(), topics.tolist(), strict=True):
        if topic not in templates:
            templates[topic] = topic_template(topic, n_topics, size)
        pixels = templates[topic] * rng.uniform(0.8, 1.2) + rng.normal(0, 12.0, (size, size, 3))
        yield item_id, Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_images(images: Iterator[tuple[int, Image.Image]], folder: Path) -> dict[int, str]:
    """Save each image as <folder>/<item_id>.jpg; item id -> file name."""
    folder.mkdir(parents=True, exist_ok=True)
    names: dict[int, str] = {}
    for item_id, image in images:
        name = f"{item_id}.jpg"
        image.save(folder / name, format="JPEG", quality=90)
        names[item_id] = name
    return names
