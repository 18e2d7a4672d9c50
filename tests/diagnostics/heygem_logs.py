"""Synthetic HeyGem logs, to test the log analyzer on logs it was not written against.

HeyGem's own messages (the format strings of its ``service/trans_dh_service.py``, public in
HeyGem-Linux-Python-Hack), timed by a small simulation of its mechanics (a producer that
puts batches on a queue of 10 with a 60 s put timeout, a consumer that takes them first in,
first out, the 10 s wait for init_wh), written in the layouts real logs come in (with or
without the source field, ``,``/``.``/no milliseconds, ``docker logs -t``, ``docker compose
logs``, ANSI colours, CRLF), with noise (client polling, warnings, ``print`` chatter,
retried downloads), damage (NUL bytes, junk, glued and cut lines, invalid UTF-8), service
restarts and several services interleaved.

Every scenario knows its truth (the verdict each task deserves, the consumer's real pace):
this module knows HeyGem, not the analyzer, and imports nothing from it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from hypothesis import strategies as st

QUEUE_SIZE = 10  # drivered_queue = multiprocessing.Queue(10)
PUT_TIMEOUT_S = 60.0  # drivered_queue.put(..., timeout=60)
INIT_WH_WAIT_S = 10.0  # init_wh_queue_output.get(timeout=10)


class Fault(StrEnum):
    NONE = "none"
    NEVER_TAKES = "never-takes"  # the consumer never takes an item
    STOPS = "stops"  # the consumer takes some batches, then nothing more
    INIT_WH_LATE = "init-wh-late"  # init_wh answers after the task's 10 s wait
    RESTART = "restart"  # the service restarts while the task runs
    CPU = "cpu"  # onnxruntime on the CPU: slow, but the task finishes


# The verdict (first finding about the task) each fault deserves.
VERDICT = {
    Fault.NONE: "task-finished",
    Fault.NEVER_TAKES: "consumer-never-started",
    Fault.STOPS: "consumer-stopped",
    Fault.INIT_WH_LATE: "init-wh-timeout",
    Fault.RESTART: "task-interrupted",
    Fault.CPU: "task-finished",
}
# Faults after which HeyGem hangs: nothing else runs in that service afterwards.
HANGS = frozenset({Fault.NEVER_TAKES, Fault.STOPS})

# onnxruntime's own words when it cannot use CUDA (HeyGem-Linux-Python-Hack issue 54;
# the CUDA 11 build's soname as onnxruntime 1.16-1.18 print it).
ORT_FAILURES = {
    "cuda12": (
        "[E:onnxruntime:Default, provider_bridge_ort.cc:1992 TryGetProviderInfo_CUDA] "
        "/onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:1637 "
        "onnxruntime::Provider& onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : "
        "FAIL : Failed to load library libonnxruntime_providers_cuda.so with error: "
        "libcudnn.so.9: cannot open shared object file: No such file or directory",
        "[W:onnxruntime:Default, onnxruntime_pybind_state.cc:965 "
        "CreateExecutionProviderInstance] Failed to create CUDAExecutionProvider. Require "
        "cuDNN 9.* and CUDA 12.*. Please install all dependencies as mentioned in the GPU "
        "requirements page (https://onnxruntime.ai/docs/execution-providers/"
        "CUDA-ExecutionProvider.html#requirements), make sure they're in the PATH, and that "
        "your GPU is supported.",
    ),
    "cuda11": (
        "[E:onnxruntime:Default, provider_bridge_ort.cc:1548 TryGetProviderInfo_CUDA] "
        "/onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:1209 "
        "onnxruntime::Provider& onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : "
        "FAIL : Failed to load library libonnxruntime_providers_cuda.so with error: "
        "libcublasLt.so.11: cannot open shared object file: No such file or directory",
        "[W:onnxruntime:Default, onnxruntime_pybind_state.cc:861 "
        "CreateExecutionProviderInstance] Failed to create CUDAExecutionProvider. Please "
        "reference https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html"
        "#requirements to ensure all dependencies are met.",
    ),
}


@dataclass(frozen=True)
class TaskSpec:
    code: str
    batch: int  # frames per batch: HeyGem's batch_size
    frames: int
    fault: Fault = Fault.NONE
    warmup_s: float = 6.9  # the first batch (GPU warm-up)
    frame_cost_s: float = 0.11  # steady cost per frame
    read_s: float = 0.012  # the producer reading a batch of frames
    init_wh_s: float = 8.4
    stop_after: int = 3  # STOPS: batches the consumer takes before it stops
    restart_after: int = 5  # RESTART: batches sent before the restart
    chaofen: bool = True  # face enhancement lines per batch
    task_result: bool = False  # a wrapper prints task_dic[code] after work() returns


@dataclass(frozen=True)
class Layout:
    source_field: bool = True  # [file.py[line:N]] between the time and the level
    ms: str | None = ","  # "," (the file), "." , None (the console copy: seconds)
    docker_ts: bool = False  # `docker logs -t`: RFC 3339 UTC with nanoseconds first
    zone_hours: int = 8  # the line's own clock minus UTC
    compose: bool = False  # `docker compose logs`: "name-1  | " first
    ansi: bool = False
    crlf: bool = False


@dataclass(frozen=True)
class Noise:
    polling: bool = True  # the client polling /easy/query
    warnings: bool = True  # WARNING records, Python warnings, deprecation notices
    prints: bool = True  # print() and ffmpeg chatter between the records
    retries: bool = False  # a download that failed once and was retried


@dataclass(frozen=True)
class Damage:
    nul_prefix: int = 0  # NUL bytes before the first line (a copytruncate'd file)
    junk_lines: int = 0  # lines of binary junk
    glued: int = 0  # two lines glued into one
    cut: int = 0  # lines cut short
    bad_bytes: int = 0  # lines with bytes that are not UTF-8

    @property
    def any(self) -> bool:
        return bool(self.nul_prefix or self.junk_lines or self.glued or self.cut or self.bad_bytes)


@dataclass(frozen=True)
class Service:
    name: str
    tasks: tuple[TaskSpec, ...]
    start_offset_s: float = 0.0
    ort_failure: str | None = None  # a key of ORT_FAILURES, printed at start-up


@dataclass(frozen=True)
class Scenario:
    services: tuple[Service, ...]
    layout: Layout = field(default_factory=Layout)
    noise: Noise = field(default_factory=Noise)
    damage: Damage = field(default_factory=Damage)
    seed: int = 0

    @property
    def tasks(self) -> list[TaskSpec]:
        return [t for s in self.services for t in s.tasks]

    @property
    def healthy(self) -> bool:
        return all(t.fault is Fault.NONE for t in self.tasks) and not any(
            s.ort_failure for s in self.services
        )


@dataclass(frozen=True)
class Truth:
    """What really happened to one task, from the simulation."""

    code: str
    fault: Fault
    fps: float | None  # frames/s the consumer finished, first to last finished batch
    steady_cost_s: float | None  # median batch cost after the first
    longest_wait_s: float | None  # the longest a put waited for a free slot
    restart_at: datetime | None
    sends: int
    init_wh_answer_s: float | None = None  # INIT_WH_LATE: answer time minus the wait's start
    consumer_span_s: float | None = None  # first to last finished batch


@dataclass(frozen=True)
class Rendered:
    data: bytes
    truths: dict[str, Truth]
    lines: int  # physical lines
    damaged_lines: int  # lines the damage touched


@dataclass(frozen=True)
class _Entry:
    time: datetime
    level: str  # INFO, WARNING, ERROR; "" for raw text (print, stderr)
    source: str  # "process.py[line:108]"
    message: str
    service: str
    key: bool = False  # decides a verdict: damage never touches it
    order: int = 0


# --- simulation ---------------------------------------------------------------------------
_BASE = datetime(2025, 11, 9, 17, 20, 0)
_THREAD = "threading.py[line:870]"
_PROCESS = "process.py[line:108]"
_APP = "app_local.py[line:233]"
_HTTP = "_internal.py[line:96]"


class _Sim:
    def __init__(self, scenario: Scenario, service: Service, rng: random.Random) -> None:
        self.scenario = scenario
        self.service = service
        self.rng = rng
        self.entries: list[_Entry] = []
        self.truths: dict[str, Truth] = {}

    def add(
        self,
        time: datetime,
        message: str,
        *,
        level: str = "INFO",
        source: str = _PROCESS,
        key: bool = False,
    ) -> None:
        self.entries.append(
            _Entry(time, level, source, message, self.service.name, key, len(self.entries))
        )

    def raw(self, time: datetime, text: str, *, key: bool = False) -> None:
        self.add(time, text, level="", source="", key=key)

    def jitter(self, low: float, high: float) -> float:
        return self.rng.uniform(low, high)

    # -- the service ------------------------------------------------------------------------
    def start_up(self, at: datetime) -> datetime:
        noise = self.scenario.noise
        if noise.prints:
            self.raw(
                at,
                f"{at:%Y-%m-%d %H:%M:%S},595 - cv2box - INFO - Use default multi mode: "
                "multi-thread, or you can set env 'CV_MULTI_MODE' to multi-process/torch-process",
            )
        if noise.warnings:
            self.add(
                at + timedelta(seconds=1.5), " -> 服务不进行注册", level="WARNING", source=_APP
            )
        self.add(at + timedelta(seconds=1.6), "TransDhTask init", source=_APP, key=True)
        failure = ORT_FAILURES.get(self.service.ort_failure or "")
        if failure:
            for offset, text in enumerate(failure):
                stamp = at + timedelta(seconds=3 + offset * 0.0001)
                self.raw(stamp, f"{stamp:%Y-%m-%d %H:%M:%S.%f}123 {text}", key=True)
        self.add(at + timedelta(seconds=7.2), ">>> init_wh_process进程启动")
        self.add(
            at + timedelta(seconds=17),
            "******************* TransDhServer服务启动 *******************",
            source=_APP,
        )
        if noise.prints:
            self.raw(at + timedelta(seconds=17.001), " * Serving Flask app 'app_local'")
            self.raw(at + timedelta(seconds=17.002), " * Debug mode: off")
        self.add(at + timedelta(seconds=23), ">>> 数字人图片处理进程启动")
        return at + timedelta(seconds=25)

    def run(self) -> None:
        t = self.start_up(_BASE + timedelta(seconds=self.service.start_offset_s))
        for task in self.service.tasks:
            t = self.task(task, t + timedelta(seconds=self.jitter(1, 20)))

    def poll(self, code: str, start: datetime, end: datetime) -> None:
        if not self.scenario.noise.polling:
            return
        t = start + timedelta(seconds=self.jitter(0.5, 2))
        while t < end:
            self.add(
                t,
                f'172.18.0.1 - - [{t:%d/%b/%Y %H:%M:%S}] "GET /easy/query?code={code} '
                'HTTP/1.1" 200 -',
                source=_HTTP,
            )
            t += timedelta(seconds=self.jitter(2, 10))

    # -- one task ---------------------------------------------------------------------------
    def task(self, spec: TaskSpec, t0: datetime) -> datetime:
        code, noise = spec.code, self.scenario.noise

        def at(seconds: float) -> datetime:
            return t0 + timedelta(seconds=seconds)

        self.add(
            t0,
            f"任务:{code} -> audio_url:/code/data/temp/{code}.wav  "
            f"video_url:/code/data/temp/{code}.mp4",
            source=_THREAD,
            key=True,
        )
        self.add(
            at(0.1),
            f"[{code}] -> ffmpeg video: ffmpeg -loglevel warning -i /code/data/temp/{code}.mp4 "
            f"-crf 15 -vcodec copy -an -y /code/data/temp/{code}_format.mp4",
            source=_THREAD,
        )
        if noise.retries:
            self.add(
                at(0.15),
                f"[{code}] -> download failed (ReadTimeout), retrying 1/3: "
                f"http://minio:9000/heygem/{code}.wav",
                level="WARNING",
                source=_THREAD,
            )
        self.add(
            at(0.2),
            f"[{code}] -> ffmpeg audio: ffmpeg -loglevel warning -i /code/data/temp/{code}.wav "
            f"-ac 1 -ar 16000 -acodec pcm_s16le -y  /code/data/temp/{code}_format.wav",
            source=_THREAD,
        )
        if noise.prints:
            self.raw(at(0.25), "[aist#0:0/pcm_s16le @ 0x5622cbbc9580] Guessed Channel Layout: mono")
        pre = self.jitter(0.3, 1.5)
        self.add(at(pre), f"[{code}] -> 预处理耗时:{pre}s", source=_THREAD)
        if noise.prints:
            self.raw(at(pre + 0.001), ">>> 777   25")
        feat = self.jitter(0.3, 3.0)
        waited_from = pre + feat
        self.add(
            at(waited_from), f"[{code}] -> get_aud_feat1 cost:{feat}s", source=_THREAD, key=True
        )
        wh = self.jitter(0.8, 0.95)
        if spec.fault is Fault.INIT_WH_LATE:
            return self.init_wh_timeout(spec, t0, pre, waited_from, wh)
        answered = pre + spec.init_wh_s
        self.add(
            at(answered), f"[{code}]init_wh result :[{wh}]， cost: {spec.init_wh_s} s", key=True
        )
        replied = max(answered, waited_from) + 0.003
        self.add(at(replied), f"[{code}] -> wh: [{wh}]", source=_THREAD)
        return self.produce(spec, t0, replied + self.jitter(0.5, 3.0))

    def init_wh_timeout(
        self, spec: TaskSpec, t0: datetime, pre: float, waited_from: float, wh: float
    ) -> datetime:
        code = spec.code
        failed = waited_from + INIT_WH_WAIT_S + self.jitter(0.001, 0.05)
        at_fail = t0 + timedelta(seconds=failed)
        for offset, text in enumerate(
            (
                "Traceback (most recent call last):",
                '  File "trans_dh_service.py", line 1257, in trans_dh_service.TransDhTask.work',
                '  File "/usr/lib/python3.8/multiprocessing/queues.py", line 108, in get',
                "    raise Empty",
                "_queue.Empty",
                "",
                "During handling of the above exception, another exception occurred:",
                "",
                "Traceback (most recent call last):",
                '  File "trans_dh_service.py", line 1265, in trans_dh_service.TransDhTask.work',
                "Exception",
            )
        ):
            if text:
                self.raw(at_fail - timedelta(milliseconds=5 - offset * 0.1), text, key=True)
        self.add(
            at_fail, f"[{code}]任务执行失败，异常信息:[]", level="ERROR", source=_THREAD, key=True
        )
        self.add(
            at_fail + timedelta(milliseconds=2),
            f">>> 任务:{code} 耗时:{failed} ",
            source=_THREAD,
            key=True,
        )
        if spec.task_result:
            self.raw(
                at_fail + timedelta(milliseconds=3),
                "task_result = (<Status.error: 3>, 0, '', '')",
                key=True,
            )
        # The init_wh process answers late: after the task gave up.
        answered = max(pre + spec.init_wh_s, failed + 0.5)
        self.add(
            t0 + timedelta(seconds=answered),
            f"[{code}]init_wh result :[{wh}]， cost: {spec.init_wh_s} s",
            key=True,
        )
        self.truths[code] = Truth(
            code, spec.fault, None, None, None, None, 0, init_wh_answer_s=answered - waited_from
        )
        self.poll(code, t0, t0 + timedelta(seconds=answered))
        return t0 + timedelta(seconds=answered + 1)

    def costs(self, spec: TaskSpec, count: int) -> list[float]:
        per_batch = spec.frame_cost_s * spec.batch
        steady = [per_batch * self.jitter(0.9, 1.1) for _ in range(count)]
        return [spec.warmup_s, *steady[1:]] if count else []

    def produce(self, spec: TaskSpec, t0: datetime, started: float) -> datetime:
        """The producer/consumer run: HeyGem's queue, FIFO, capacity 10, put timeout 60 s."""
        code, batch = spec.code, spec.batch
        base = t0 + timedelta(seconds=started)

        def at(seconds: float) -> datetime:
            return base + timedelta(seconds=seconds)

        sizes = [batch] * (spec.frames // batch)
        if spec.frames % batch:
            sizes.append(spec.frames % batch)
        count = len(sizes)
        indexes = [sum(sizes[: i + 1]) for i in range(count)]
        costs = self.costs(spec, count)
        self.add(
            base, f"[{code}]任务视频驱动队列启动 batch_size:{batch}, len:{spec.frames}", key=True
        )
        if self.scenario.noise.prints:
            self.raw(at(0.0005), "in template video function")
        self.add(at(0.001), "drivered_video >>>>>>>>>>>>>>>>>>>> 开始循环")
        takes_at: list[float] = []
        consumer_takes = {
            Fault.NEVER_TAKES: 0,
            Fault.STOPS: spec.stop_after,
        }.get(spec.fault, count)
        put: list[float] = []
        done: list[float] = []
        ready = spec.read_s
        full_at: float | None = None
        restart_at: float | None = None
        longest_wait = 0.0
        for i in range(count):
            if spec.fault is Fault.RESTART and i == spec.restart_after:
                restart_at = ready
                break
            free_at = 0.0 if i < QUEUE_SIZE else takes_at[i - QUEUE_SIZE]
            if free_at - ready > PUT_TIMEOUT_S:
                full_at = ready + PUT_TIMEOUT_S
                break
            put.append(max(ready, free_at))
            longest_wait = max(longest_wait, put[-1] - ready)
            # The consumer takes item i when it is there and the previous one is done.
            if i < consumer_takes:
                take = max(put[i], done[i - 1] + self.jitter(0.01, 0.03) if i else put[i])
                takes_at.append(take)
                done.append(take + costs[i])
            else:
                takes_at.append(math.inf)
            ready = put[i] + spec.read_s * self.jitter(0.8, 1.2)
        # A restart kills the task's processes: none of their lines come after it.
        cutoff = math.inf if restart_at is None else restart_at + self.jitter(0.5, 20)
        # Lines, in the order the processes write them.
        for i, when in enumerate(put):
            self.add(
                at(when + 0.0004),
                f"drivered_video >>>>>>>>>>>>>>>>>>>> 发送数据大小:[{sizes[i]}], "
                f"current_idx:{indexes[i]}",
            )
        for i, take in enumerate(takes_at[: len(done)]):
            if take < cutoff:
                self.add(at(take), f">>> audio_transfer get message:{indexes[i]}")
            if spec.chaofen and take + costs[i] * 0.45 < cutoff:
                self.add(
                    at(take + costs[i] * 0.45),
                    f"[{indexes[i]}] -> chaofen  cost:{costs[i] * 0.45}s",
                )
            if done[i] < cutoff:
                self.add(
                    at(done[i]),
                    f"audio_transfer >>>>>>>>>>> 发送完成数据大小:{sizes[i]}, "
                    f"frameId:{indexes[i]}, cost:{costs[i]}s",
                )
        fps = steady = None
        if len(done) >= 2:
            fps = (indexes[len(done) - 1] - indexes[0]) / (done[-1] - done[0])
            ordered = sorted(costs[1 : len(done)])
            steady = _median(ordered)
        truth = Truth(
            code,
            spec.fault,
            fps,
            steady,
            longest_wait if full_at is None else PUT_TIMEOUT_S,
            None,
            len(put),
            consumer_span_s=done[-1] - done[0] if len(done) >= 2 else None,
        )
        if full_at is not None:
            self.add(
                at(full_at),
                f"[{code}]任务视频驱动队列满，严重阻塞，下游队列异常",
                level="ERROR",
                key=True,
            )
            end = at(full_at + self.jitter(5, 90))
            self.poll(code, t0, end)
            self.truths[code] = truth
            return end
        if restart_at is not None:
            restart = at(cutoff)
            self.truths[code] = replace(truth, restart_at=restart)
            self.poll(code, t0, restart)
            return self.start_up(restart - timedelta(seconds=1.6))
        if len(done) < count:
            raise ValueError(f"{spec}: the consumer stopped but the queue never filled")
        last_put = put[-1]
        self.add(at(last_put + 0.002), "drivered_video >>>>>>>>>>>>>>>>>>>> 发送数据结束")
        self.add(at(last_put + 0.003), f"[{code}]任务预处理进程结束")
        finished = done[-1]
        self.add(at(finished + 0.006), ">>> audio_transfer get exception msg:-1")
        self.add(at(finished + 0.007), f"[{code}]任务数字人图片处理已完成", key=True)
        self.add(at(finished + 0.05), f"[{code}]视频帧队列处理已结束", key=True)
        self.add(
            at(finished + 0.06),
            f"command:ffmpeg -loglevel warning -y -i /code/data/temp/{code}.wav -i "
            f"/code/data/temp/{code}-t.mp4 -c:a aac -c:v libx264 -crf 15 -strict -2 "
            f"/code/data/temp/{code}-r.mp4",
        )
        if self.scenario.noise.warnings:
            self.raw(
                at(finished + 0.07),
                "/usr/local/lib/python3.8/site-packages/torch/functional.py:504: UserWarning: "
                "torch.meshgrid: in an upcoming release, it will be required to pass the "
                "indexing argument.",
            )
            self.raw(
                at(finished + 0.071),
                "  return _VF.meshgrid(tensors, **kwargs)  # type: ignore[attr-defined]",
            )
        end_s = finished + self.jitter(1, 20)
        total = (at(end_s) - t0).total_seconds()
        self.add(at(end_s), f">>> 任务:{code} 耗时:{total} ", source=_THREAD, key=True)
        if spec.task_result:
            self.raw(
                at(end_s + 0.001),
                f"task_result = (<Status.success: 2>, 100, '/code/data/temp/{code}-r.mp4', "
                "'任务完成')",
                key=True,
            )
        self.poll(code, t0, at(end_s + 3))
        self.truths[code] = truth
        return at(end_s)


def _median(values: list[float]) -> float:
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


# --- writing -----------------------------------------------------------------------------
_COLOURS = {"INFO": "\x1b[32m", "WARNING": "\x1b[33m", "ERROR": "\x1b[1;31m", "": "\x1b[2m"}


def _own_time(time: datetime, layout: Layout) -> str:
    text = time.strftime("%Y-%m-%d %H:%M:%S")
    return text + f"{layout.ms}{time.microsecond // 1000:03d}" if layout.ms else text


def _line(entry: _Entry, layout: Layout, width: int, rng: random.Random) -> tuple[str, str]:
    """The line, and the prefix docker/compose wrote before the application's text."""
    if entry.level:
        source = f"[{entry.source}] " if layout.source_field else ""
        text = f"[{_own_time(entry.time, layout)}] {source}[{entry.level}] [{entry.message}]"
    else:
        text = entry.message
    if layout.ansi:
        text = f"{_COLOURS[entry.level]}{text}\x1b[0m"
    prefix = ""
    if layout.docker_ts:
        utc = entry.time - timedelta(hours=layout.zone_hours)
        nanos = utc.microsecond * 1000 + rng.randrange(1000)
        prefix = f"{utc:%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z "
    if layout.compose:
        prefix = f"{entry.service:<{width}}| {prefix}"
    return prefix + text, prefix


def render(scenario: Scenario, only: str | None = None) -> Rendered:
    """The log's bytes and each task's truth; ``only``: one service's lines alone."""
    rng = random.Random(scenario.seed)
    entries: list[_Entry] = []
    truths: dict[str, Truth] = {}
    for service in scenario.services:
        sim = _Sim(scenario, service, random.Random(f"{scenario.seed}-{service.name}"))
        sim.run()
        truths.update(sim.truths)
        if only is None or service.name == only:
            entries += sim.entries
    entries.sort(key=lambda e: (e.time, e.service, e.order))
    width = max(len(s.name) for s in scenario.services) + 2
    lines = []
    for entry in entries:
        text, prefix = _line(entry, scenario.layout, width, rng)
        lines.append(_Out(text.encode(), entry.key, bool(entry.level), len(prefix.encode())))
    lines, damaged = _damage(lines, scenario.damage, rng)
    end = b"\r\n" if scenario.layout.crlf else b"\n"
    return Rendered(end.join(line.data for line in lines) + end, truths, len(lines), damaged)


@dataclass(frozen=True)
class _Out:
    data: bytes
    key: bool  # decides a verdict: never damaged
    record: bool  # a log record (not print/stderr text)
    prefix: int = 0  # bytes of docker/compose prefix before the record


def _damage(lines: list[_Out], damage: Damage, rng: random.Random) -> tuple[list[_Out], int]:
    """Damage records that decide no verdict; returns the lines and how many were touched."""
    lines = list(lines)
    touched = 0

    def records() -> list[int]:
        return [i for i, line in enumerate(lines) if line.record and not line.key]

    for _ in range(damage.cut):
        candidates = [i for i in records() if len(lines[i].data) - lines[i].prefix > 40]
        if candidates:
            i = rng.choice(candidates)
            data, start = lines[i].data, lines[i].prefix + 12  # docker writes its prefix whole
            lines[i] = _Out(data[: rng.randrange(start, len(data) - 8)], True, False)
            touched += 1
    for _ in range(damage.glued):
        candidates = [i for i in records() if i + 1 < len(lines) and i + 1 in records()]
        if candidates:
            i = rng.choice(candidates)
            lines[i : i + 2] = [_Out(lines[i].data + lines[i + 1].data, True, False)]
            touched += 1
    for _ in range(damage.bad_bytes):
        candidates = [i for i in records() if len(lines[i].data) > 20]
        if candidates:
            i = rng.choice(candidates)
            data = lines[i].data
            cut = rng.randrange(len(data) - 4, len(data))
            lines[i] = _Out(data[:cut] + b"\xff\xfe" + data[cut:], True, False)
            touched += 1
    for _ in range(damage.junk_lines):
        junk = bytes(rng.choice(b"\x80\x81\xfe\xff\x00\x01\x1b\x7fabc\xe4\xbb") for _ in range(24))
        lines.insert(rng.randrange(1, len(lines)), _Out(junk, True, False))
        touched += 1
    if damage.nul_prefix:
        lines[0] = replace(lines[0], data=b"\x00" * damage.nul_prefix + lines[0].data)
        touched += 1
    return lines, touched


# --- strategies ---------------------------------------------------------------------------
layouts = st.builds(
    Layout,
    source_field=st.booleans(),
    ms=st.sampled_from([",", ".", None]),
    docker_ts=st.booleans(),
    zone_hours=st.sampled_from([8, 0, -5, 3]),
    compose=st.booleans(),
    ansi=st.booleans(),
    crlf=st.booleans(),
)
noises = st.builds(
    Noise,
    polling=st.booleans(),
    warnings=st.booleans(),
    prints=st.booleans(),
    retries=st.booleans(),
)
damages = st.builds(
    Damage,
    nul_prefix=st.sampled_from([0, 0, 64]),
    junk_lines=st.integers(0, 2),
    glued=st.integers(0, 2),
    cut=st.integers(0, 2),
    bad_bytes=st.integers(0, 2),
)
_codes = st.one_of(
    st.integers(1000, 9_999_999_999).map(str),
    st.uuids().map(str),
)


@st.composite
def task_specs(draw: st.DrawFn, fault: Fault = Fault.NONE, code: str | None = None) -> TaskSpec:
    batch = draw(st.sampled_from([1, 4, 8]))
    frames = batch * draw(st.integers(14, 36)) + draw(st.integers(0, batch - 1))
    on_cpu = fault is Fault.CPU
    # On a CPU: seconds per frame, below the 60 s put timeout per batch; on a GPU: 0.02-0.4 s.
    frame_cost = draw(st.floats(1.8, min(6.0, 30.0 / batch)) if on_cpu else st.floats(0.02, 0.4))
    return TaskSpec(
        code=code or draw(_codes),
        batch=batch,
        frames=frames,
        fault=fault,
        warmup_s=draw(st.floats(1.0, 10.0)) + (frame_cost * batch if on_cpu else 0.0),
        frame_cost_s=frame_cost,
        read_s=draw(st.floats(0.005, 0.04)),
        init_wh_s=draw(
            st.floats(14.0, 30.0) if fault is Fault.INIT_WH_LATE else st.floats(2.0, 9.0)
        ),
        stop_after=draw(st.integers(1, 3)),
        restart_after=draw(st.integers(1, 12)),
        chaofen=draw(st.booleans()),
        task_result=draw(st.booleans()),
    )


@st.composite
def services(
    draw: st.DrawFn, name: str, faults: st.SearchStrategy[Fault], max_tasks: int = 2
) -> Service:
    chosen = draw(st.lists(faults, min_size=1, max_size=max_tasks))
    # HeyGem hangs after these: nothing runs after them in that service.
    for index, fault in enumerate(chosen):
        if fault in HANGS:
            chosen = chosen[: index + 1]
            break
    specs = []
    for fault in chosen:
        specs.append(draw(task_specs(fault)))
    codes = [s.code for s in specs]
    if len(set(codes)) != len(codes):
        specs = [replace(s, code=f"{s.code}-{i}") for i, s in enumerate(specs)]
    ort = draw(st.sampled_from(sorted(ORT_FAILURES))) if Fault.CPU in chosen else None
    return Service(name, tuple(specs), draw(st.floats(0, 30)), ort)


_NO_FAULT = st.just(Fault.NONE)
_ONE_OR_TWO = st.integers(1, 2)
_NO_DAMAGE = st.just(Damage())


@st.composite
def scenarios(
    draw: st.DrawFn,
    faults: st.SearchStrategy[Fault] = _NO_FAULT,
    services_count: st.SearchStrategy[int] = _ONE_OR_TWO,
    damage: st.SearchStrategy[Damage] = _NO_DAMAGE,
) -> Scenario:
    layout = draw(layouts)
    count = draw(services_count)
    if count > 1:  # several services in one file: told apart by their compose prefix
        layout = replace(layout, compose=True)
    names = [f"heygem-gen-video-{i + 1}" for i in range(count)]
    chosen = tuple(draw(services(name, faults)) for name in names)
    codes = [t.code for s in chosen for t in s.tasks]
    if len(set(codes)) != len(codes):
        chosen = tuple(
            replace(s, tasks=tuple(replace(t, code=f"{t.code}-s{i}") for t in s.tasks))
            for i, s in enumerate(chosen)
        )
    return Scenario(
        services=chosen,
        layout=layout,
        noise=draw(noises),
        damage=draw(damage),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


faults = st.sampled_from(list(Fault))
problems = st.sampled_from([f for f in Fault if f is not Fault.NONE])
