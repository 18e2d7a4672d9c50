"""The thread budget: never oversubscribed, split by where each generator's work is."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heygem.config import GENERATORS, GenerateOptions
from heygem.pipeline import Pipeline
from heygem.resources import MAX_MODEL_STREAMS, ThreadBudget, workload_of

names = st.sampled_from([*GENERATORS, "some-new-generator"])


@given(cpus=st.integers(1, 256), generator=names)
def test_budget_never_oversubscribes(cpus: int, generator: str) -> None:
    budget = ThreadBudget.for_machine(cpus, generator=generator)
    assert budget.cpus == cpus
    assert 1 <= budget.model_streams * budget.model_threads <= cpus
    assert 1 <= budget.x264_threads <= cpus
    assert budget.generator == generator


@given(cpus=st.integers(1, 256))
def test_model_heavy_work_gets_the_cores_for_the_network(cpus: int) -> None:
    budget = ThreadBudget.for_machine(cpus, generator="wav2lip")
    assert budget.workload == "model-heavy"
    assert budget.model_streams == min(cpus, MAX_MODEL_STREAMS)
    assert budget.model_streams * budget.model_threads > cpus - budget.model_streams
    assert budget.x264_threads == 1


@given(cpus=st.integers(1, 256), generator=names.filter(lambda g: g != "wav2lip"))
def test_codec_heavy_work_keeps_the_cores_for_x264(cpus: int, generator: str) -> None:
    budget = ThreadBudget.for_machine(cpus, generator=generator)
    assert workload_of(generator) == "codec-heavy"
    assert budget.x264_threads == cpus
    assert budget.model_streams == 1 and budget.model_threads <= max(1, cpus // 2)


def test_a_budget_is_resplit_for_another_generator_but_kept_for_its_own() -> None:
    machine = ThreadBudget.for_machine(2, generator="mouthwarp")
    assert machine.for_generator("wav2lip") == ThreadBudget.for_machine(2, generator="wav2lip")
    pinned = machine.for_generator("wav2lip").with_threads(model_streams=1, model_threads=2)
    assert pinned.for_generator("wav2lip") is pinned


@pytest.mark.parametrize("generator", GENERATORS)
def test_pipeline_splits_a_machine_budget_for_its_generator(generator: str) -> None:
    options = GenerateOptions(generator=generator, checkpoint=Path("unused.pth"))  # type: ignore[arg-type]
    pipeline = Pipeline(options, budget=ThreadBudget.for_machine(2))
    assert pipeline.budget == ThreadBudget.for_machine(2, generator=generator)
