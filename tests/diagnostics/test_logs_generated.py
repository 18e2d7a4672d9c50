"""Properties of the log analyzer on synthetic HeyGem logs it was not written against.

The logs come from ``heygem_logs``: HeyGem's own messages timed by a simulation of its
queue, in every layout, with noise, damage, restarts and interleaved services. Each
scenario knows its truth (the verdict each task deserves, the consumer's real pace), and
the analyzer is judged against that truth, not against its own output.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import replace
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diagnostics.findings import Report, Severity
from diagnostics.logs import analyze_log, task_verdicts
from tests.diagnostics import heygem_logs as gen

_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _analyse(data: bytes) -> Report:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "dh.log"
        path.write_bytes(data)
        return analyze_log(path)


def _expected(scenario: gen.Scenario) -> dict[str, str]:
    return {task.code: gen.VERDICT[task.fault] for task in scenario.tasks}


def _problems(report: Report) -> set[tuple[str, str | None, str]]:
    return {
        (f.id, f.subject, f.severity.value)
        for f in report.findings
        if f.severity in (Severity.WARN, Severity.FAIL)
    }


def _resolution_s(layout: gen.Layout) -> float:
    """How precisely the log's lines are timed."""
    if layout.ms:
        return 0.001
    return 1e-6 if layout.docker_ts else 1.0


@_SETTINGS
@given(gen.scenarios(damage=gen.damages))
def test_a_healthy_generated_log_is_judged_healthy(scenario: gen.Scenario) -> None:
    report = _analyse(gen.render(scenario).data)

    assert report.exit_code() == 0
    assert _problems(report) == set()
    assert task_verdicts(report) == _expected(scenario)


@_SETTINGS
@given(gen.scenarios(faults=gen.faults, damage=gen.damages))
def test_each_task_gets_the_verdict_its_fault_deserves(scenario: gen.Scenario) -> None:
    report = _analyse(gen.render(scenario).data)

    assert task_verdicts(report) == _expected(scenario)
    assert report.exit_code() == (0 if scenario.healthy else 1)
    for finding in report.findings:
        if finding.severity is Severity.FAIL and finding.subject is not None:
            assert finding.subject in finding.title  # each finding names its task


@_SETTINGS
@given(gen.task_specs(gen.Fault.NEVER_TAKES), gen.layouts, gen.noises)
def test_a_consumer_that_never_takes_is_named_for_that_task(
    spec: gen.TaskSpec, layout: gen.Layout, noise: gen.Noise
) -> None:
    scenario = gen.Scenario((gen.Service("heygem-gen-video", (spec,)),), layout, noise)
    rendered = gen.render(scenario)

    report = _analyse(rendered.data)

    [finding] = [f for f in report.findings if f.id == "consumer-never-started"]
    assert finding.subject == spec.code and finding.severity is Severity.FAIL
    sends = rendered.truths[spec.code].sends
    assert sends == gen.QUEUE_SIZE
    assert f"put {sends} batches" in finding.title
    assert f"exactly the queue's {gen.QUEUE_SIZE} slots" in finding.title


@_SETTINGS
@given(gen.scenarios(faults=gen.faults), gen.damages.filter(lambda d: d.any))
def test_damage_never_produces_a_problem_finding(
    scenario: gen.Scenario, damage: gen.Damage
) -> None:
    clean = _analyse(gen.render(scenario).data)
    rendered = gen.render(replace(scenario, damage=damage))

    damaged = _analyse(rendered.data)

    assert _problems(damaged) == _problems(clean)
    assert task_verdicts(damaged) == task_verdicts(clean)
    assert damaged.exit_code() == clean.exit_code()
    [finding] = damaged.by_id("damaged-lines")
    assert finding.severity is Severity.INFO
    assert 1 <= damaged.details["damage"]["lines"] <= rendered.damaged_lines


@_SETTINGS
@given(gen.scenarios(faults=gen.faults, services_count=st.just(2), damage=gen.damages))
def test_interleaving_does_not_change_per_tasktask_verdicts(scenario: gen.Scenario) -> None:
    merged = task_verdicts(_analyse(gen.render(scenario).data))

    alone: dict[str, str] = {}
    for service in scenario.services:
        alone |= task_verdicts(_analyse(gen.render(scenario, only=service.name).data))

    assert merged == alone == _expected(scenario)


