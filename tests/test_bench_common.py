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


def test_table_differences_compares_values_not_order_or_counts() -> None:
    import pyarrow as pa

    bench = load_benchmark("_bench_common")
    left = pa.table({"k": [2, 1, 3], "x": pa.array([0.5, 1.0, 2.0], pa.float32()),
                     "s": pa.array([[1.0, 2.0], [3.0], []], pa.list_(pa.float32()))})
    shuffled = left.take([2, 0, 1])
    assert bench.table_differences(left, shuffled, ["k"])["equal"]
    # a float within the tolerance is equal; beyond it, the column and the first key are named
    near = left.set_column(1, "x", pa.array([0.5, 1.0 + 1e-8, 2.0], pa.float32()))
    assert bench.table_differences(near, left, ["k"])["equal"]
    far = left.set_column(1, "x", pa.array([0.5, 1.001, 2.0], pa.float32()))
    diff = bench.table_differences(far, left, ["k"])
    assert not diff["equal"]
    assert diff["columns"]["x"]["rows_differing"] == 1
    assert diff["columns"]["x"]["first_row"] == {"k": "1"}
    assert abs(diff["columns"]["x"]["max_abs_diff"] - 0.001) < 1e-6
    # one list element differs: that row; a list of another length: that row
    element = left.set_column(2, "s", pa.array([[1.0, 2.5], [3.0], []], pa.list_(pa.float32())))
    assert bench.table_differences(element, left, ["k"])["columns"]["s"]["first_row"] == {"k": "2"}
    longer = left.set_column(2, "s", pa.array([[1.0, 2.0], [3.0, 0.0], []],
                                              pa.list_(pa.float32())))
    assert bench.table_differences(longer, left, ["k"])["columns"]["s"]["rows_differing"] == 1
    # same counts are not enough, other counts are never equal
    assert not bench.table_differences(left.slice(0, 2), left, ["k"])["equal"]
    assert bench.table_differences(left.drop_columns(["s"]), left, ["k"])["columns"] == {
        "s": {"missing_in": "left"}}
