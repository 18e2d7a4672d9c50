"""The page's JSON endpoints and the page shell, through the API (an app without workers).

What a browser needs from the server, checked without one: the page and every file it
loads, the security headers, who may see what, result links, avatars, options, the
lip-sync score, and each diagnosis."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from diagnostics.syncscore import sync_score
from heygem.config import per_job_fields
from service.app import create_app
from service.deps import Services
from service.jobs import Job
from service.settings import ServiceSettings
from service.web.links import ResultLinks
from tests.helpers import wait_for
from tests.service.helpers import KEYS

LOGS = Path(__file__).resolve().parents[1] / "diagnostics" / "fixtures"
REFS = {"audio_path": "speech.wav", "video_path": "template.mp4"}
Make = Callable[..., ServiceSettings]


def _error(response: Any, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type and error["message"], error
    return dict(error)


def _succeed(client: TestClient, job_id: str, result: Path) -> Job:
    """End a queued job as a worker would: claimed, its MP4 written, reported done."""
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    job = services.lifecycle.claim("test-worker")
    assert job is not None and job.id == job_id
    shutil.copy(result, job.output_path)
    services.lifecycle.succeed(job, {"frames": 50, "timings": {"total": 1.0}})
    return services.store.get(job_id)


def _upload(client: TestClient, path: Path, name: str | None = None, **kw: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/uploads", files={"file": (name or path.name, path.read_bytes())}, **kw
    )
    assert response.status_code == 201, response.text
    upload: dict[str, Any] = response.json()
    return upload


# --- the page ------------------------------------------------------------------------------
def test_the_page_and_every_file_it_loads_come_with_a_strict_policy(web_client: TestClient) -> None:
    page = web_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = {
        part.split()[0]: part.split()[1:]
        for part in page.headers["content-security-policy"].split("; ")
    }
    assert policy["default-src"] == ["'none'"] and policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"] and policy["frame-ancestors"] == ["'none'"]
    assert not any(
        "unsafe" in value or "*" in value for values in policy.values() for value in values
    )
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert 'data-auth="off"' in page.text
    # Every file the page loads, and every module those import, is served as what it is.
    pending = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    seen: set[str] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        response = web_client.get(path)
        assert response.status_code == 200, path
        assert "content-security-policy" in response.headers, path
        kind = {"js": "javascript", "css": "text/css", "svg": "image/svg+xml"}[
            path.rsplit(".", 1)[1]
        ]
        assert kind in response.headers["content-type"], (path, response.headers["content-type"])
        if path.endswith(".js"):
            pending += [
                f"/static/{name}" for name in re.findall(r'from "\./([\w-]+\.js)"', response.text)
            ]
    assert {"/static/app.js", "/static/api.js", "/static/charts.js", "/static/job.js"} <= seen
    # The JSON API and its docs are not the page: Swagger UI keeps working.
    assert "content-security-policy" not in web_client.get("/docs").headers


def test_the_page_knows_when_to_ask_for_a_key(make_web_settings: Make) -> None:
    settings = make_web_settings(api_key=KEYS["ops"], api_key_header="X-Team-Key")
    with TestClient(create_app(settings)) as client:
        page = client.get("/")  # the shell itself is public: it holds no data
        assert page.status_code == 200
        assert 'data-auth="on"' in page.text and 'data-key-header="X-Team-Key"' in page.text
        assert KEYS["ops"] not in page.text
        _error(client.get("/v1/avatars"), 401, "Unauthorized")


# --- options and avatars ------------------------------------------------------------------
def test_options_are_the_per_job_fields_with_this_servers_defaults(make_web_settings: Make) -> None:
    settings = make_web_settings(pipeline={"batch_size": 6, "preset": "ultrafast"})
    with TestClient(create_app(settings)) as client:
        answer = client.get("/v1/options").json()
    options = {o["name"]: o for o in answer["options"]}
    assert set(options) == {s.name for s in per_job_fields()} - {"fault"}  # not allowed here
    assert options["batch_size"]["default"] == 6 and options["batch_size"]["type"] == "int"
    assert (
        options["preset"]["default"] == "ultrafast" and "veryslow" in options["preset"]["choices"]
    )
    assert options["generator"]["choices"] == ["rewrite"]  # wav2lip needs a checkpoint here
    assert answer["limits"]["max_upload_bytes"] == settings.max_upload_bytes
    with TestClient(create_app(make_web_settings(allow_fault_injection=True))) as client:
        assert "fault" in {o["name"] for o in client.get("/v1/options").json()["options"]}


def test_avatars_are_a_clients_template_uploads_with_a_thumbnail(
    make_web_settings: Make, web_media: Path, tmp_path: Path
) -> None:
    """(Once a job analysed a template, its avatar says how many frames show a face: the
    browser round trip checks that against the template's frames counted by PyAV.)"""
    settings = make_web_settings(
        api_keys={"alice": KEYS["alice"], "bob": KEYS["bob"]},
        pipeline={"cache_dir": tmp_path / "own-cache"},  # no other test's analysis in it
    )
    alice, bob = ({"X-API-Key": KEYS[n]} for n in ("alice", "bob"))
    with TestClient(create_app(settings)) as client:
        _upload(client, web_media / "speech.wav", headers=alice)  # audio: not an avatar
        _upload(client, web_media / "template.mp4", "old name.mp4", headers=alice)
        video = _upload(client, web_media / "template.mp4", "my face.mp4", headers=alice)
        _upload(client, web_media / "no-face.mp4", headers=bob)
        mine = client.get("/v1/avatars", headers=alice).json()
        theirs = client.get("/v1/avatars", headers=bob).json()
    assert [a["upload_id"] for a in mine["items"]] == [video["id"]]  # one per template content
    assert [a["filename"] for a in theirs["items"]] == ["no-face.mp4"]
    avatar = mine["items"][0]
    assert avatar["filename"] == "my face.mp4" and avatar["duration"] == pytest.approx(2.0, abs=0.1)
    assert (avatar["width"], avatar["height"]) == (480, 360) and avatar["still"] is False
    assert avatar["analysed"] is False and avatar["face_frames"] is None  # no job ran on it
    assert mine["kept_seconds"] == settings.upload_ttl
    # The thumbnail is a real picture of the first frame, decoded here by OpenCV.
    prefix = "data:image/jpeg;base64,"
    assert avatar["thumbnail"].startswith(prefix)
    import base64

    jpeg = np.frombuffer(base64.b64decode(avatar["thumbnail"][len(prefix) :]), np.uint8)
    picture = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    assert picture is not None, "the thumbnail is not a JPEG OpenCV can decode"
    assert picture.shape == (96, 128, 3)
    first = _first_frame(web_media / "template.mp4")
    small = cv2.resize(first, (128, 96), interpolation=cv2.INTER_AREA)
    assert np.abs(picture.astype(int) - small.astype(int)).mean() < 12


def _first_frame(video: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(video))
    ok, frame = capture.read()
    capture.release()
    assert ok
    return frame


# --- result links -------------------------------------------------------------------------
def test_a_result_link_plays_without_the_key_and_only_that_result(
    make_web_settings: Make, template_mp4: Path
) -> None:
    settings = make_web_settings(api_keys={"alice": KEYS["alice"], "bob": KEYS["bob"]})
    alice, bob = ({"X-API-Key": KEYS[n]} for n in ("alice", "bob"))
    with TestClient(create_app(settings)) as client:
        finished = client.post("/v1/generations", data=REFS, headers=alice).json()["id"]
        waiting = client.post("/v1/generations", data=REFS, headers=alice).json()["id"]
        _succeed(client, finished, template_mp4)  # the oldest is claimed first
        _error(
            client.post(f"/v1/generations/{waiting}/result-link", headers=alice),
            409,
            "ResultNotReady",
        )
        _error(
            client.post(f"/v1/generations/{finished}/result-link", headers=bob), 404, "JobNotFound"
        )
        _error(client.post(f"/v1/generations/{finished}/result-link"), 401, "Unauthorized")
        link = client.post(f"/v1/generations/{finished}/result-link", headers=alice).json()
        assert KEYS["alice"] not in link["url"] and link["url"].startswith("/v1/results/")
        whole = template_mp4.read_bytes()
        full = client.get(link["url"])  # no key: the link is the permission
        assert full.status_code == 200 and full.content == whole
        assert full.headers["content-type"] == "video/mp4"
        part = client.get(link["url"], headers={"Range": "bytes=100-299"})
        assert part.status_code == 206 and part.content == whole[100:300]
        # A changed character anywhere voids it; another job's id cannot be swapped in.
        token = link["url"].rsplit("/", 1)[1]
        for forged in (
            token[:-1] + ("0" if token[-1] != "0" else "1"),
            waiting + token[32:],
            token.replace(".", "..", 1),
            "x" * 200,
        ):
            _error(client.get(f"/v1/results/{forged}"), 401, "LinkInvalid")


def test_result_links_expire_and_die_with_the_server_process() -> None:
    links = ResultLinks(seconds=60)
    job = "0123456789abcdef0123456789abcdef"
    link = links.issue(job, now=1000.0)
    assert links.job_of(link.token, now=1059.0) == job
    with pytest.raises(Exception, match="expired"):
        links.job_of(link.token, now=1061.0)
    with pytest.raises(Exception, match="not valid"):
        ResultLinks().job_of(link.token, now=1000.0)  # a restarted server has a new secret


def test_result_tokens_never_reach_the_log(
    make_web_settings: Make, template_mp4: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(create_app(make_web_settings())) as client:
        job = client.post("/v1/generations", data=REFS).json()["id"]
        _succeed(client, job, template_mp4)
        with caplog.at_level("DEBUG"):
            url = client.post(f"/v1/generations/{job}/result-link").json()["url"]
            assert client.get(url).status_code == 200
    token = url.rsplit("/", 1)[1]
    server = "\n".join(
        r.getMessage() for r in caplog.records if r.name != "httpx"
    )  # not the client
    assert "/v1/results/{token}" in server  # the access line names the route
    assert token.split(".")[2] not in server


# --- the lip-sync score -------------------------------------------------------------------
def test_the_sync_score_is_measured_once_in_the_background(
    web_client: TestClient, web_media: Path, template_mp4: Path
) -> None:
    job = web_client.post("/v1/generations", data=REFS).json()["id"]
    _error(web_client.get(f"/v1/generations/{job}/sync-score"), 409, "ResultNotReady")
    finished = _succeed(web_client, job, template_mp4)
    first = web_client.get(f"/v1/generations/{job}/sync-score")
    assert first.status_code == 202 and first.json()["state"] == "measuring"

    def measured() -> dict[str, Any] | None:
        response = web_client.get(f"/v1/generations/{job}/sync-score")
        return response.json() if response.status_code == 200 else None

    score = wait_for(measured, timeout=120, interval=0.2, what="the sync score")
    # The same measurement made here directly: the endpoint only runs and keeps it.
    direct = sync_score(Path(finished.output_path), web_media / "speech.wav")
    assert score["state"] == "done" and score["score"] == pytest.approx(direct.score, abs=1e-3)
    assert score["control"] == pytest.approx(direct.control, abs=1e-3)
    assert score["verdict"] in ("ok", "warn", "fail") and score["report"]["tool"] == "sync-score"
    # A template's own mouth does not follow new speech: the verdict says so.
    assert (score["verdict"] == "fail") == (direct.score < 0.5)
    text = json.dumps(score)
    assert finished.output_path not in text and str(web_media) not in text  # no server paths
    stored = Path(finished.output_path).parent / "sync-score.json"
    assert stored.is_file()
    started = time.perf_counter()
    again = web_client.get(f"/v1/generations/{job}/sync-score")
    assert again.status_code == 200 and again.json() == score
    assert time.perf_counter() - started < 1.0  # answered from the stored report


# --- who may see the server's internals ---------------------------------------------------
def test_server_internals_need_an_admin_key(make_web_settings: Make) -> None:
    settings = make_web_settings(
        api_keys={"alice": KEYS["alice"], "ops": KEYS["ops"]}, admin_clients="ops"
    )
    with TestClient(create_app(settings)) as client:
        for path in ("/v1/diagnose/processes", "/v1/diagnose/reports", "/v1/diagnose/doctor"):
            _error(client.get(path), 401, "Unauthorized")
            error = _error(client.get(path, headers={"X-API-Key": KEYS["alice"]}), 403, "Forbidden")
            assert "admin key" in error["message"]
        ops = client.get("/v1/diagnose/processes", headers={"X-API-Key": KEYS["ops"]})
        assert ops.status_code == 200
        # Anyone with a key may have a log analysed: it shows only that log.
        log = LOGS / "healthy.log"
        answer = client.post(
            "/v1/diagnose/log",
            files={"file": ("dh.log", log.read_bytes())},
            headers={"X-API-Key": KEYS["alice"]},
        )
        assert answer.status_code == 200, answer.text


def test_without_keys_only_a_loopback_server_shows_its_internals(make_web_settings: Make) -> None:
    with TestClient(create_app(make_web_settings())) as client:
        assert client.get("/v1/diagnose/reports").status_code == 200
    remote = make_web_settings(host="0.0.0.0", allow_remote_without_key=True)
    with TestClient(create_app(remote)) as client:
        error = _error(client.get("/v1/diagnose/reports"), 403, "Forbidden")
        assert "HEYGEM_SERVICE_API_KEY" in (error["hint"] or "")


# --- diagnoses ----------------------------------------------------------------------------
def test_processes_are_this_servers_tree(web_client: TestClient) -> None:
    answer = web_client.get("/v1/diagnose/processes").json()
    assert answer["workers"] == []  # no workers configured
    report = answer["report"]
    assert report["tool"] == "ps" and report["pids"] == [os.getpid()]
    me = report["reports"][0]["processes"][0]
    assert me["pid"] == os.getpid() and me["rss_bytes"] > 0 and me["display_status"]


def test_a_log_is_analysed_and_its_lines_come_back_verbatim(
    web_client: TestClient, tmp_path: Path
) -> None:
    text = (LOGS / "consumer_never_started.log").read_text(encoding="utf-8")
    hostile = "<script>alert('log')</script><img src=x onerror=alert(2)>"
    lines = text.splitlines()
    lines.insert(
        12,
        f"[2025-03-18 10:21:33,700] [trans_dh_service.py[line:321]] [ERROR] "
        f"[[1742264493] {hostile}]",
    )
    log = tmp_path / "dh.log"
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    answer = web_client.post(
        "/v1/diagnose/log", files={"file": ("<img src=x onerror=alert(1)>.log", log.read_bytes())}
    )
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["tool"] == "log" and report["worst"] == "fail"
    assert (
        report["path"] == "<img src=x onerror=alert(1)>.log"
    )  # the name it was sent as, not a server path
    assert str(web_client.app.state.services.settings.data_dir) not in answer.text  # type: ignore[attr-defined]
    assert any(f["id"] == "consumer-never-started" for f in report["findings"])
    task = next(t for t in report["tasks"] if t["task_id"] == "1742264493")
    kinds = [e["kind"] for e in task["events"]]
    assert kinds.count("send") == 10 and kinds.count("take") == 0 and "queue_full" in kinds
    assert any(hostile in e["detail"] for e in task["events"])  # as text: escaping is the page's
    assert not list((web_client.app.state.services.settings.data_dir).glob("log-*"))  # type: ignore[attr-defined]


def test_a_log_that_is_not_a_log_or_too_big_is_refused(web_client: TestClient) -> None:
    garbage = web_client.post(
        "/v1/diagnose/log", files={"file": ("x.log", b"\x89PNG\r\n" + bytes(500))}
    )
    error = _error(garbage, 400, "InvalidOption")
    assert "x.log" in error["message"] and error["hint"]
    from service.routes import diagnose

    big = b"x" * (diagnose.LOG_MAX_BYTES + 1)
    _error(
        web_client.post("/v1/diagnose/log", files={"file": ("big.log", big)}), 413, "UploadTooLarge"
    )


def test_reports_are_the_latest_matrix_report_and_bench_summary(
    make_web_settings: Make, tmp_path: Path
) -> None:
    reports = tmp_path / "checkout"
    with TestClient(create_app(make_web_settings(reports_dir=reports.parent))) as client:
        empty = client.get("/v1/diagnose/reports").json()
    assert empty["matrix"] is None and empty["benchmarks"] is None
    for name, age in (("report", 100), ("ci-report", 10)):
        folder = reports / "matrix-results" / name
        folder.mkdir(parents=True)
        (folder / "report.md").write_text(f"# matrix {name}\n| a | b |\n|---|---|\n| 1 | 2 |\n")
        stamp = time.time() - age
        os.utime(folder / "report.md", (stamp, stamp))
    (reports / "bench-results").mkdir()
    (reports / "bench-results" / "summary.md").write_text("# benchmarks\n")
    with TestClient(create_app(make_web_settings(reports_dir=reports))) as client:
        found = client.get("/v1/diagnose/reports").json()
    assert found["matrix"]["name"] == "matrix-results/ci-report/report.md"  # the newest
    assert found["matrix"]["markdown"].startswith("# matrix ci-report")
    assert found["benchmarks"]["markdown"] == "# benchmarks\n"


@pytest.mark.slow
def test_the_doctor_runs_in_a_child_and_is_kept_for_a_while(web_client: TestClient) -> None:
    from diagnostics.doctor import PROBES

    first = web_client.get("/v1/diagnose/doctor")
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["report"]["tool"] == "env"
    assert [f["id"] for f in answer["report"]["findings"]] == list(PROBES)
    assert all(
        f["severity"] in ("info", "ok", "warn", "fail") for f in answer["report"]["findings"]
    )
    again = web_client.get("/v1/diagnose/doctor", params={"refresh": "true"}).json()
    assert again["checked_at"] == answer["checked_at"]  # seconds old: still fresh


def test_a_phone_videos_avatar_stands_upright(
    make_web_settings: Make, phone_template: Path, tmp_path: Path
) -> None:
    """A template stored sideways with a display rotation: the avatar has the size and the
    thumbnail the orientation that players (here OpenCV's reader) show."""
    settings = make_web_settings(pipeline={"cache_dir": tmp_path / "own-cache"})
    with TestClient(create_app(settings)) as client:
        _upload(client, phone_template, "portrait.mp4", headers={"X-API-Key": KEYS["alice"]})
        avatar = client.get("/v1/avatars", headers={"X-API-Key": KEYS["alice"]}).json()["items"][0]
    assert (avatar["width"], avatar["height"]) == (480, 360)
    import base64

    jpeg = base64.b64decode(avatar["thumbnail"].split(",", 1)[1])
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None and picture.shape == (96, 128, 3)
    shown = cv2.resize(_first_frame(phone_template), (128, 96), interpolation=cv2.INTER_AREA)
    assert np.abs(picture.astype(int) - shown.astype(int)).mean() < 12
