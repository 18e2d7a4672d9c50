"""Live process inspection against real processes: a real zombie, a real spawn-child tree
holding real shared memory, a real orphan, a real D-state process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from diagnostics.findings import render_text
from diagnostics.inspect import (
    find_heygem_processes,
    inspect_process_tree,
    process_report,
    reap_zombie_children,
)
from heygem.errors import InputNotFound, InvalidOption
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def status_of(pid: int) -> str:
    try:
        return str(psutil.Process(pid).status())
    except psutil.NoSuchProcess:
        return "gone"


def test_bad_pids_are_rejected() -> None:
    with pytest.raises(InvalidOption):
        inspect_process_tree(0)
    dead = subprocess.Popen(["true"])
    dead.wait()
    with pytest.raises(InputNotFound, match=str(dead.pid)):
        inspect_process_tree(dead.pid)


def test_real_zombie_is_reported_with_its_parent_then_reaped() -> None:
    # posix_spawn: nobody but this process can reap it, and nothing does it implicitly.
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 3"], dict(os.environ))
    try:
        wait_for(lambda: status_of(pid) == psutil.STATUS_ZOMBIE, 10.0, what="the child to exit")
        report = inspect_process_tree(os.getpid(), cpu_interval=0.05, look_for_orphans=False)
        child = report.get(pid)
        assert child is not None and child.is_zombie and child.display_status == "<defunct>"
        finding = next(f for f in report.findings if f.subject == f"pid {pid}")
        assert finding.id == "zombie"
        assert f"parent {os.getpid()}" in finding.title
        assert "Only the parent" in (finding.fix or "")
        assert "<defunct>" in render_text(process_report([report]))
        json.dumps(report.to_dict())
    finally:
        reaped = reap_zombie_children(only=[pid])
    assert [(r.pid, r.exit_code) for r in reaped] == [(pid, 3)]
    assert not psutil.pid_exists(pid)


TREE_SCRIPT = """
import multiprocessing as mp, sys, time
from multiprocessing import shared_memory
if __name__ == "__main__":
    shm = shared_memory.SharedMemory(create=True, size=1 << 20)
    shm.buf[:] = b"x" * (1 << 20)
    child = mp.get_context("spawn").Process(target=time.sleep, args=(60,))
    child.start()
    print(child.pid, shm.name, flush=True)
    sys.stdin.readline()
    child.terminate(); child.join()
    shm.close(); shm.unlink()
"""


@pytest.fixture
def spawn_tree(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, str]]:
    script = tmp_path / "heygem-test-tree.py"  # the program's name is what is matched
    script.write_text(TREE_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script)], text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdin is not None
    child_pid, shm_name = proc.stdout.readline().split()
    yield proc, int(child_pid), shm_name
    proc.stdin.close()
    proc.wait(timeout=20)


def test_spawned_child_tree_with_shared_memory(
    spawn_tree: tuple[subprocess.Popen[str], int, str],
) -> None:
    proc, child_pid, shm_name = spawn_tree
    report = inspect_process_tree(proc.pid, cpu_interval=0.05, look_for_orphans=False)
    pids = [p.pid for p in report.processes]
    assert pids[0] == proc.pid and child_pid in pids
    child = report.get(child_pid)
    assert child is not None and child.ppid == proc.pid
    assert "--multiprocessing-fork" in child.cmdline
    parent = report.get(proc.pid)
    assert parent is not None
    assert parent.rss_bytes and parent.threads and parent.cpu_percent is not None
    held = {(s.path, s.via) for s in parent.shm}
    assert {(f"/dev/shm/{shm_name}", "fd"), (f"/dev/shm/{shm_name}", "mmap")} <= held
    mapped = next(s for s in parent.shm if s.via == "mmap")
    assert mapped.mapped_bytes == 1 << 20 and not mapped.deleted
    assert report.healthy
    text = render_text(process_report([report]))
    assert "shm 1 (1 MiB mapped)" in text
    assert "note: " in text  # GPU use: not shown without NVML, or the PID caveat with it
    assert find_heygem_processes("heygem-test-tree") == [proc.pid]


ORPHAN_DRIVER = """
import json, os, signal, subprocess, sys, time
import psutil
from diagnostics.inspect import find_orphans, inspect_process_tree

def poll(cond):
    deadline = time.monotonic() + 10
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.01)

