"""The service page: ``GET /`` and the small read-only endpoints it calls (issue 28 item 5).

The page (``serving/page.html``, one file with its CSS and JS inline: nothing is fetched from
another host) lets one choose a user, shows the user's recent history and the ranking of a
candidate set with titles and posters, marks new items (PV 0 online, or no row at all), and
onboards an item through a form that posts to ``POST /items``. Ranking goes through the public
``POST /rank``; what the JSON API does not give, the page reads here:

- ``GET /ui/start``: a few user ids (from the run's sequences table), a default candidate set
  (the items onboarded last, then catalogue items spread over the id range), whether
  ``POST /items`` exists, ``serving.max_candidates``.
- ``GET /ui/context?user_id=U&item_ids=1,2,3``: the user's history (newest first) and each
  listed item with title, genres, poster URL, ``pv`` online and whether the store has its rows;
  one online read (:meth:`serving.features.FeatureReader.read`, the item cache included).
- ``GET /ui/poster/{item_id}``: the poster file the catalogue records for that item.

These routes are left out of ``/openapi.json``: they are the page's, not the API's contract.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response

from saviorrec.lake import Lake
from saviorrec.schema import PADDING_ITEM_ID
from serving.catalog import Catalog
from serving.features import StoreUnavailable
from serving.service import RankingService

PAGE = Path(__file__).with_name("page.html")
HISTORY_SHOWN = 12  # most recent clicks shown for the user
USERS_OFFERED = 20  # user ids offered in the page's user list
CANDIDATES = 24  # default candidate set: onboarded items first, then catalogue items
ONBOARDED_IN_CANDIDATES = 6


def _users(lake: Lake, n: int) -> list[int]:
    """The first ``n`` user ids of the run's sequences table (empty when it is missing)."""
    folder = lake.spark("sequences")
    users: list[int] = []
    for part in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        users += pq.read_table(part, columns=["user_id"]).column(0).to_pylist()
        if len(users) >= n:
            break
    return sorted({int(u) for u in users})[:n]


def _ids(text: str, limit: int) -> list[int]:
    """``1,2,3`` -> [1, 2, 3]; ValueError naming the bad value."""
    ids: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if not part.isdigit() or not 1 <= int(part) < 2**63:
            raise ValueError(f"item_ids: {part[:32]!r} is not an item id (an integer >= 1)")
        ids.append(int(part))
    if len(ids) > limit:
        raise ValueError(f"item_ids: {len(ids)} ids, at most serving.max_candidates = {limit}")
    return list(dict.fromkeys(ids))


def _error(status: int, detail: str, **extra: Any) -> Response:
    return Response(json.dumps({"detail": detail, **extra}), status_code=status,
                    media_type="application/json")


def add_page_routes(app: FastAPI, svc: RankingService, onboarding: bool) -> None:
    """GET / and the /ui/ endpoints over the service's store and the run's catalogue."""
    lake = Lake.from_config(svc.cfg)
    catalog = Catalog(lake)
    catalog.entries([])  # read now: the first read in a process pays pyarrow's start-up
    page = PAGE.read_text()
    limit = svc.cfg.serving.max_candidates

    def described(item_ids: list[int], features: Any) -> list[dict[str, Any]]:
        entries, missing = catalog.entries(item_ids), set(features.missing)
        out = []
        for i in item_ids:
            entry = entries.get(i)
            out.append({"item_id": i, "title": entry.title if entry else None,
                        "genres": entry.genres if entry else None,
                        "poster": f"/ui/poster/{i}" if catalog.poster(i) else None,
                        "pv": int(features.items[i]["pv"]), "has_features": i not in missing})
        return out

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        """The page (see the module docstring)."""
        return HTMLResponse(page)

    @app.get("/ui/start", include_in_schema=False)
    def start() -> dict[str, Any]:
        """User ids to offer, a default candidate set, and whether POST /items exists."""
        onboarded = catalog.onboarded(ONBOARDED_IN_CANDIDATES)
        rest = [i for i in catalog.first(CANDIDATES) if i not in onboarded]
        return {"users": _users(lake, USERS_OFFERED),
                "item_ids": (onboarded + rest)[:min(CANDIDATES, limit)],
                "onboarding": onboarding, "max_candidates": limit,
                "model_version": svc.ranker.model_version}

    @app.get("/ui/context", include_in_schema=False)
    def context(user_id: int, item_ids: str = "") -> Response:
        """The user's recent history and the listed items, described for the page."""
        try:
            ids = _ids(item_ids, limit)
        except ValueError as e:
            return _error(422, str(e))
        if not 0 <= user_id < 2**63:
            return _error(422, f"user_id: {user_id} is not a user id (an int64 >= 0)")
        try:
            features = svc.reader.read(user_id, ids)
        except StoreUnavailable as e:
            return _error(503, str(e), store=svc.reader.name)
        clicked = [i for i in features.sequence.item_ids if i != PADDING_ITEM_ID]
        history = described(clicked[::-1][:HISTORY_SHOWN], features)
        return Response(json.dumps({
            "user_id": user_id, "known": features.sequence.known,
            "sequence_length": int(features.sequence.seq_len), "history": history,
            "items": described(ids, features)}),
            media_type="application/json")

    @app.get("/ui/poster/{item_id}", include_in_schema=False)
    def poster(item_id: int) -> Response:
        """The poster file the catalogue records for the item; 404 when there is none."""
        path = catalog.poster(item_id)
        if path is None:
            return _error(404, f"item {item_id} has no poster in the run's catalogue")
        return FileResponse(path, headers={"Cache-Control": "max-age=3600"})
