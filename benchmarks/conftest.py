"""Session fixtures: inputs generated once into a temp dir, models exported once.

``HEYGEM_BENCH_SMOKE=1`` shrinks every input (256x256, 1-2 s) so the wiring can be
checked in seconds; the numbers are then meaningless.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.support import Baselines, FreshJobs, Media, Models, Pipelines
from heygem.resources import ThreadBudget


@pytest.fixture(scope="session")
def budget() -> ThreadBudget:
    return ThreadBudget.for_machine()


@pytest.fixture(scope="session", autouse=True)
def _torch_threads(budget: ThreadBudget) -> Iterator[None]:
    # The pipeline's thread budget for every torch benchmark, not torch's default
    # (all cores), so ORT and torch are compared on equal threads.
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(budget.model_threads)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return Media(tmp_path_factory.mktemp("bench-media"))


@pytest.fixture(scope="session")
def models(media: Media, budget: ThreadBudget) -> Models:
    return Models(media.root, budget)


@pytest.fixture(scope="session")
def pipelines(media: Media, models: Models, budget: ThreadBudget) -> Pipelines:
    return Pipelines(media, models, budget)


@pytest.fixture(scope="session")
def baselines() -> Baselines:
    return Baselines()


@pytest.fixture(scope="session")
def fresh_jobs(media: Media, pipelines: Pipelines) -> FreshJobs:
    return FreshJobs(media, pipelines)
