"""Environment doctor: every probe's healthy and failing case, for real where possible.

Failing cases are produced on this machine wherever that is possible: a 64 MiB /dev/shm in
a private mount namespace, real cgroup CPU/memory limits, CPU affinity, a forkserver
started before a variable was set, a real ORT session falling back to CPU, real ELF files
with missing dependencies. Probes whose trigger needs hardware absent here (a GPU) are
tested through the pure function that decides.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from diagnostics.doctor import (
    PROBES,
    DoctorConfig,
    check_session_providers,
    dataloader_shm_need_bytes,
    numpy_ort_incompatible,
    run_doctor,
)
from diagnostics.findings import Finding, Report, Severity, render_text
from diagnostics.probes.base import never_raises, release_tuple
from diagnostics.probes.gpu import nvml_snapshot, probe_gpu
from diagnostics.probes.landmarks import probe_landmarks
from diagnostics.probes.media import probe_av_codecs
from diagnostics.probes.multiproc import compare_env_propagation, read_child_env
from diagnostics.probes.ort_cuda import (
    CPU_EP,
    CUDA_EP,
    capture_native_stderr,
    compare_cuda_builds,
    cuda_majors,
    cudnn_major,
    diagnose_cuda_provider,
    elf_dynamic,
    missing_sonames,
    parse_ldd_output,
    run_ldd,
    session_with_evidence,
    tiny_identity_model,
)
from diagnostics.probes.system import THREAD_ENV_VARS, container_markers, probe_cpus
from diagnostics.probes.versions import numpy2_conflicts
from heygem.cgroups import usable_cpus
from heygem.errors import InvalidOption

REPO = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0


def run_python(
    code: str,
    *,
    env: dict[str, str | None] | None = None,
    prefix: list[str] | None = None,
    timeout: float = 60,
) -> Any:
    """Run ``code`` in a fresh interpreter (``env`` value None: unset); it must print one
    JSON document last."""
    full_env = {k: v for k, v in os.environ.items() if k not in (env or {})}
    full_env.update({k: v for k, v in (env or {}).items() if v is not None})
    full_env["PYTHONPATH"] = str(REPO)
    argv = [*(prefix or []), sys.executable, "-c", textwrap.dedent(code)]
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=full_env, cwd=REPO, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- report plumbing ----------------------------------------------------------------
def test_probe_result_is_frozen_and_worst_ranks_fail_over_warn_over_ok_over_info() -> None:
    ok = Finding("a", Severity.OK, "A")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ok.severity = Severity.FAIL  # type: ignore[misc]
    info = Finding("b", Severity.INFO, "B", ["x"])
    warn = Finding("c", Severity.WARN, "C", ["y"], "do z")
    fail = Finding("d", Severity.FAIL, "D")

    def report(*findings: Finding) -> Report:
        return Report("env", "doctor", findings)

    assert report(info).worst is Severity.INFO
    assert report(info, ok).worst is Severity.OK
    assert report(ok, warn, info).worst is Severity.WARN
    assert report(warn, fail, ok).worst is Severity.FAIL
    assert report(warn).exit_code() == 0 and report(warn).exit_code(strict=True) == 1
    assert report(warn, fail).exit_code() == 1
    assert report(warn).to_dict() == {
        "tool": "env",
        "title": "doctor",
        "worst": "warn",
        "exit_code": 0,
        "findings": [
            {
                "id": "c",
                "severity": "warn",
                "title": "C",
                "evidence": ["y"],
                "fix": "do z",
                "subject": None,
            }
        ],
    }


def test_a_probe_that_raises_becomes_a_warn_with_the_exception_as_evidence() -> None:
    @never_raises("boom", "Boom")
    def probe() -> Finding:
        raise OSError("no such thing")

    result = probe()
    assert result.severity is Severity.WARN
    assert "OSError: no such thing" in result.evidence[0]


def test_full_doctor_runs_every_probe_without_crashing() -> None:
    report = run_doctor()
    assert [r.id for r in report.findings] == list(PROBES)
    crashed = [r.id for r in report.findings if any("could not run" in e for e in r.evidence)]
    assert crashed == []
    text = render_text(report)
    assert all(f"] {probe_id}:" in text for probe_id in PROBES)
    json.dumps(report.to_dict())


def test_run_doctor_rejects_unknown_probe_and_bad_config() -> None:
    with pytest.raises(InvalidOption, match="nope"):
        run_doctor(only=["nope"])
    with pytest.raises(InvalidOption, match="num_workers"):
        DoctorConfig(num_workers=-1)


# --- versions and numpy ABI ---------------------------------------------------------
def test_versions_probe_reports_every_library() -> None:
    result = run_doctor(only=["versions"]).findings[0]
    text = "\n".join(result.evidence)
    for name in ("python 3.", "numpy", "torch", "onnxruntime", "opencv", "librosa", "libavcodec"):
        assert name in text
    assert "CPUExecutionProvider" in text
    assert result.severity is Severity.INFO


def test_versions_probe_fails_when_a_required_library_does_not_import(tmp_path: Path) -> None:
    # A stray cv2 package shadowing opencv is a real way to break `import cv2`.
    (tmp_path / "cv2").mkdir()
    (tmp_path / "cv2" / "__init__.py").write_text("raise ImportError('shadowed cv2')\n")
    code = f"""
        import json, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from diagnostics.probes.versions import probe_versions
        print(json.dumps(probe_versions().to_dict()))
    """
    result = run_python(code)
    assert result["severity"] == "fail"
    assert "cv2 does not import (ImportError: shadowed cv2)" in result["fix"]


@pytest.mark.parametrize(
    ("numpy_v", "ort_v", "bad"),
    [
        ("2.0.0", "1.18.0", True),
        ("2.0.0rc1", "1.16.3", True),  # a numpy-2 pre-release already has the new ABI
        ("2.1.3", "1.18.1+cu118", True),
        ("1.26.4", "1.18.0", False),
        ("1.26.4", "1.16.3", False),
        ("2.0.2", "1.19.0", False),
        ("2.4.6", "1.32.0", False),
    ],
)
def test_numpy2_with_onnxruntime_older_than_1_19(numpy_v: str, ort_v: str, bad: bool) -> None:
    assert numpy_ort_incompatible(numpy_v, ort_v) is bad


def test_numpy2_rule_covers_torch_and_the_installed_set_is_ok() -> None:
    conflicts = numpy2_conflicts("2.0.0", {"torch": "2.1.2", "onnxruntime": "1.18.0"})
    assert [c.split()[0] for c in conflicts] == ["torch", "onnxruntime"]
    assert numpy2_conflicts("2.0.0", {"torch": "2.4.1", "onnxruntime": "1.19.2"}) == []
    assert release_tuple("1.18.1+cu118") == (1, 18, 1)
    # The venv really has numpy 2 with new-enough builds.
    assert run_doctor(only=["numpy-abi"]).findings[0].severity is Severity.OK


# --- CPU fallback: requested vs actual providers ------------------------------------
def test_real_session_requesting_cuda_first_falls_back_to_cpu_and_fails() -> None:
    import onnxruntime as ort

    requested = [CUDA_EP, CPU_EP]
    session, lines = session_with_evidence(ort, requested)
    assert session is not None
    result = check_session_providers(session, requested, log_lines=lines)
    assert session.get_providers() == [CPU_EP]  # the real, silent fallback
    assert result.severity is Severity.FAIL
    assert f"session.get_providers(): ['{CPU_EP}']" in result.evidence
    assert any("not in available provider names" in e for e in result.evidence)
    assert "CPUExecutionProvider, not CUDAExecutionProvider" in (result.fix or "")


def test_a_session_that_cannot_be_created_is_evidence_not_an_exception() -> None:
    import onnxruntime as ort

    session, lines = session_with_evidence(ort, [CPU_EP], model=b"not an onnx model")
    assert session is None
    assert lines[-1].startswith("InferenceSession failed:")


def test_session_check_ok_for_cpu_and_warn_for_missing_lower_priority_provider() -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(tiny_identity_model(), providers=[CPU_EP])
    assert check_session_providers(session, [CPU_EP]).severity is Severity.OK
    lower = check_session_providers(session, [CPU_EP, (CUDA_EP, {"device_id": 0})])
    assert lower.severity is Severity.WARN
    assert check_session_providers(object(), [CPU_EP]).severity is Severity.WARN  # never raises


def test_native_stderr_capture_catches_ort_cpp_logging() -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 0  # verbose: ORT's C++ logger writes to fd 2
    with capture_native_stderr() as lines:
        ort.InferenceSession(tiny_identity_model(), options, providers=[CPU_EP])
        os.write(2, b"Failed to load library libonnxruntime_providers_cuda.so with error\n")
    assert any("onnxruntime" in line for line in lines[:-1])
    assert lines[-1].startswith("Failed to load library")


def test_cpu_only_onnxruntime_is_info_not_fail() -> None:
    result = run_doctor(only=["ort-cuda"]).findings[0]
    if "onnxruntime-gpu" in " ".join(result.evidence):
        pytest.skip("onnxruntime-gpu installed: the CPU-only case does not apply")
    assert result.severity is Severity.INFO
    assert any("CPU-only onnxruntime build" in e for e in result.evidence)


LDD_SAMPLE = """\
\tlinux-vdso.so.1 (0x00007ffd6b5f2000)
\tlibcublasLt.so.11 => not found
\tlibcudnn.so.8 => not found
\tlibcudart.so.11.0 => not found
\tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f2a1c000000)
\tlibcudnn.so.8 => not found
\t/lib64/ld-linux-x86-64.so.2 (0x00007f2a1e3c4000)
"""


def test_parse_ldd_output() -> None:
    report = parse_ldd_output(LDD_SAMPLE)
    assert report.missing == ["libcublasLt.so.11", "libcudnn.so.8", "libcudart.so.11.0"]
    assert report.resolved == {"libstdc++.so.6": "/lib/x86_64-linux-gnu/libstdc++.so.6"}
    assert cuda_majors(report.missing) == (11, 8)


def test_ldd_and_elf_on_a_real_library_of_the_venv() -> None:
    import onnxruntime

    lib = next((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))
    ldd = run_ldd(lib)
    if ldd is None:
        pytest.skip("ldd not installed")
    assert ldd.missing == []
    assert "libc.so.6" in ldd.resolved
    needed = elf_dynamic(lib).needed
    assert "libc.so.6" in needed
    if shutil.which("readelf"):
        out = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True).stdout
        assert needed == [
            line.split("[")[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line
        ]


@pytest.fixture(scope="module")
def fake_cuda_provider(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ELF named like ORT's CUDA provider, needing CUDA 12 + cuDNN 9 libs that are
    absent: built against stub libraries that are deleted afterwards."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    root = tmp_path_factory.mktemp("ortpkg")
    stubs, capi = root / "stubs", root / "onnxruntime" / "capi"
    stubs.mkdir()
    capi.mkdir(parents=True)
    src = root / "stub.c"
    src.write_text("int stub(void) { return 0; }\n")
    for soname in ("libcudart.so.12", "libcudnn.so.9"):
        subprocess.run(
            [
                "gcc",
                "-shared",
                "-fPIC",
                "-o",
                str(stubs / soname),
                str(src),
                f"-Wl,-soname,{soname}",
            ],
            check=True,
        )
    lib = capi / "libonnxruntime_providers_cuda.so"
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-o",
            str(lib),
            str(src),
            "-Wl,--no-as-needed",
            str(stubs / "libcudart.so.12"),
            str(stubs / "libcudnn.so.9"),
        ],
        check=True,
    )
    shutil.rmtree(stubs)
    return lib


def test_missing_sonames_of_a_real_elf_via_ldd_and_without_ldd(
    fake_cuda_provider: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert missing_sonames(fake_cuda_provider) == ["libcudart.so.12", "libcudnn.so.9"]
    monkeypatch.setattr("heygem.generators.cuda_libs.run_ldd", lambda path: None)
    assert missing_sonames(fake_cuda_provider) == ["libcudart.so.12", "libcudnn.so.9"]


def test_gpu_build_whose_provider_cannot_load_names_missing_libs_and_versions(
    fake_cuda_provider: Path,
) -> None:
    import onnxruntime as ort

    # The CPU onnxruntime really falls back; the provider library next to it is a real ELF
    # with the dependencies of a CUDA 12 build missing.
    result = diagnose_cuda_provider(ort, fake_cuda_provider.parent.parent, "1.19.2")
    assert result.severity is Severity.FAIL
    assert any("cannot find: libcudart.so.12, libcudnn.so.9" in e for e in result.evidence)
    fix = result.fix or ""
    assert "CUDA 12 + cuDNN 9 build" in fix
    assert "nvidia-cuda-runtime-cu12" in fix and "'nvidia-cudnn-cu12==9.*'" in fix
    assert "1.16.x-1.18.x are CUDA 11.8 + cuDNN 8" in fix


def test_gpu_build_without_provider_library_says_cpu_package_overwrote_it() -> None:
    import onnxruntime as ort

    result = diagnose_cuda_provider(ort, Path(ort.__file__).parent, "1.18.0")
    assert result.severity is Severity.FAIL
    assert "overwrote" in (result.fix or "")


def test_torch_and_ort_cuda_majors() -> None:
    assert cudnn_major(8902) == 8 and cudnn_major(90100) == 9 and cudnn_major(None) is None
    status, evidence, fix = compare_cuda_builds("12.1", 9, 11, 8)  # torch 2.4.1 + ORT 1.18
    assert status is Severity.WARN
    assert "different majors: CUDA 12 (torch) vs 11 (onnxruntime)" in evidence
    assert fix and "onnxruntime-gpu" in fix
    assert compare_cuda_builds("12.1", 8, 12, 8)[0] is Severity.OK
    assert compare_cuda_builds(None, None, 11, 8)[0] is Severity.INFO
    assert run_doctor(only=["cuda-consistency"]).findings[0].severity is Severity.INFO


# --- /dev/shm -----------------------------------------------------------------------
def test_dataloader_shm_need() -> None:
    # (4 workers * 2 prefetched + 1 in use) batches * 4 * 1000 B * safety 2
    assert dataloader_shm_need_bytes(4, 1000, 4) == 9 * 4 * 1000 * 2
    assert dataloader_shm_need_bytes(4, 1000, 0) == 0
    with pytest.raises(InvalidOption):
        dataloader_shm_need_bytes(0, 1000, 4)
    assert DoctorConfig().sample_bytes == 2 * 512 * 512 * 3 + 80 * 16 * 4


def test_shm_ok_on_this_machine() -> None:
    need = DoctorConfig().shm_need_bytes
    st = os.statvfs("/dev/shm")
    if st.f_bavail * st.f_frsize < need:
        pytest.skip("this machine's /dev/shm is itself too small")
    assert run_doctor(only=["shm"]).findings[0].severity is Severity.OK


def _unshare_available() -> str | None:
    if not IS_ROOT:
        return "needs root for a private tmpfs mount"
    if shutil.which("unshare") is None:
        return "unshare not installed"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare --mount fails: {probe.stderr.strip()}"


def test_shm_of_64_mib_fails_for_the_default_workload_and_suits_a_small_one() -> None:
    if reason := _unshare_available():
        pytest.skip(reason)
    code = """
        import json
        from diagnostics.doctor import DoctorConfig, run_doctor
        big = run_doctor(only=["shm"]).findings[0].to_dict()
        small = run_doctor(DoctorConfig(num_workers=1, batch_size=1), only=["shm"])
        print(json.dumps([big, small.findings[0].to_dict()]))
    """
    mount = "mount -t tmpfs -o size=64m tmpfs /dev/shm"
    script = f"{mount} && exec \"$0\" -c '{textwrap.dedent(code)}'"
    big, small = run_python_argv(["unshare", "--mount", "sh", "-c", script, sys.executable])
    assert big["severity"] == "fail"
    assert "/dev/shm: size 64 MiB, free 64 MiB" in big["evidence"][0]
    assert "shm-size" in big["fix"]
    assert small["severity"] == "ok"


def run_python_argv(argv: list[str]) -> Any:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- thread env vars and start methods ----------------------------------------------
def test_thread_vars_set_before_start_reach_spawn_and_forkserver_children() -> None:
    code = """
        import json, multiprocessing
        from diagnostics.probes.multiproc import probe_thread_env
        result = probe_thread_env(timeout=20).to_dict()
        result["start_method_after"] = multiprocessing.get_start_method(allow_none=True)
        print(json.dumps(result))
    """
    result = run_python(code, env={"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"})
    assert result["severity"] == "ok"
    assert "OMP_NUM_THREADS: parent=3 spawn=3, forkserver=3" in result["evidence"]
    assert result["start_method_after"] is None  # the check does not fix the start method


def test_thread_var_set_after_the_forkserver_started_does_not_reach_its_children() -> None:
    code = """
        import json, os
        from multiprocessing import forkserver
        from diagnostics.probes.multiproc import probe_thread_env
        forkserver.ensure_running()        # e.g. an earlier pool or DataLoader started it
        os.environ["OMP_NUM_THREADS"] = "3"  # set "in code", after the fact
        print(json.dumps(probe_thread_env(timeout=20).to_dict()))
    """
    result = run_python(code, env={"OMP_NUM_THREADS": None})
    assert result["severity"] == "fail"
    assert "OMP_NUM_THREADS: parent=3 spawn=3, forkserver=None" in result["evidence"]
    assert any("set after this process started: OMP_NUM_THREADS" in e for e in result["evidence"])
    assert "forkserver" in result["fix"]


def test_env_comparison_flags_a_spawn_mismatch_and_a_child_that_never_answers() -> None:
    # There is no honest way to make a spawn child miss a variable set via os.environ
    # (spawn passes the C environment, which os.environ writes through), so the
    # comparison itself is checked; the child timeout below is real.
    parent = {"OMP_NUM_THREADS": "4"}
    mismatch = compare_env_propagation(parent, {"spawn": {"OMP_NUM_THREADS": None}})
    assert mismatch.severity is Severity.FAIL and "spawn" in mismatch.evidence[-1]
    silent = read_child_env("spawn", ["OMP_NUM_THREADS"], timeout=0.001)
    assert isinstance(silent, str) and "sent nothing within" in silent
    assert compare_env_propagation(parent, {"spawn": silent}).severity is Severity.FAIL


def test_start_method_probe() -> None:
    code = """
        import json, multiprocessing, sys, types
        from diagnostics.probes.multiproc import probe_start_method
        out = [probe_start_method().to_dict()]
        # No GPU here: CUDA initialisation is simulated with a stand-in torch module.
        sys.modules["torch"] = types.SimpleNamespace(
            cuda=types.SimpleNamespace(is_initialized=lambda: True))
        out.append(probe_start_method().to_dict())
        multiprocessing.set_start_method("spawn")
        out.append(probe_start_method().to_dict())
        print(json.dumps(out))
    """
    default_fork, fork_after_cuda, spawn = run_python(code)
    assert default_fork["severity"] == "info"
    assert "start method: fork (default)" in default_fork["evidence"]
    assert fork_after_cuda["severity"] == "fail"
    assert "Cannot re-initialize CUDA" in " ".join(fork_after_cuda["evidence"])
    assert spawn["severity"] == "ok"


# --- CPUs, memory, cgroups ----------------------------------------------------------
def test_usable_cpus() -> None:
    assert usable_cpus(2, None, read_quota=False) == 2
    assert usable_cpus(72, 0.5) == 1
    assert usable_cpus(72, 2.5) == 2
    assert usable_cpus(2, 4.0) == 2


def test_cpu_affinity_below_cpu_count_warns_unless_thread_vars_are_set() -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs at least 2 CPUs")
    code = """
        import json, os
        os.sched_setaffinity(0, {0})
        from diagnostics.probes.system import probe_cpus
        print(json.dumps(probe_cpus().to_dict()))
    """
    unset: dict[str, str | None] = dict.fromkeys(THREAD_ENV_VARS)
    warned = run_python(code, env=unset)
    assert warned["severity"] == "warn"
    assert "sched_getaffinity=1" in warned["evidence"][0]
    assert "OMP_NUM_THREADS=1" in warned["fix"]
    budgeted = run_python(code, env={k: "1" for k in unset})
    assert budgeted["severity"] == "ok"
    # In process, with the variables set or not: the verdict follows from this machine.
    assert probe_cpus({v: "2" for v in THREAD_ENV_VARS}).severity is Severity.OK
    oversubscribed = usable_cpus() < (os.cpu_count() or 1)
    expected = Severity.WARN if oversubscribed else Severity.OK
    assert probe_cpus({}).severity is expected


def test_doctor_reports_the_thread_budget_the_pipeline_uses() -> None:
    """Under a one-CPU affinity mask the doctor and a pipeline built in the same process
    agree on every generator's split, and it fits in the one CPU."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs at least 2 CPUs")
    code = """
        import json, os
        os.sched_setaffinity(0, {0})
        from diagnostics.probes.system import probe_cpus
        from heygem.config import GENERATORS, GenerateOptions
        from heygem.pipeline import Pipeline
        pipelines = [
            Pipeline(GenerateOptions(generator=name, checkpoint="unused.pth"))
            for name in GENERATORS
        ]
        print(json.dumps({
            "evidence": probe_cpus().to_dict()["evidence"],
            "pipeline": [p.budget.describe() for p in pipelines],
            "threads": [
                (p.budget.model_threads * p.budget.model_streams, p.budget.x264_threads)
                for p in pipelines
            ],
        }))
    """
    out = run_python(code)
    budget_lines = [e for e in out["evidence"] if e.startswith("thread budget: ")]
    assert budget_lines == [f"thread budget: {d}" for d in out["pipeline"]]
    assert len(budget_lines) >= 2 and all("of 1 usable CPU" in d for d in out["pipeline"])
    assert all(model == 1 and x264 == 1 for model, x264 in out["threads"])


