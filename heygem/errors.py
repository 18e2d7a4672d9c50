"""The one error tree of heygem-harness, and the structured cause every error carries.

Every error says what happened, what was expected and what to do (``hint``), and carries a
``FailureCause``: set where the cause is known (the watchdog, a stage wrapper, a runner),
so nobody has to read meaning back out of message text. Errors are converted only at the
edges: the CLI maps ``exit_code`` to the process exit status, the service maps the class
to an HTTP status, the diagnostics map the cause to an outcome. Each user-facing class
has its own exit code so scripts can tell failures apart without parsing messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class CauseKind(StrEnum):
    """What a cause means for a run: the user's input, a stall, a crash, another error."""

    INPUT = "input"
    STALL = "stall"
    CRASH = "crash"
    ERROR = "error"


class FailureCause(StrEnum):
    """Why a run failed, as far as the code that noticed it could tell.

    Adding a cause: a member here and its row in ``CAUSES`` (what it is, what kind), then
    set it where the cause is known; a test checks that every member has its row.
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
    DISK_FULL = "disk-full"  # ENOSPC writing the output or a spool file
    # The job as a whole.
    CANCELLED = "cancelled"
    TIMED_OUT = "timed-out"
    SERVICE_RESTARTED = "service-restarted"
    WORKER_LOST = "worker-lost"  # a remote worker vanished with the job, attempts used up
    INTERNAL = "internal"

    @property
    def description(self) -> str:
        return CAUSES[self].description

    @property
    def kind(self) -> CauseKind:
        return CAUSES[self].kind

    @property
    def is_input(self) -> bool:
        return self.kind is CauseKind.INPUT


@dataclass(frozen=True)
class CauseInfo:
    description: str
    kind: CauseKind


_I, _S, _C, _E = CauseKind.INPUT, CauseKind.STALL, CauseKind.CRASH, CauseKind.ERROR
CAUSES: dict[FailureCause, CauseInfo] = {
    FailureCause.INVALID_OPTION: CauseInfo("an option is invalid", _I),
    FailureCause.INPUT_NOT_FOUND: CauseInfo("an input file was not found", _I),
    FailureCause.MEDIA_UNREADABLE: CauseInfo("an input could not be decoded", _I),
    FailureCause.NO_AUDIO_STREAM: CauseInfo("the audio input has no audio stream", _I),
    FailureCause.EMPTY_AUDIO: CauseInfo("the audio is empty", _I),
    FailureCause.NO_FACE: CauseInfo("no face was found in the template", _I),
    FailureCause.INPUT_TOO_LARGE: CauseInfo("an input is above the limits", _I),
    FailureCause.BAD_CHECKPOINT: CauseInfo("the model checkpoint cannot be used", _I),
    FailureCause.OUTPUT_NOT_WRITABLE: CauseInfo("the output cannot be written", _I),
    FailureCause.CONSUMER_NEVER_STARTED: CauseInfo("consumer never started or died", _S),
    FailureCause.NO_PROGRESS: CauseInfo("a stage made no progress", _S),
    FailureCause.PROCESS_STOPPED: CauseInfo("a process was stopped (state T)", _S),
    FailureCause.SHM_EXHAUSTED: CauseInfo("shared memory exhausted (/dev/shm is full)", _C),
    FailureCause.OOM_KILLED: CauseInfo("killed by the kernel's OOM killer", _C),
    FailureCause.KILLED: CauseInfo("a process was killed (SIGKILL)", _C),
    FailureCause.SEGFAULT: CauseInfo("segmentation fault in native code (SIGSEGV)", _C),
    FailureCause.ABORTED: CauseInfo("native code aborted (SIGABRT)", _C),
    FailureCause.TERMINATED: CauseInfo("a process was terminated (SIGTERM)", _C),
    FailureCause.EXITED: CauseInfo("a worker process exited while it still had work", _C),
    FailureCause.WORKER_RAISED: CauseInfo("the data loading code raised in a worker", _C),
    FailureCause.STAGE_RAISED: CauseInfo("a stage raised an error", _C),
    FailureCause.CPU_FALLBACK: CauseInfo("CPU fallback (a GPU was requested)", _E),
    FailureCause.DISK_FULL: CauseInfo("no space left on the disk being written", _E),
    FailureCause.CANCELLED: CauseInfo("cancelled", _E),
    FailureCause.TIMED_OUT: CauseInfo("the job timed out", _S),
    FailureCause.SERVICE_RESTARTED: CauseInfo("the service restarted while the job ran", _E),
    FailureCause.WORKER_LOST: CauseInfo(
        "the worker running the job vanished (its machine, container or whole worker died) "
        "on every attempt",
        _C,
    ),
    FailureCause.INTERNAL: CauseInfo("an internal error", _E),
}


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