@_SETTINGS
@given(gen.scenarios(faults=gen.faults, services_count=st.just(1)), gen.layouts)
def test_the_layout_does_not_changetask_verdicts(scenario: gen.Scenario, other: gen.Layout) -> None:
    first = task_verdicts(_analyse(gen.render(scenario).data))
    second = task_verdicts(_analyse(gen.render(replace(scenario, layout=other)).data))

    assert first == second == _expected(scenario)


@_SETTINGS
@given(gen.scenarios(services_count=st.just(1)))
def test_pace_matches_the_simulation(scenario: gen.Scenario) -> None:
    rendered = gen.render(scenario)
    report = _analyse(rendered.data)
    tasks = {t["label"]: t for t in report.details["tasks"]}
    resolution = _resolution_s(scenario.layout)

    for spec in scenario.tasks:
        truth, measured = rendered.truths[spec.code], tasks[spec.code]
        # The costs are written with full precision: the median is the simulation's.
        assert measured["steady_batch_cost_s"] is not None and truth.steady_cost_s is not None
        assert abs(measured["steady_batch_cost_s"] - truth.steady_cost_s) < 2e-3
        assert truth.fps is not None and truth.consumer_span_s is not None
        error = truth.fps * 2 * resolution / truth.consumer_span_s
        if measured["fps"] is None:
            assert 2 * resolution >= truth.consumer_span_s
        else:
            assert abs(measured["fps"] - truth.fps) <= error + 5e-4  # details round to 3 places
        # A wait ends at a take; the line that began it is one frame read earlier.
        assert truth.longest_wait_s is not None
        slack = spec.read_s * 1.2 + 2 * resolution + 0.002
        assert abs(measured["longest_queue_wait_s"] - truth.longest_wait_s) <= slack


@_SETTINGS
@given(gen.task_specs(gen.Fault.RESTART), gen.layouts, gen.noises)
def test_a_restart_ends_the_open_task_at_its_time(
    spec: gen.TaskSpec, layout: gen.Layout, noise: gen.Noise
) -> None:
    scenario = gen.Scenario((gen.Service("heygem-gen-video", (spec,)),), layout, noise)
    rendered = gen.render(scenario)

    report = _analyse(rendered.data)

    [finding] = report.by_id("task-interrupted")
    restart = rendered.truths[spec.code].restart_at
    assert restart is not None
    assert finding.subject == spec.code
    assert f"interrupted by a service restart at {restart:%H:%M:%S}" in finding.title


@_SETTINGS
@given(gen.task_specs(gen.Fault.INIT_WH_LATE), gen.layouts, gen.noises)
def test_a_late_init_wh_answer_is_measured(
    spec: gen.TaskSpec, layout: gen.Layout, noise: gen.Noise
) -> None:
    scenario = gen.Scenario((gen.Service("heygem-gen-video", (spec,)),), layout, noise)
    rendered = gen.render(scenario)

    report = _analyse(rendered.data)

    [finding] = report.by_id("init-wh-timeout")
    assert finding.subject == spec.code
    assert "init_wh did not answer within 10 s" in finding.title
    assert "the task failed with an empty message" in finding.title
    took = re.search(r"it took (\d+\.\d) s", finding.title)
    truth = rendered.truths[spec.code].init_wh_answer_s
    assert took is not None and truth is not None
    assert abs(float(took[1]) - truth) <= 0.05 + 2 * _resolution_s(layout)


@_SETTINGS
@given(gen.scenarios(faults=st.just(gen.Fault.CPU), services_count=st.just(1)))
def test_cpu_fallback_advice_follows_onnxruntimes_words(scenario: gen.Scenario) -> None:
    report = _analyse(gen.render(scenario).data)

    [finding] = report.by_id("cpu-fallback")
    assert finding.severity is Severity.FAIL and finding.fix is not None
    wanted, other = (
        ("CUDA 12", "CUDA 11")
        if scenario.services[0].ort_failure == "cuda12"
        else ("CUDA 11", "CUDA 12")
    )
    assert wanted in finding.fix and other not in finding.fix
    for task in scenario.tasks:
        [suspected] = [f for f in report.by_id("cpu-fallback-suspected") if f.subject == task.code]
        assert suspected.severity is Severity.WARN