@pytest.fixture
def v1_cgroup(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh cgroup-v1 directory for the controller given by the test's parameter."""
    controller = request.param
    base = Path("/sys/fs/cgroup") / controller
    if not IS_ROOT or not (base / "cgroup.procs").exists():
        pytest.skip(f"needs root and a cgroup v1 '{controller}' hierarchy")
    path = base / f"heygem-test-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup: {exc}")
    yield path
    path.rmdir()  # its only process has exited by now


def in_cgroup(cgroup: Path) -> list[str]:
    return ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$0" "$@"']


@pytest.mark.parametrize("v1_cgroup", ["cpu"], indirect=True)
def test_real_cgroup_cpu_quota_is_detected(v1_cgroup: Path) -> None:
    (v1_cgroup / "cpu.cfs_quota_us").write_text("50000")  # half a CPU
    code = """
        import json
        from diagnostics.probes.system import probe_cpus, read_cgroup_limits
        print(json.dumps([read_cgroup_limits().cpu_quota, probe_cpus().to_dict()]))
    """
    quota, result = run_python(
        code,
        prefix=in_cgroup(v1_cgroup),
        env={"OMP_NUM_THREADS": None, "NUMEXPR_MAX_THREADS": None},
    )
    assert quota == 0.5
    assert "-> usable 1" in result["evidence"][0]
    assert any("cpu.cfs_quota_us=50000" in e for e in result["evidence"])
    if (os.cpu_count() or 1) > 1:
        assert result["severity"] == "warn"


