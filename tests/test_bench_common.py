"""benchmarks/_bench_common.source_stamp and serving.py's check of its cached world: a world
built by other code is rebuilt, not measured (a stale SavedModel once gave stale figures)."""

from __future__ import annotations

from pathlib import Path

from conftest import load_benchmark


def test_source_stamp_follows_names_and_contents(tmp_path: Path) -> None:
    common = load_benchmark("_bench_common")
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "sub" / "b.yaml").write_text("k: 1\n")
    (tmp_path / "pkg" / "notes.txt").write_text("ignored\n")
    (tmp_path / "c.py").write_text("y = 2\n")

    def stamp() -> str:
        return common.source_stamp(["pkg", "c.py"], root=tmp_path)

    first = stamp()
    assert first == stamp() and len(first) == 16
    (tmp_path / "pkg" / "notes.txt").write_text("changed\n")  # not source: same stamp
    assert stamp() == first
    (tmp_path / "pkg" / "sub" / "b.yaml").write_text("k: 2\n")
    second = stamp()
    assert second != first
    (tmp_path / "pkg" / "sub" / "b.yaml").rename(tmp_path / "pkg" / "sub" / "c.yaml")
    assert stamp() != second  # a renamed file changes it too


def test_serving_benchmark_rebuilds_a_world_built_by_other_code(tmp_path: Path) -> None:
    serving = load_benchmark("serving")
    work = tmp_path / "world"
    assert serving.stale_world(work, "abc") is None  # nothing cached: a fresh build follows
    work.mkdir()
    assert "no Redis dump" in serving.stale_world(work, "abc")
    (work / "dump.rdb").write_bytes(b"REDIS")
    assert "stamp missing" in serving.stale_world(work, "abc")
    (work / serving.STAMP_FILE).write_text("abc\n")
    assert serving.stale_world(work, "abc") is None
    assert "stamp abc, now def" in serving.stale_world(work, "def")
    stamp = serving.source_stamp(serving.WORLD_SOURCES)
    assert stamp == serving.source_stamp(serving.WORLD_SOURCES)
