"""One place that decides where the CPUs go: the thread budget, per generator and stage.

The model's intra-op threads (ONNX Runtime or torch) and x264's threads together must
not oversubscribe the CPUs this process may actually use: the affinity mask and the
cgroup CPU quota (``heygem.cgroups.usable_cpus``, which the doctor reports too), not
``os.cpu_count()`` (HeyGem's NumExpr saw 72 cores in a container limited to a few).

Which stage gets the cores follows where a generator's work is, as measured on the
project machine (2 cores; ``benchmarks/test_threads.py`` re-measures every split):

- codec-heavy (the embedded default): the model sees only small mouth crops (~5 ms a
  frame on one thread) while decoding and x264 encoding 720p dominate, so x264 gets
  every core and the model one or two threads. Giving the model both cores only makes
  it contend with x264.
- model-heavy (Wav2Lip, ~8 GFLOP a frame): the network is ~90 % of the job's CPU time,
  so it gets every core; x264 gets one thread, which idles most of the time, and a
  second x264 thread would only take turns with the network. The cores go to the
  network as concurrent batches ("streams", one intra-op thread each) rather than as
  intra-op threads of one batch: on 2 cores that measured ~10 % faster when idle and
  ~25 % faster when other processes share the cores, because threads inside one
  operator wait for each other at every layer and a descheduled thread stalls them
  all. Beyond 4 CPUs the streams stop growing (each holds a batch's activations) and
  the rest become intra-op threads: an extrapolation, measured only on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from heygem.cgroups import usable_cpus
from heygem.config import GenerateOptions

Workload = Literal["codec-heavy", "model-heavy"]

# Generators whose network dominates a job (all others are treated as codec-heavy).
MODEL_HEAVY_GENERATORS: frozenset[str] = frozenset({"wav2lip"})
MAX_MODEL_STREAMS = 4


def workload_of(generator: str) -> Workload:
    return "model-heavy" if generator in MODEL_HEAVY_GENERATORS else "codec-heavy"


@dataclass(frozen=True)
class ThreadBudget:
    """How many threads each consumer of one job gets on ``cpus`` usable CPUs."""

    cpus: int
    generator: str  # the generator the split was made for
    model_threads: int  # intra-op threads of one batch (ONNX Runtime's or torch's)
    x264_threads: int
    model_streams: int = 1  # batches the generate stage runs at once

    @property
    def workload(self) -> Workload:
        return workload_of(self.generator)

    @classmethod
    def for_machine(cls, cpus: int | None = None, *, generator: str | None = None) -> ThreadBudget:
        """The split for ``generator`` (default: the default generator) on this machine
        (``cpus`` overrides the count)."""
        generator = generator or GenerateOptions().generator
        cpus = max(1, usable_cpus() if cpus is None else cpus)
        if workload_of(generator) == "model-heavy":
            streams = min(cpus, MAX_MODEL_STREAMS)
            return cls(
                cpus,
                generator,
                model_threads=max(1, cpus // streams),
                x264_threads=1,
                model_streams=streams,
            )
        # Codec-heavy: x264 takes all cores; the small model one thread (two from 4 CPUs).
        return cls(cpus, generator, model_threads=max(1, min(2, cpus // 2)), x264_threads=cpus)

    def for_generator(self, generator: str) -> ThreadBudget:
        """The same CPUs split for another generator (this budget if it was made for it)."""
        if generator == self.generator:
            return self
        return ThreadBudget.for_machine(self.cpus, generator=generator)

    def with_threads(
        self,
        *,
        model_threads: int | None = None,
        x264_threads: int | None = None,
        model_streams: int | None = None,
    ) -> ThreadBudget:
        """An explicit split (benchmarks compare splits; the regression check pins one)."""
        return replace(
            self,
            model_threads=self.model_threads if model_threads is None else model_threads,
            x264_threads=self.x264_threads if x264_threads is None else x264_threads,
            model_streams=self.model_streams if model_streams is None else model_streams,
        )

    def describe(self) -> str:
        model = f"{self.model_threads} thread(s)"
        if self.model_streams > 1:
            model = f"{self.model_streams} concurrent batches x {model}"
        return (
            f"{self.generator} ({self.workload}): model {model}, x264 {self.x264_threads} "
            f"thread(s), of {self.cpus} usable CPU(s)"
        )