@pytest.mark.parametrize("v1_cgroup", ["memory"], indirect=True)
def test_real_cgroup_memory_limit_below_need_fails(v1_cgroup: Path) -> None:
    (v1_cgroup / "memory.limit_in_bytes").write_text(str(256 << 20))
    code = """
        import json
        from diagnostics.doctor import DoctorConfig, run_doctor
        small = DoctorConfig(main_process_bytes=32 << 20, num_workers=0)
        out = [run_doctor(c, only=["cgroup-memory"]).findings[0].to_dict()
               for c in (None, small)]
        print(json.dumps(out))
    """
    default, small = run_python(code, prefix=in_cgroup(v1_cgroup))
    assert default["severity"] == "fail"
    assert any(e.endswith("memory limit: 256 MiB") for e in default["evidence"])
    assert any("memory.limit_in_bytes=268435456" in e for e in default["evidence"])
    assert "--memory" in default["fix"]
    assert small["severity"] == "ok"


def test_memory_probe_on_this_machine() -> None:
    # A need far below anything a machine has is fine; one far above it is a problem,
    # a FAIL where a cgroup limit exists (the OOM killer) and a WARN on the host alone.
    tiny = DoctorConfig(main_process_bytes=1 << 20, num_workers=0)
    small = run_doctor(tiny, only=["cgroup-memory"]).findings[0]
    assert small.severity is Severity.OK
    assert any(e.startswith("host RAM") for e in small.evidence)
    huge = DoctorConfig(main_process_bytes=1 << 50, num_workers=0)
    big = run_doctor(huge, only=["cgroup-memory"]).findings[0]
    limited = any("memory limit: none" not in e for e in big.evidence if "memory limit" in e)
    if limited:
        assert big.severity is Severity.FAIL and "OOM killer" in big.evidence[-1]
    else:
        assert big.severity is Severity.WARN and "less memory available" in big.evidence[-1]