# This driver is PID 1 of a new PID namespace, like a Python entrypoint in a container
# started without --init. A middle process starts a spawn worker and is then killed.
middle = subprocess.Popen([sys.executable, "-c",
    "import multiprocessing as mp, time\\n"
    "p = mp.get_context('spawn').Process(target=time.sleep, args=(60,)); p.start()\\n"
    "print(p.pid, flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
worker = int(middle.stdout.readline())
middle.send_signal(signal.SIGKILL); middle.wait()
poll(lambda: psutil.Process(worker).ppid() == 1)
# A restarted server is inspected; the scan finds the previous run's orphaned worker.
server = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                          stdin=subprocess.PIPE)
orphan_report = inspect_process_tree(server.pid, cpu_interval=0)
server.stdin.close(); server.wait()
os.kill(worker, signal.SIGKILL)
poll(lambda: psutil.Process(worker).status() == psutil.STATUS_ZOMBIE)
zombie_report = inspect_process_tree(1, cpu_interval=0, look_for_orphans=False)
os.waitpid(worker, 0)
for child in psutil.Process().children():  # e.g. the dead middle's resource tracker
    child.kill(); os.waitpid(child.pid, 0)
print(json.dumps({"pid": os.getpid(), "worker": worker,
                  "orphans": [p.pid for p in find_orphans()],
                  "orphan_report": orphan_report.to_dict(),
                  "zombie_report": zombie_report.to_dict()}))
"""


def test_orphaned_spawn_worker_and_a_pid1_that_does_not_reap() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private PID namespace")
    argv = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", ORPHAN_DRIVER]
    proc = subprocess.run(argv, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=60)
    if (
        proc.returncode != 0
        and "unshare" in proc.stderr
        and "Operation not permitted" in (proc.stderr)
    ):
        pytest.skip(f"unshare --pid not permitted: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["pid"] == 1
    worker = out["worker"]
    orphan = [f for f in out["orphan_report"]["findings"] if f["subject"] == f"pid {worker}"]
    assert [f["id"] for f in orphan] == ["orphan"]
    assert "re-parented to 1" in orphan[0]["title"]
    assert "terminate()+join()" in orphan[0]["fix"]
    zombie = [f for f in out["zombie_report"]["findings"] if f["subject"] == f"pid {worker}"]
    assert [f["id"] for f in zombie] == ["zombie"]
    assert "--init" in zombie[0]["fix"]


def test_real_d_state_process_in_a_frozen_cgroup() -> None:
    freezer = Path("/sys/fs/cgroup/freezer")
    if os.geteuid() != 0 or not (freezer / "cgroup.procs").exists():
        pytest.skip("needs root and a cgroup v1 freezer hierarchy")
    group = freezer / f"heygem-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a freezer cgroup: {exc}")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (group / "cgroup.procs").write_text(str(sleeper.pid))
        (group / "freezer.state").write_text("FROZEN")
        wait_for(lambda: status_of(sleeper.pid) == psutil.STATUS_DISK_SLEEP, 10.0, what="D state")
        report = inspect_process_tree(os.getpid(), cpu_interval=0, look_for_orphans=False)
        finding = next(f for f in report.findings if f.subject == f"pid {sleeper.pid}")
        assert finding.id == "d-state"
        assert "uninterruptible sleep (D)" in finding.title
        assert "freezer.state=FROZEN" in finding.title
        assert "THAWED" in (finding.fix or "")
    finally:
        (group / "freezer.state").write_text("THAWED")
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
        wait_for(
            lambda: not (group / "cgroup.procs").read_text().strip(), 10.0, what="empty cgroup"
        )
        group.rmdir()


def test_find_heygem_processes_finds_roots_only(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()",
                                  "heygem-test-child"], stdin=subprocess.PIPE)
        print(child.pid, flush=True)
        sys.stdin.read()
        child.stdin.close(); child.wait()
    """)
    marker = f"heygem-test-{uuid.uuid4().hex[:6]}"
    script = tmp_path / f"{marker}.py"
    script.write_text(code)
    # An argument that merely mentions heygem is not a heygem process.
    bystander = subprocess.Popen(["sleep", "30", marker])
    root = subprocess.Popen(
        [sys.executable, str(script)], text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert root.stdout is not None
        child_pid = int(root.stdout.readline())
        found = find_heygem_processes()
        assert root.pid in found and child_pid not in found
        assert find_heygem_processes(marker) == [root.pid]
    finally:
        bystander.kill()
        bystander.wait()
        assert root.stdin is not None
        root.stdin.close()
        root.wait(timeout=20)
