"""The one error tree of heygem-harness, and the structured cause every error carries.

Every error says what happened, what was expected and what to do (``hint``), and carries a
``FailureCause``: set where the cause is known (the watchdog, a stage wrapper, a runner),
so nobody has to read meaning back out of message text. Errors are converted only at the
edges: the CLI maps ``exit_code`` to the process exit status, the service maps the class
to an HTTP status, the diagnostics map the cause to an outcome. Each user-facing class
has its own exit code so scripts can tell failures apart without parsing messages.
"""

from __future__ import annotations

from enum import StrEnum


class FailureCause(StrEnum):
    """Why a run failed, as far as the code that noticed it could tell.

    Adding a cause: add a member and its entry in ``CAUSE_DESCRIPTIONS``; a test checks that
    every member has one.
    """

    # The user's input or options.
    INVALID_OPTION = "invalid-option"
    INPUT_NOT_FOUND = "input-not-found"
    MEDIA_UNREADABLE = "media-unreadable"
    NO_AUDIO_STREAM = "no-audio-stream"
    EMPTY_AUDIO = "empty-audio"
    NO_FACE = "no-face"
    INPUT_TOO_LARGE = "input-too-large"
    BAD_CHECKPOINT = "bad-checkpoint"
    OUTPUT_NOT_WRITABLE = "output-not-writable"
    # A stage that went silent.
    CONSUMER_NEVER_STARTED = "consumer-never-started"
    NO_PROGRESS = "no-progress"
    PROCESS_STOPPED = "process-stopped"  # a child in state T (SIGSTOP, a debugger)
    # A process that died, decoded from its exit.
    SHM_EXHAUSTED = "shm-exhausted"  # SIGBUS or ENOSPC on /dev/shm
    OOM_KILLED = "oom-killed"  # SIGKILL with the kernel's OOM record as evidence
    KILLED = "killed"  # SIGKILL without OOM evidence: someone killed it
    SEGFAULT = "segfault"
    ABORTED = "aborted"
    TERMINATED = "terminated"
    EXITED = "exited"  # a child left with an exit code while it still had work
    # Code that raised.
    WORKER_RAISED = "worker-raised"  # the dataset code raised inside a live worker
    STAGE_RAISED = "stage-raised"
    # Devices.
    CPU_FALLBACK = "cpu-fallback"
    # The job as a whole.
    CANCELLED = "cancelled"
    TIMED_OUT = "timed-out"
    SERVICE_RESTARTED = "service-restarted"
    WORKER_LOST = "worker-lost"  # a remote worker vanished with the job, attempts used up
    INTERNAL = "internal"

    @property
    def description(self) -> str:
        return CAUSE_DESCRIPTIONS[self]

    @property
    def is_input(self) -> bool:
        return self in _INPUT_CAUSES


CAUSE_DESCRIPTIONS: dict[FailureCause, str] = {
    FailureCause.INVALID_OPTION: "an option is invalid",
    FailureCause.INPUT_NOT_FOUND: "an input file was not found",
    FailureCause.MEDIA_UNREADABLE: "an input could not be decoded",
    FailureCause.NO_AUDIO_STREAM: "the audio input has no audio stream",
    FailureCause.EMPTY_AUDIO: "the audio is empty",
    FailureCause.NO_FACE: "no face was found in the template",
    FailureCause.INPUT_TOO_LARGE: "an input is above the limits",
    FailureCause.BAD_CHECKPOINT: "the model checkpoint cannot be used",
    FailureCause.OUTPUT_NOT_WRITABLE: "the output cannot be written",
    FailureCause.CONSUMER_NEVER_STARTED: "consumer never started or died",
    FailureCause.NO_PROGRESS: "a stage made no progress",
    FailureCause.PROCESS_STOPPED: "a process was stopped (state T)",
    FailureCause.SHM_EXHAUSTED: "shared memory exhausted (/dev/shm is full)",
    FailureCause.OOM_KILLED: "killed by the kernel's OOM killer",
    FailureCause.KILLED: "a process was killed (SIGKILL)",
    FailureCause.SEGFAULT: "segmentation fault in native code (SIGSEGV)",
    FailureCause.ABORTED: "native code aborted (SIGABRT)",
    FailureCause.TERMINATED: "a process was terminated (SIGTERM)",
    FailureCause.EXITED: "a worker process exited while it still had work",
    FailureCause.WORKER_RAISED: "the data loading code raised in a worker",
    FailureCause.STAGE_RAISED: "a stage raised an error",
    FailureCause.CPU_FALLBACK: "CPU fallback (a GPU was requested)",
    FailureCause.CANCELLED: "cancelled",
    FailureCause.TIMED_OUT: "the job timed out",
    FailureCause.SERVICE_RESTARTED: "the service restarted while the job ran",
    FailureCause.WORKER_LOST: "the worker running the job vanished (its machine, container or "
    "whole worker died) on every attempt",
    FailureCause.INTERNAL: "an internal error",
}