# --- container, LD_LIBRARY_PATH, codecs, GPU ----------------------------------------
def test_container_markers(tmp_path: Path) -> None:
    real = container_markers()
    if Path("/.dockerenv").exists():
        assert "/.dockerenv exists" in real
    assert container_markers(tmp_path, environ={}) == []
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "cgroup").write_text("0::/kubepods/burstable/pod1/abc\n")
    assert container_markers(tmp_path, environ={"container": "podman"}) == [
        "/proc/1/cgroup mentions kubepods",
        "container=podman in the environment",
    ]


LD_CODE = """
    import json, os
    {before}
    from diagnostics.probes.system import probe_ld_library_path
    print(json.dumps(probe_ld_library_path().to_dict()))
"""


def test_ld_library_path_set_at_start_is_ok(tmp_path: Path) -> None:
    result = run_python(LD_CODE.format(before=""), env={"LD_LIBRARY_PATH": str(tmp_path)})
    assert result["severity"] == "ok"
    assert result["evidence"] == [str(tmp_path)]


def test_ld_library_path_changed_in_process_or_broken_warns(tmp_path: Path) -> None:
    late = f"os.environ['LD_LIBRARY_PATH'] = {str(tmp_path)!r}"
    changed = run_python(LD_CODE.format(before=late), env={"LD_LIBRARY_PATH": None})
    assert changed["severity"] == "warn"
    assert any("changed after this process started" in e for e in changed["evidence"])
    broken = run_python(
        LD_CODE.format(before=""), env={"LD_LIBRARY_PATH": f"{tmp_path}/missing:{tmp_path}:"}
    )
    assert broken["severity"] == "warn"
    assert f"{tmp_path}/missing: does not exist" in broken["evidence"]
    assert any("empty entry" in e for e in broken["evidence"])


