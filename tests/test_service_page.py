"""The service page (GET /, issue 28 item 5) in a real headless browser over the real service.

Debian's chromium, driven by selenium through chromedriver, loads the page from a uvicorn
server running the real app (real redis-server, Feast store, SavedModel and the onboarding of
test_onboard's tiny run: the real MiniLM and EfficientNet towers). It picks a user, ranks a
candidate set, onboards an item through the page's form and sees that item ranked and marked
new; a screenshot is saved in the test's tmp folder.

Expected values come from outside the page: the titles from the catalogue file the test writes,
the history from the world's sequences (test_serving_fixture.World), PV 0 from the world's
statistics, the order and scores from ``POST /rank`` called directly over HTTP.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uvicorn
from conftest import free_port
from test_onboard import NEW, TITLE, Run, built, poster, run  # noqa: F401 (fixtures)

from saviorrec.lake import Lake
from saviorrec.schema import ITEMS
from serving.app import create_app
from serving.service import RankingService

pytestmark = pytest.mark.redis

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
USER = 2
CANDIDATES = [1, 2, 3, 4, 5, 38]  # 38 has no statistics in the world: PV 0 from the start
WAIT_S = 120  # onboarding embeds with the frozen towers on a loaded 2-core machine


def write_catalogue(lake: Lake, posters: Path, n_items: int) -> dict[int, str]:
    """schema.ITEMS rows for the world's items (posters for items 1-3); item_id -> title."""
    titles = {i: f"World item {i}" for i in range(1, n_items + 1)}
    rows = [{"item_id": i, "title": t, "genres": "Drama", "tags": None, "overview": None,
             "image_path": str(posters / f"{i}.jpg") if i <= 3 else None, "topic": None}
            for i, t in titles.items()]
    lake.items.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=ITEMS.arrow_schema()), lake.items)
    return titles


class Server:
    """The app under uvicorn in a thread, on a free port."""

    def __init__(self, app: object) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture()
def browser() -> Iterator[object]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        why = ("chromium and chromedriver are not installed (scripts/system_deps.sh installs "
               "Debian's chromium and chromium-driver)")
        if os.environ.get("SAVIORREC_CI"):  # .ci/run installs them: a missing browser is a failure
            pytest.fail(why)
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1300,1250"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def cards(driver: object, box: str) -> list[dict[str, object]]:
    """The cards the page shows in ``box`` (history | ranking), in order."""
    return driver.execute_script(  # type: ignore[attr-defined]
        """return [...document.querySelectorAll(`#${arguments[0]} .card`)].map((c) => ({
             item_id: Number(c.dataset.itemId), new: c.dataset.new === "1",
             badge: c.querySelector(".badge") !== null,
             title: c.querySelector(".title").textContent,
             poster: c.querySelector("img") ? c.querySelector("img").naturalWidth : null}));""",
        box)


def wait_for(driver: object, condition: str, what: str) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script(f"return {condition}"))
    except TimeoutException:
        status = driver.execute_script(  # type: ignore[attr-defined]
            "return [document.getElementById('status').textContent, "
            "document.getElementById('onboard_note').textContent]")
        raise AssertionError(f"the page never got to {what}; status and onboarding notes: "
                             f"{status}") from None


