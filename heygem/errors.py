"""The one error tree of heygem-harness.

Every error says what happened, what was expected and what to do (``hint``). Errors are
converted only at the edges: the CLI maps ``exit_code`` to the process exit status, the
service maps the class to an HTTP status. Each user-facing class has its own exit code so
scripts can tell failures apart without parsing messages.
"""

from __future__ import annotations


class HeygemError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        if not message:
            # HeyGem's own errors are sometimes empty; ours never are.
            message = f"{type(self).__name__} (no detail available)"
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} -> {self.hint}" if self.hint else self.message

    def to_dict(self) -> dict[str, str | int | None]:
        return {"type": type(self).__name__, "message": self.message, "hint": self.hint}


# --- the user's input or options were wrong -------------------------------------------
class InputError(HeygemError):
    """Something the user supplied is wrong; fixing the input fixes the run."""

    exit_code = 2


class InvalidOption(InputError):
    exit_code = 10


class InputNotFound(InputError):
    exit_code = 11


class MediaUnreadable(InputError):
    exit_code = 12


class NoAudioStream(InputError):
    exit_code = 13


class EmptyAudio(InputError):
    exit_code = 14


class NoFaceFound(InputError):
    exit_code = 15


class InputTooLarge(InputError):
    exit_code = 16


class CheckpointError(InputError):
    exit_code = 17


class OutputNotWritable(InputError):
    exit_code = 18


# --- the run itself failed ----------------------------------------------------------
class PipelineError(HeygemError):
    """The pipeline failed while running; the message names the stage."""

    exit_code = 20

    def __init__(self, message: str, *, stage: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.stage = stage

    def to_dict(self) -> dict[str, str | int | None]:
        return {**super().to_dict(), "stage": self.stage}


class PipelineStalled(PipelineError):
    """A stage stopped making progress past its deadline (the HeyGem 'queue full' hang)."""

    exit_code = 21


class StageCrashed(PipelineError):
    """A stage raised or its process died."""

    exit_code = 22


class ProviderUnavailable(PipelineError):
    """The requested compute provider (e.g. CUDA) is not usable and fallback was refused."""

    exit_code = 23


class Cancelled(PipelineError):
    exit_code = 130