def test_opencv_rewriting_ld_library_path_is_not_blamed_on_the_user() -> None:
    result = run_python(LD_CODE.format(before="import cv2"), env={"LD_LIBRARY_PATH": None})
    if not any("added by opencv" in e for e in result["evidence"]):
        pytest.skip("this opencv build does not touch LD_LIBRARY_PATH")
    assert result["severity"] == "info"


def test_av_codecs_present_and_a_really_missing_encoder() -> None:
    assert probe_av_codecs().severity is Severity.OK
    result = probe_av_codecs([("vp6", "w", "an encoder FFmpeg does not have")])
    assert result.severity is Severity.FAIL
    assert "vp6 encoder" in (result.fix or "")


def test_gpu_probe_without_gpu_is_info_with_nvml_reason() -> None:
    snap = nvml_snapshot()
    result = probe_gpu()
    if snap.available and snap.devices:
        pytest.skip("a GPU is present")
    assert not snap.available and snap.reason
    import torch

    # A CUDA build of torch without a GPU is worth a warning; a CPU build is just info.
    assert result.severity is (Severity.WARN if torch.version.cuda else Severity.INFO)
    assert snap.reason in result.evidence[0]


def test_landmarks_probe_says_how_jobs_will_run_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from heygem.face import landmark_store, shape_predictor
    from heygem.face.landmarks import default_store, model_path

    # (the session's default store holds the converted arrays: tests/conftest.py)
    assert probe_landmarks().severity is Severity.OK
    empty = probe_landmarks(tmp_path / "store")
    assert empty.severity is Severity.INFO and "python -m heygem.face.landmark_store" in (
        empty.fix or ""
    )
    note = landmark_store.failure_note(landmark_store.entry_for(model_path(), tmp_path / "s"))
    note.parent.mkdir()
    note.write_text("UnreadableLandmarkModel: damaged\n")
    failed = probe_landmarks(tmp_path / "s")
    assert failed.severity is Severity.WARN and any("damaged" in e for e in failed.evidence)
    monkeypatch.setattr(shape_predictor, "_ert", None)
    missing = probe_landmarks(default_store())
    assert missing.severity is Severity.WARN and "C compiler" in (missing.fix or "")