def test_page_ranks_onboards_and_shows_the_new_item(run: Run, browser: object,  # noqa: F811
                                                     movielens_dir: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    world = run.built.world
    titles = write_catalogue(run.lake, movielens_dir / "posters", world.n_items)
    svc = RankingService.start(run.cfg)
    app = create_app(run.cfg, svc, onboard=run.onboarder.add_records)
    with Server(app) as server:
        driver.get(server.url + "/")  # type: ignore[attr-defined]
        wait_for(driver, "document.body.dataset.ready === '1'", "its start data")
        offered = [int(o.get_attribute("value"))
                   for o in driver.find_elements(By.CSS_SELECTOR, "#users option")]
        assert offered == sorted(world.sequences)[:len(offered)] and USER in offered

        user = driver.find_element(By.ID, "user")
        user.clear()
        user.send_keys(str(USER))
        box = driver.find_element(By.ID, "item_ids")
        box.clear()
        box.send_keys(", ".join(map(str, CANDIDATES)))
        driver.find_element(By.ID, "rank").click()
        wait_for(driver, "document.body.dataset.ranked === '1'", "a ranking")

        clicked = [i for i in world.sequences[USER] if i][::-1][:12]
        history = cards(driver, "history")
        assert [c["item_id"] for c in history] == clicked
        assert [c["title"] for c in history] == [titles[i] for i in clicked]
        direct = httpx.post(server.url + "/rank", json={"user_id": USER, "item_ids": CANDIDATES},
                            timeout=30).json()
        ranking = cards(driver, "ranking")
        assert [c["item_id"] for c in ranking] == [i["item_id"] for i in direct["items"]]
        for c in ranking:
            pv0 = world.stats.get(c["item_id"], {"pv": 0})["pv"] == 0
            assert c["title"] == titles[c["item_id"]] and c["new"] == c["badge"] == pv0, c
            assert (c["poster"] or 0) > 0 if c["item_id"] <= 3 else c["poster"] is None, c
        assert any(c["new"] for c in ranking) and not all(c["new"] for c in ranking)

        driver.find_element(By.ID, "on_id").send_keys(str(NEW))
        driver.find_element(By.ID, "on_title").send_keys(TITLE)
        driver.find_element(By.ID, "on_genres").send_keys("Sci-Fi|Drama")
        driver.find_element(By.ID, "on_poster").send_keys(poster(movielens_dir))
        driver.find_element(By.ID, "on_submit").click()
        wait_for(driver, "document.body.dataset.ranked === '2'", "a ranking after onboarding")

        note = driver.find_element(By.ID, "onboard_note").text
        assert note == f"added {NEW}", note
        ranking = cards(driver, "ranking")
        direct = httpx.post(server.url + "/rank", timeout=30,
                            json={"user_id": USER, "item_ids": [NEW, *CANDIDATES]}).json()
        assert [c["item_id"] for c in ranking] == [i["item_id"] for i in direct["items"]]
        assert direct["missing_item_ids"] == [i for i in CANDIDATES if i not in world.stats
                                              or i not in world.multimodal]
        new = next(c for c in ranking if c["item_id"] == NEW)
        assert new["title"] == TITLE and new["new"] and new["badge"] and (new["poster"] or 0) > 0
        shot = tmp_path / "service_page.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")


def test_page_endpoints_over_the_real_store(run: Run, movielens_dir: Path,  # noqa: F811
                                            tmp_path: Path) -> None:
    """Without a browser: the start data of a service without POST /items, the refusals, the
    poster files, and a title onboarded by another process seen without a restart."""
    from fastapi.testclient import TestClient

    world = run.built.world
    titles = write_catalogue(run.lake, movielens_dir / "posters", world.n_items)
    client = TestClient(create_app(run.cfg, RankingService.start(run.cfg)))  # no onboarder
    page = client.get("/")
    assert page.status_code == 200 and 'id="onboard"' in page.text and "http" not in \
        page.text.split("<script>")[1]  # nothing fetched from another host
    start = client.get("/ui/start").json()
    assert start["onboarding"] is False and start["users"] == sorted(world.sequences)
    assert start["item_ids"][0] == 1 and set(start["item_ids"]) <= set(titles)
    assert "/ui/start" not in client.get("/openapi.json").json()["paths"]

    bad = client.get("/ui/context", params={"user_id": 1, "item_ids": "1,x7"})
    assert bad.status_code == 422 and "'x7'" in bad.json()["detail"]
    assert client.get("/ui/context", params={"user_id": -1}).status_code == 422
    assert client.get("/ui/context", params={"user_id": "a"}).status_code == 422
    unknown = client.get("/ui/context", params={"user_id": 999, "item_ids": "38,39"}).json()
    assert unknown["known"] is False and unknown["history"] == []
    assert [(i["item_id"], i["pv"], i["has_features"]) for i in unknown["items"]] == \
        [(i, int(world.stats.get(i, {"pv": 0})["pv"]), i in world.stats and i in world.multimodal)
         for i in (38, 39)]

    assert client.get("/ui/poster/1").content == (movielens_dir / "posters" / "1.jpg").read_bytes()
    assert client.get("/ui/poster/4").status_code == 404  # no image_path
    assert client.get("/ui/poster/555").status_code == 404  # not in the catalogue

    path = tmp_path / "new.jsonl"  # onboarded by `saviorrec items add`, another process
    path.write_text(f'{{"item_id": {NEW}, "title": "{TITLE}"}}\n')
    run.onboarder.add_file(path)
    after = client.get("/ui/context", params={"user_id": 1, "item_ids": str(NEW)}).json()
    assert after["items"] == [{"item_id": NEW, "title": TITLE, "genres": None, "poster": None,
                               "pv": 0, "has_features": True}]
    assert client.get("/ui/start").json()["item_ids"][0] == NEW