_INPUT_CAUSES = frozenset(
    {
        FailureCause.INVALID_OPTION,
        FailureCause.INPUT_NOT_FOUND,
        FailureCause.MEDIA_UNREADABLE,
        FailureCause.NO_AUDIO_STREAM,
        FailureCause.EMPTY_AUDIO,
        FailureCause.NO_FACE,
        FailureCause.INPUT_TOO_LARGE,
        FailureCause.BAD_CHECKPOINT,
        FailureCause.OUTPUT_NOT_WRITABLE,
    }
)


class HeygemError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code: int = 1
    default_cause: FailureCause = FailureCause.INTERNAL

    def __init__(
        self, message: str, *, hint: str | None = None, cause: FailureCause | None = None
    ) -> None:
        if not message:
            # HeyGem's own errors are sometimes empty; ours never are.
            message = f"{type(self).__name__} (no detail available)"
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.cause = cause or self.default_cause

    def __str__(self) -> str:
        return f"{self.message} -> {self.hint}" if self.hint else self.message

    def to_dict(self) -> dict[str, str | int | None]:
        return {
            "type": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "cause": self.cause.value,
        }


# --- the user's input or options were wrong -------------------------------------------
class InputError(HeygemError):
    """Something the user supplied is wrong; fixing the input fixes the run."""

    exit_code = 2
    default_cause = FailureCause.INVALID_OPTION


class InvalidOption(InputError):
    exit_code = 10
    default_cause = FailureCause.INVALID_OPTION


class InputNotFound(InputError):
    exit_code = 11
    default_cause = FailureCause.INPUT_NOT_FOUND


class MediaUnreadable(InputError):
    exit_code = 12
    default_cause = FailureCause.MEDIA_UNREADABLE


class NoAudioStream(InputError):
    exit_code = 13
    default_cause = FailureCause.NO_AUDIO_STREAM


class EmptyAudio(InputError):
    exit_code = 14
    default_cause = FailureCause.EMPTY_AUDIO


class NoFaceFound(InputError):
    exit_code = 15
    default_cause = FailureCause.NO_FACE


class InputTooLarge(InputError):
    exit_code = 16
    default_cause = FailureCause.INPUT_TOO_LARGE


class CheckpointError(InputError):
    exit_code = 17
    default_cause = FailureCause.BAD_CHECKPOINT


class OutputNotWritable(InputError):
    exit_code = 18
    default_cause = FailureCause.OUTPUT_NOT_WRITABLE


# --- the run itself failed ----------------------------------------------------------
class PipelineError(HeygemError):
    """The pipeline failed while running; ``stage`` names the pipeline stage, if known."""

    exit_code = 20
    default_cause = FailureCause.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        stage: str | None = None,
        hint: str | None = None,
        cause: FailureCause | None = None,
    ) -> None:
        super().__init__(message, hint=hint, cause=cause)
        self.stage = stage

    def to_dict(self) -> dict[str, str | int | None]:
        return {**super().to_dict(), "stage": self.stage}


class PipelineStalled(PipelineError):
    """A stage stopped making progress past its deadline (the HeyGem 'queue full' hang)."""

    exit_code = 21
    default_cause = FailureCause.NO_PROGRESS


class StageCrashed(PipelineError):
    """A stage raised or its process died."""

    exit_code = 22
    default_cause = FailureCause.STAGE_RAISED


class ProviderUnavailable(PipelineError):
    """The requested compute provider (e.g. CUDA) is not usable and fallback was refused."""

    exit_code = 23
    default_cause = FailureCause.CPU_FALLBACK


class Cancelled(PipelineError):
    exit_code = 130
    default_cause = FailureCause.CANCELLED
