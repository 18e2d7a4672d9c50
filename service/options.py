"""Generation options as the service sees them, derived from ``heygem.config.GenerateOptions``.

Nothing here lists an option by hand: ``PipelineSettings`` (the warm pipeline every worker
holds, ``HEYGEM_SERVICE_PIPELINE__<OPTION>``) has one field per ``option_specs()`` entry and
``JobOptions`` (what a client may override for one job) one per ``per_job_fields()`` entry.
Adding an option to ``GenerateOptions`` adds it here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from heygem.config import (
    FaultInjection,
    GenerateOptions,
    OptionSpec,
    option_specs,
    per_job_fields,
)
from heygem.errors import InvalidOption

# Where the service's defaults differ from the command line's, and why.
SERVICE_DEFAULTS: dict[str, Any] = {
    # A shared server refuses hour-long jobs unless its operator raises this.
    "max_audio_seconds": 600.0,
    # None: <data_dir>/cache, so everything the service stores lives under --data-dir.
    "cache_dir": None,
}
# Options whose value is a server decision even though a job may switch the feature on.
SERVER_ONLY_CHECKS = ("generator", "fault")


def _annotation(spec: OptionSpec) -> Any:
    kind: Any = spec.kind
    if spec.choices:
        kind = Literal.__getitem__(spec.choices)
    elif spec.kind is FaultInjection:
        kind = str  # written STAGE:KIND[:SECONDS], parsed by FaultInjection.parse
    return kind | None if spec.optional else kind


def _default(spec: OptionSpec) -> Any:
    if spec.name in SERVICE_DEFAULTS:
        return SERVICE_DEFAULTS[spec.name]
    value = getattr(GenerateOptions(), spec.name)
    return str(value) if isinstance(value, FaultInjection) else value


def _pipeline_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for spec in option_specs():
        annotation = _annotation(spec)
        if spec.name == "cache_dir":
            annotation = Path | None
        fields[spec.name] = (annotation, Field(_default(spec), description=spec.info.help))
    return fields


def _job_fields() -> dict[str, Any]:
    return {
        spec.name: (_annotation(spec) | None, Field(None, description=spec.info.help))
        for spec in per_job_fields()
    }


class PipelineOptionsModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="after")
    def _valid_options(self) -> Self:
        try:
            self.to_options(Path("."))
        except InvalidOption as exc:
            raise ValueError(str(exc)) from None
        return self

    def to_options(self, data_dir: Path) -> GenerateOptions:
        """The warm GenerateOptions (validated); the cache defaults to ``data_dir/cache``."""
        values = dict(self)
        values["cache_dir"] = values.get("cache_dir") or data_dir / "cache"
        fault = values.get("fault")
        values["fault"] = FaultInjection.parse(fault) if fault else None
        return GenerateOptions(**values).validated()


class JobOptionsModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="after")
    def _valid_values(self) -> Self:
        """Per-value checks (ranges, the fault syntax); server checks happen in ``apply``."""
        given = self.given()
        try:
            if given.get("fault"):
                FaultInjection.parse(given["fault"])
            plain = {k: v for k, v in given.items() if k not in SERVER_ONLY_CHECKS}
            if plain:
                GenerateOptions().with_changes(**plain)
        except InvalidOption as exc:
            raise ValueError(str(exc)) from None
        return self

    def given(self) -> dict[str, Any]:
        """The overrides the client actually sent."""
        return self.model_dump(exclude_none=True, include=set(type(self).option_names()))

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(spec.name for spec in per_job_fields())

    def apply(self, base: GenerateOptions, *, allow_fault: bool = True) -> GenerateOptions:
        """``base`` with these overrides; InvalidOption (HTTP 400) where the server says no."""
        changes = self.given()
        if "fault" in changes:
            if not allow_fault:
                raise InvalidOption(
                    "fault injection is disabled on this server", hint="drop the 'fault' option"
                )
            changes["fault"] = FaultInjection.parse(changes["fault"])
        if changes.get("generator") == "wav2lip" and base.checkpoint is None:
            raise InvalidOption(
                "this server has no Wav2Lip checkpoint, so it cannot run the wav2lip generator",
                hint="use generator=rewrite, or ask the operator to set "
                "HEYGEM_SERVICE_PIPELINE__CHECKPOINT",
            )
        return base.with_changes(**changes) if changes else base


PipelineSettings: type[PipelineOptionsModel] = create_model(
    "PipelineSettings",
    __base__=PipelineOptionsModel,
    __doc__="The warm pipeline every worker holds (GenerateOptions, as settings).",
    **_pipeline_fields(),
)

JobOptions: type[JobOptionsModel] = create_model(
    "JobOptions",
    __base__=JobOptionsModel,
    __doc__="Options a client may override for one job (GenerateOptions' per-job fields).",
    **_job_fields(),
)


def job_options(base: GenerateOptions, overrides: dict[str, Any]) -> GenerateOptions:
    """A stored job's overrides applied to the warm options (the worker's side)."""
    return JobOptions.model_validate(overrides).apply(base) if overrides else base
