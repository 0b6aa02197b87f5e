"""The stage registry: entry points bound to the functions it names, artefacts that exist in Lake,
an order in which every stage runs after the stages it reads from."""

from __future__ import annotations

from pathlib import Path

import pytest

from saviorrec.lake import Lake
from saviorrec.pipeline import build_stages, entry_point
from saviorrec.stages import (
    SPARK_JOB_NAMES,
    SPARK_JOBS,
    STAGE_NAMES,
    STAGES,
    Stage,
    artefact_path,
)


def dotted(function: object) -> str:
    return f"{function.__module__}.{function.__qualname__}"  # type: ignore[attr-defined]


@pytest.mark.parametrize("stage", STAGES, ids=STAGE_NAMES)
def test_entry_point_is_the_registry_function(stage: Stage) -> None:
    assert dotted(entry_point(stage.name)) == stage.entry


def test_spark_runner_runs_the_registry_jobs() -> None:
    from spark_jobs.runner import JOB_RUNS, JOBS

    assert JOBS == SPARK_JOB_NAMES == ("samples", "coclick", "item_stats", "sequences")
    assert {name: dotted(run) for name, run in JOB_RUNS.items()} == \
        {job.name: job.entry for job in SPARK_JOBS}


def test_unknown_stage_is_named() -> None:
    with pytest.raises(ValueError, match="unknown stage 'nope'; stages are prepare, spark"):
        entry_point("nope")


@pytest.mark.parametrize("stage", STAGES + SPARK_JOBS, ids=STAGE_NAMES + SPARK_JOB_NAMES)
def test_artefacts_are_lake_paths(stage: Stage) -> None:
    lake = Lake(Path("/run"))
    for artefact in stage.reads + stage.writes:
        path = artefact_path(lake, artefact)
        assert isinstance(path, Path) and path.is_relative_to("/run"), artefact
    assert artefact_path(lake, "spark:samples") == Path("/run/lake/spark/samples")


def test_every_stage_runs_after_the_stages_it_reads_from() -> None:
    for stages in (STAGES, SPARK_JOBS):
        seen: set[str] = set()
        writer = {w: s.name for s in stages for w in s.writes}
        for stage in stages:
            assert set(stage.after) <= seen, stage.name
            inputs = {writer[r] for r in stage.reads if r in writer}
            # a stage runs after every stage of its list whose outputs it reads, directly or not
            closure, todo = set(), list(stage.after)
            while todo:
                name = todo.pop()
                closure.add(name)
                todo += [a for s in stages if s.name == name for a in s.after]
            assert inputs - {stage.name} <= closure, (stage.name, inputs - closure)
            seen.add(stage.name)


def test_pipeline_runs_the_registry_in_order() -> None:
    assert [s.name for s in build_stages()] == list(STAGE_NAMES)
    assert [s.sections for s in build_stages()] == [s.sections for s in STAGES]
