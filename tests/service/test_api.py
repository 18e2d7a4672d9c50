"""Every endpoint and error of the API, on an app without workers (jobs stay queued), with
the local executor and with the celery one (a real Redis, no worker listening)."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from heygem.config import per_job_fields
from service.app import create_app
from service.deps import Services
from service.jobs import Job
from service.observe import ContextFilter
from service.options import JobOptions
from service.settings import ServiceSettings
from tests.service.helpers import KEYS, files, metric

REFS = {"audio_path": "speech.wav", "video_path": "template.mp4"}


@pytest.fixture(params=["local", "celery"])
def executor(request: pytest.FixtureRequest) -> str:
    """Every API behaviour here holds with either executor (celery: jobs wait in Redis)."""
    return str(request.param)


def _error(response: Any, status: int, error_type: str) -> dict[str, Any]:
    """The one error shape of the native API, with a non-empty message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type, error
    assert error["status"] == status and error["message"] and error["cause"]
    return dict(error)


def _services(client: TestClient) -> Services:
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    return services


def _succeed(client: TestClient, job_id: str, template: Path) -> Job:
    """End a queued job as a worker would: claimed, its MP4 written, reported done."""
    services = _services(client)
    job = services.lifecycle.claim("test-worker")
    assert job is not None and job.id == job_id
    shutil.copy(template, job.output_path)
    services.lifecycle.succeed(job, {"frames": 50, "timings": {"total": 1.0}})
    return services.store.get(job_id)


def test_health_and_readiness_without_workers(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["ready"] is False and body["checks"]["workers"]["ok"] is False
    assert body["checks"]["disk"]["ok"] and body["checks"]["watchdog"]["ok"]
    assert body["checks"]["accepting"]["ok"]


def test_submit_status_and_list(client: TestClient, speech_wav: Path, template_mp4: Path) -> None:
    ids = []
    for _ in range(3):
        response = client.post(
            "/v1/generations", files=files(speech_wav, template_mp4), data={"preset": "ultrafast"}
        )
        assert response.status_code == 202, response.text
        body = response.json()
        assert response.headers["location"] == f"/v1/generations/{body['id']}"
        assert response.headers["x-job-id"] == body["id"]
        assert body["state"] == "queued" and body["progress"] == 0 and body["phase"] == "queued"
        assert body["stage"] is None
        assert body["options"] == {"preset": "ultrafast"}
        assert body["inputs"] == {"audio": speech_wav.name, "video": template_mp4.name}
        ids.append(body["id"])
    status = client.get(f"/v1/generations/{ids[2]}").json()
    assert status["queue_position"] == 3 and status["phase"] == "queued"

    page = client.get("/v1/generations", params={"limit": 2}).json()
    assert page["total"] == 3 and page["next_offset"] == 2
    assert [item["id"] for item in page["items"]] == [ids[2], ids[1]]  # newest first
    rest = client.get("/v1/generations", params={"limit": 2, "offset": 2}).json()
    assert [item["id"] for item in rest["items"]] == [ids[0]] and rest["next_offset"] is None
    queued = client.get("/v1/generations", params={"state": "succeeded"}).json()
    assert queued["total"] == 0 and queued["items"] == []


def test_job_time_limit_is_derived_from_the_audio_length(
    make_settings: Callable[..., ServiceSettings], speech_wav: Path, template_mp4: Path
) -> None:
    settings = make_settings(job_timeout_min=30.0, job_timeout_per_audio_second=4.0)
    with TestClient(create_app(settings)) as client:
        five = client.post("/v1/generations", files=files(speech_wav, template_mp4)).json()
        two = client.post("/v1/generations", data=REFS).json()  # the 2 s speech
    assert five["timeout_seconds"] == pytest.approx(30.0 + 4.0 * 5.0, abs=0.5)
    assert two["timeout_seconds"] == pytest.approx(30.0 + 4.0 * 2.0, abs=0.5)
    with TestClient(create_app(make_settings(job_timeout=12.0))) as client:
        fixed = client.post("/v1/generations", data=REFS).json()
    assert fixed["timeout_seconds"] == 12.0


def test_per_job_options_are_the_per_job_fields_of_generate_options(
    client: TestClient, speech_wav: Path, template_mp4: Path
) -> None:
    assert set(JobOptions.model_fields) == {spec.name for spec in per_job_fields()}
    schema = client.get("/openapi.json").json()["components"]["schemas"]["SubmitForm"]
    assert {spec.name for spec in per_job_fields()} <= set(schema["properties"])
    ok = client.post(
        "/v1/generations",
        files=files(speech_wav, template_mp4),
        data={"backend": "torch", "batch_size": "4", "crf": "30", "generator": "rewrite"},
    )
    assert ok.status_code == 202, ok.text
    assert ok.json()["options"] == {
        "backend": "torch",
        "batch_size": 4,
        "crf": 30,
        "generator": "rewrite",
    }
    # The server has no Wav2Lip checkpoint, and no client can name one.
    wav2lip = _error(
        client.post(
            "/v1/generations", files=files(speech_wav, template_mp4), data={"generator": "wav2lip"}
        ),
        400,
        "InvalidOption",
    )
    assert "checkpoint" in wav2lip["message"] and wav2lip["cause"] == "invalid-option"
    sneaky = client.post(
        "/v1/generations",
        data={**REFS, "generator": "wav2lip", "checkpoint": "/etc/passwd"},
    )
    refused = _error(sneaky, 422, "RequestInvalid")
    assert "'checkpoint' is set by the server" in refused["message"]
    assert refused["cause"] == "invalid-option"


@pytest.mark.parametrize(
    ("field", "says"),
    [
        ("presett", "'presett' is not a field of this form"),  # a misspelt option
        ("cache_dir", "'cache_dir' is set by the server"),  # a server setting
        ("num_workers", "'num_workers' is set by the server"),
    ],
)
def test_a_field_the_server_does_not_take_is_refused_not_ignored(
    client: TestClient, field: str, says: str
) -> None:
    """Dropping it would let the client believe it applied: the error names the field and
    lists what a job does take."""
    response = client.post("/v1/generations", data={**REFS, field: "fast"})
    error = _error(response, 422, "RequestInvalid")
    assert says in error["message"] and "preset" in error["message"]
    assert client.get("/v1/generations").json()["total"] == 0  # nothing was queued


def test_wav2lip_jobs_are_allowed_when_the_server_has_a_checkpoint(
    make_settings: Callable[..., ServiceSettings], tmp_path: Path
) -> None:
    checkpoint = tmp_path / "wav2lip.pth"
    checkpoint.write_bytes(b"only its path matters for admission")
    settings = make_settings(pipeline={"checkpoint": checkpoint})
    with TestClient(create_app(settings)) as client:
        ok = client.post("/v1/generations", data={**REFS, "generator": "wav2lip"})
        assert ok.status_code == 202, ok.text
        assert ok.json()["options"] == {"generator": "wav2lip"}  # the server's checkpoint
        mine = client.post(
            "/v1/generations",
            data={**REFS, "generator": "wav2lip", "checkpoint": "/tmp/mine.pth"},
        )
        assert mine.status_code == 422 and "set by the server" in mine.text  # not taken


def test_uploads_can_be_referenced_by_later_jobs(
    client: TestClient, speech_wav: Path, template_mp4: Path
) -> None:
    audio = client.post("/v1/uploads", files={"file": ("a.wav", speech_wav.read_bytes())})
    assert audio.status_code == 201, audio.text
    assert audio.json()["has_audio"] and not audio.json()["has_video"]
    video = client.post("/v1/uploads", files={"file": ("t.mp4", template_mp4.read_bytes())})
    assert video.json()["has_video"] and video.json()["width"] == 480
    assert client.get(f"/v1/uploads/{video.json()['id']}").json() == video.json()
    job = client.post(
        "/v1/generations",
        data={"audio_upload_id": audio.json()["id"], "video_upload_id": video.json()["id"]},
    )
    assert job.status_code == 202, job.text
    assert job.json()["inputs"] == {"audio": "a.wav", "video": "t.mp4"}
    _error(client.get("/v1/uploads/" + "0" * 32), 404, "UploadNotFound")
    missing = client.post(
        "/v1/generations", data={"audio_upload_id": "f" * 32, "video_upload_id": video.json()["id"]}
    )
    _error(missing, 404, "UploadNotFound")
    _error(
        client.post("/v1/uploads", files={"file": ("x.mp4", b"not a video")}),
        422,
        "MediaUnreadable",
    )


def test_media_root_paths_are_confined(
    client: TestClient, media_root: Path, tmp_path: Path
) -> None:
    ok = client.post(
        "/v1/generations",
        data={"audio_path": "sub/../speech.wav", "video_path": str(media_root / "template.mp4")},
    )
    assert ok.status_code == 202, ok.text
    for audio in ("../speech.wav", "sub/../../etc/passwd", str(tmp_path)):
        refused = client.post(
            "/v1/generations", data={"audio_path": audio, "video_path": "template.mp4"}
        )
        _error(refused, 403, "PathNotAllowed")
    outside = tmp_path / "secret.wav"
    outside.write_bytes((media_root / "speech.wav").read_bytes())
    link = media_root / "link.wav"
    link.symlink_to(outside)
    try:
        escaped = client.post(
            "/v1/generations", data={"audio_path": "link.wav", "video_path": "template.mp4"}
        )
        _error(escaped, 403, "PathNotAllowed")
    finally:
        link.unlink()
    loop = media_root / "loop.wav"
    loop.symlink_to(loop)  # an operator's stray link: resolving it never ends
    try:
        looped = client.post(
            "/v1/generations", data={"audio_path": "loop.wav", "video_path": "template.mp4"}
        )
        _error(looped, 403, "PathNotAllowed")  # was a 500 (RuntimeError)
    finally:
        loop.unlink()
    _error(
        client.post(
            "/v1/generations", data={"audio_path": "nope.wav", "video_path": "template.mp4"}
        ),
        422,
        "InputNotFound",
    )


def test_bad_inputs_are_refused_before_queueing(
    client: TestClient, speech_wav: Path, template_mp4: Path, tmp_path: Path
) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio, whatever the extension says\n" * 50)
    _error(client.post("/v1/generations", files=files(text, template_mp4)), 422, "MediaUnreadable")
    _error(
        client.post("/v1/generations", files=files(template_mp4, template_mp4)),
        422,
        "NoAudioStream",
    )
    _error(
        client.post("/v1/generations", files=files(speech_wav, speech_wav)), 422, "MediaUnreadable"
    )
    missing = _error(
        client.post("/v1/generations", files={"audio": ("a.wav", speech_wav.read_bytes())}),
        400,
        "MissingParameter",
    )
    assert "video" in missing["message"] and missing["hint"]
    both = client.post(
        "/v1/generations", files=files(speech_wav, template_mp4), data={"audio_path": "speech.wav"}
    )
    _error(both, 400, "MissingParameter")
    preset = _error(
        client.post(
            "/v1/generations", files=files(speech_wav, template_mp4), data={"preset": "warp-speed"}
        ),
        422,
        "RequestInvalid",
    )
    assert "preset" in preset["message"] and "veryfast" in preset["message"]
    batch = _error(
        client.post(
            "/v1/generations", files=files(speech_wav, template_mp4), data={"batch_size": "0"}
        ),
        422,
        "RequestInvalid",
    )
    assert "batch size 0 is out of range" in batch["message"]
    assert client.get("/v1/generations").json()["total"] == 0
    settings = _services(client).settings
    assert not any((settings.data_dir / "jobs").iterdir()), "rejected jobs left files behind"
    assert (
        metric(
            client.get("/metrics").text, "heygem_admission_rejected_total", reason="MediaUnreadable"
        )
        == 2
    )


def test_error_messages_name_the_clients_files_never_server_paths(
    client: TestClient, template_mp4: Path, tmp_path: Path
) -> None:
    """Item 3: a 422 used to say "'/…/jobs/<id>/audio.wav' could not be decoded"."""
    garbage = tmp_path / "my-voice.wav"
    garbage.write_bytes(b"RIFF" + b"\x00garbage" * 300)
    settings = _services(client).settings
    answers = [
        client.post("/v1/generations", files=files(garbage, template_mp4)).json()["error"],
        client.post("/v1/uploads", files={"file": ("voice memo.wav", garbage.read_bytes())}).json()[
            "error"
        ],
    ]
    for error, name in zip(answers, ("my-voice.wav", "voice memo.wav"), strict=True):
        text = f"{error['message']} {error['hint']}"
        assert name in text, error
        for secret in (str(settings.data_dir), str(tmp_path), "/jobs/", "/uploads/"):
            assert secret not in text, error


def test_readyz_shows_details_only_to_an_admin(
    make_settings: Callable[..., ServiceSettings],
) -> None:
    settings = make_settings(
        api_keys=f"alice:{KEYS['alice']},ops:{KEYS['ops']}", admin_clients="ops"
    )
    with TestClient(create_app(settings)) as client:
        for headers in ({}, {"X-API-Key": KEYS["alice"]}):
            public = client.get("/readyz", headers=headers).json()
            text = str(public)
            assert str(settings.data_dir) not in text and "MiB free" not in text
            assert public["workers"] == [] and public["checks"]["disk"]["ok"] is True
        admin = client.get("/readyz", headers={"X-API-Key": KEYS["ops"]}).json()
        assert str(settings.data_dir) in admin["checks"]["disk"]["detail"]
        assert "MiB free" in admin["checks"]["disk"]["detail"]


def test_fault_injection_is_refused_unless_enabled(
    make_settings: Callable[..., ServiceSettings], speech_wav: Path, template_mp4: Path
) -> None:
    with TestClient(create_app(make_settings(allow_fault_injection=False))) as client:
        refused = client.post(
            "/v1/generations",
            files=files(speech_wav, template_mp4),
            data={"fault": "generate:hang:5"},
        )
        assert "disabled" in _error(refused, 400, "InvalidOption")["message"]


def test_size_and_duration_limits(
    make_settings: Callable[..., ServiceSettings], speech_wav: Path, template_mp4: Path
) -> None:
    size = speech_wav.stat().st_size
    settings = make_settings(max_upload_bytes=size - 1, max_video_seconds=1.0)
    with TestClient(create_app(settings)) as client:
        # One file over the per-file limit (the request itself is under the body limit).
        _error(
            client.post("/v1/generations", files=files(speech_wav, template_mp4)),
            413,
            "UploadTooLarge",
        )
        # A body far over the limit is refused from its Content-Length, before it is read.
        huge = {"audio": ("a.wav", b"\0" * (3 * size + 2**20)), "video": ("v.mp4", b"\0")}
        _error(client.post("/v1/generations", files=huge), 413, "UploadTooLarge")
        # Media longer than allowed (the 2 s template against a 1 s limit).
        _error(client.post("/v1/generations", data=REFS), 413, "InputTooLarge")
    settings = make_settings(pipeline={"max_audio_seconds": 1.0})
    with TestClient(create_app(settings)) as client:
        _error(client.post("/v1/generations", data=REFS), 413, "InputTooLarge")


def test_queue_full_is_429_with_retry_after(
    make_settings: Callable[..., ServiceSettings], speech_wav: Path, template_mp4: Path
) -> None:
    with TestClient(create_app(make_settings(max_queue=2, retry_after_seconds=7))) as client:
        for _ in range(2):
            assert client.post("/v1/generations", data=REFS).status_code == 202
        full = client.post("/v1/generations", files=files(speech_wav, template_mp4))
        _error(full, 429, "QueueFull")
        assert full.headers["retry-after"] == "7"
        busy = client.post(
            "/easy/submit",
            json={"audio_url": "speech.wav", "video_url": "template.mp4", "code": "c1"},
        )
        assert busy.status_code == 200 and busy.headers["retry-after"] == "7"
        assert busy.json()["code"] == 10001 and busy.json()["success"] is False
        assert busy.json()["msg"]
        assert metric(client.get("/metrics").text, "heygem_queue_depth") == 2


def test_one_client_cannot_fill_the_queue_nor_see_others_jobs(
    make_settings: Callable[..., ServiceSettings],
) -> None:
    """Item 13: keys per client, a per-client cap, and each client sees only its jobs."""
    settings = make_settings(
        api_keys={"alice": KEYS["alice"], "bob": KEYS["bob"], "ops": KEYS["ops"]},
        admin_clients=["ops"],
        max_queue=4,
        retry_after_seconds=5,
    )
    alice, bob, ops = ({"X-API-Key": KEYS[n]} for n in ("alice", "bob", "ops"))
    with TestClient(create_app(settings)) as client:
        mine = [client.post("/v1/generations", data=REFS, headers=alice) for _ in range(2)]
        assert [r.status_code for r in mine] == [202, 202]
        capped = client.post("/v1/generations", data=REFS, headers=alice)
        assert "you have 2 jobs waiting" in _error(capped, 429, "QueueFull")["message"]
        assert capped.headers["retry-after"] == "5"
        theirs = client.post("/v1/generations", data=REFS, headers=bob)
        assert theirs.status_code == 202, theirs.text  # the queue still has room for bob
        bob_id = theirs.json()["id"]

        listed = client.get("/v1/generations", headers=alice).json()
        assert listed["total"] == 2 and bob_id not in {j["id"] for j in listed["items"]}
        assert all(j["client"] is None and j["worker"] is None for j in listed["items"])
        for path in (f"/v1/generations/{bob_id}", f"/v1/generations/{bob_id}/result"):
            _error(client.get(path, headers=alice), 404, "JobNotFound")
        _error(client.delete(f"/v1/generations/{bob_id}", headers=alice), 404, "JobNotFound")
        assert client.get(f"/v1/generations/{bob_id}", headers=bob).json()["state"] == "queued"
        everyone = client.get("/v1/generations", headers=ops).json()
        assert everyone["total"] == 3
        assert {j["client"] for j in everyone["items"]} == {"alice", "bob"}
        text = client.get("/metrics").text
        assert metric(text, "heygem_queued_jobs_by_client", client="alice") == 2


def test_api_keys_are_checked(make_settings: Callable[..., ServiceSettings]) -> None:
    with TestClient(create_app(make_settings(api_key=KEYS["ops"]))) as client:
        _error(client.get("/v1/generations"), 401, "Unauthorized")
        wrong = {"X-API-Key": KEYS["ops"][:-1] + "x"}
        _error(client.get("/v1/generations", headers=wrong), 401, "Unauthorized")
        _error(client.get("/v1/generations", headers={"X-API-Key": ""}), 401, "Unauthorized")
        assert client.get("/v1/generations", headers={"X-API-Key": KEYS["ops"]}).status_code == 200
        compat = client.get("/easy/query", params={"code": "x"})
        assert compat.status_code == 401 and compat.json()["code"] == 9999
        assert compat.json()["msg"]
        assert client.get("/healthz").status_code == 200  # probes need no key
        assert client.get("/metrics").status_code == 200


def test_cancel_a_queued_job_delete_a_finished_one(client: TestClient, template_mp4: Path) -> None:
    job = client.post("/v1/generations", data=REFS).json()
    _error(client.get(f"/v1/generations/{job['id']}/result"), 409, "ResultNotReady")
    cancelled = client.delete(f"/v1/generations/{job['id']}")
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert body["state"] == "cancelled" and body["error"]["message"] == "cancelled by request"
    assert body["error"]["cause"] == "cancelled" and body["error"]["phase"] == "queued"
    _error(client.get(f"/v1/generations/{job['id']}/result"), 409, "ResultNotReady")
    # DELETE of a finished job removes it, files included.
    assert client.delete(f"/v1/generations/{job['id']}").status_code == 204
    _error(client.get(f"/v1/generations/{job['id']}"), 404, "JobNotFound")
    done = client.post("/v1/generations", data=REFS).json()
    finished = _succeed(client, done["id"], template_mp4)
    directory = Path(finished.output_path).parent
    assert directory.is_dir()
    assert client.delete(f"/v1/generations/{done['id']}").status_code == 204
    assert not directory.exists()
    _error(client.delete(f"/v1/generations/{done['id']}"), 404, "JobNotFound")
    for path in (
        "/v1/generations/" + "a" * 32,
        "/v1/generations/../../etc",
        "/v1/generations/not-an-id/result",
    ):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["error"]["message"]


def test_result_download_and_range_headers(client: TestClient, template_mp4: Path) -> None:
    """Item 7: a Range header that does not parse is ignored (RFC 9110): 200, whole file."""
    job = client.post("/v1/generations", data=REFS).json()
    _succeed(client, job["id"], template_mp4)
    url = f"/v1/generations/{job['id']}/result"
    whole = template_mp4.read_bytes()
    size = len(whole)
    full = client.get(url)
    assert full.status_code == 200 and full.content == whole
    assert full.headers["x-job-id"] == job["id"]
    for header in ("bytes=abc", "bytes=", "items=0-1", "bytes=5-3", "bytes=1-2,x"):
        ignored = client.get(url, headers={"Range": header})
        assert ignored.status_code == 200, header
        assert ignored.content == whole, header
    part = client.get(url, headers={"Range": "bytes=0-1023"})
    assert part.status_code == 206 and part.content == whole[:1024]
    assert part.headers["content-range"] == f"bytes 0-1023/{size}"
    tail = client.get(url, headers={"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == whole[-100:]
    beyond = client.get(url, headers={"Range": f"bytes={size}-"})
    _error(beyond, 416, "RangeNotSatisfiable")
    assert beyond.headers["content-range"] == f"bytes */{size}"


def test_framework_errors_use_the_same_shape(client: TestClient) -> None:
    invalid = _error(client.get("/v1/generations", params={"limit": 0}), 422, "RequestInvalid")
    assert invalid["details"][0]["loc"] == ["query", "limit"]
    _error(client.get("/v1/generations", params={"state": "sleeping"}), 422, "RequestInvalid")
    _error(client.get("/no/such/route"), 404, "HttpError")
    _error(client.put("/v1/generations"), 405, "HttpError")


def test_compat_submit_and_query(client: TestClient) -> None:
    def submit(**body: Any) -> dict[str, Any]:
        response = client.post("/easy/submit", json=body)
        assert response.status_code == 200
        data: dict[str, Any] = response.json()
        assert data["success"] is (data["code"] == 10000) and (data["success"] or data["msg"])
        return data

    ok = submit(
        audio_url="speech.wav",
        video_url="/template.mp4",
        code="task-1",
        watermark_switch=0,
        digital_auth=0,
        chaofen=1,
        pn=1,
    )
    assert ok["code"] == 10000 and ok["data"]["code"] == "task-1"
    query = client.get("/easy/query", params={"code": "task-1"}).json()
    assert query["code"] == 10000 and query["success"] is True
    assert query["data"] == {
        "code": "task-1",
        "status": 1,
        "progress": 0,
        "result": "",
        "msg": "queued (position 1)",
    }
    native = client.get(f"/v1/generations/{ok['data']['job_id']}").json()
    assert native["code"] == "task-1"
    assert any("super-resolution" in w for w in native["warnings"])

    assert submit(audio_url="speech.wav", code="task-2")["code"] == 10002
    missing = submit(video_url="template.mp4")
    assert missing["code"] == 10002 and "audio_url" in missing["msg"]
    assert submit(audio_url="speech.wav", video_url="template.mp4", code="task-1")["code"] == (
        10002
    )  # codes are unique
    assert submit(audio_url="speech.wav", video_url="template.mp4", code="../x")["code"] == 10002
    traversal = submit(audio_url="../../etc/passwd", video_url="template.mp4", code="t3")
    assert traversal["code"] == 10002 and "outside the media root" in traversal["msg"]
    not_media = submit(audio_url="template.mp4", video_url="template.mp4", code="t4")
    assert not_media["code"] == 10002
    url = submit(audio_url="http://127.0.0.1:9/a.wav", video_url="template.mp4", code="t5")
    assert url["code"] == 10002 and "allow-list" in url["msg"]
    bad_json = client.post(
        "/easy/submit", content=b"{", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 200 and bad_json.json()["code"] == 10002

    unknown = client.get("/easy/query", params={"code": "nope"}).json()
    assert unknown["code"] == 10004 and unknown["msg"] and unknown["success"] is False
    no_code = client.get("/easy/query").json()
    assert no_code["code"] == 10002 and "code" in no_code["msg"]


def test_a_preparing_job_shows_its_pipeline_step(client: TestClient) -> None:
    """The native view names the step with its title and counts (documented in the
    schema); the compat API's free-text msg says it too, its progress stays a number."""
    body = {"audio_url": "speech.wav", "video_url": "template.mp4", "code": "steps-1"}
    job_id = client.post("/easy/submit", json=body).json()["data"]["job_id"]
    lifecycle = _services(client).lifecycle
    assert lifecycle.claim("test-worker") is not None
    lifecycle.progress(job_id, "preparing", 5, step="template", step_done=120, step_total=250)
    native = client.get(f"/v1/generations/{job_id}").json()
    assert {k: native[k] for k in ("phase", "step", "step_title", "step_done", "step_total")} == {
        "phase": "preparing",
        "step": "template",
        "step_title": "analysing the template (once per template)",
        "step_done": 120,
        "step_total": 250,
    }
    query = client.get("/easy/query", params={"code": "steps-1"}).json()["data"]
    assert query["progress"] == 5 and query["status"] == 1
    assert query["msg"] == "preparing: analysing the template (once per template), 120 of 250"
    lifecycle.progress(job_id, "preparing", 5, step="export_onnx", step_done=0)
    native = client.get(f"/v1/generations/{job_id}").json()
    assert native["step_title"] == "exporting the generator to ONNX (once per model)"
    assert native["step_total"] is None
    query = client.get("/easy/query", params={"code": "steps-1"}).json()["data"]
    assert query["msg"] == "preparing: exporting the generator to ONNX (once per model)"

    schema = client.get("/openapi.json").json()["components"]["schemas"]["GenerationStatus"]
    for field in ("step", "step_title", "step_done", "step_total"):
        assert schema["properties"][field]["description"], field
    assert "template" in schema["properties"]["step"]["description"]


def test_draining_service_refuses_new_work_with_503(client: TestClient) -> None:
    """Item 9 (the API side; tests/service/test_server.py sends a real SIGTERM)."""
    _services(client).lifecycle.draining.set()
    refused = client.post("/v1/generations", data=REFS)
    error = _error(refused, 503, "ServiceUnavailable")
    assert "shutting down" in error["message"] and int(refused.headers["retry-after"]) >= 1
    upload = client.post("/v1/uploads", files={"file": ("a.wav", b"x")})
    _error(upload, 503, "ServiceUnavailable")
    compat = client.post(
        "/easy/submit", json={"audio_url": "speech.wav", "video_url": "template.mp4", "code": "d"}
    )
    assert compat.json()["code"] == 10001 and "retry-after" in compat.headers
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["accepting"]["ok"] is False
    assert client.get("/v1/generations").status_code == 200  # reads still work


def test_metrics_exposition(client: TestClient) -> None:
    client.post("/v1/generations", data=REFS)
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert metric(text, "heygem_jobs", state="queued") == 1
    assert metric(text, "heygem_queue_depth") == 1
    assert metric(text, "heygem_jobs_submitted_total", api="v1") == 1
    for line in (
        "# TYPE heygem_stalls_total counter",
        "# TYPE heygem_stage_seconds histogram",
        "# TYPE heygem_worker_restarts_total counter",
        "# TYPE heygem_cpu_fallbacks_total counter",
        "# TYPE heygem_generation_fps histogram",
        "# TYPE heygem_storage_bytes gauge",
        "# TYPE heygem_worker_rss_bytes gauge",
    ):
        assert line in text, line


def test_request_ids_job_ids_and_http_metrics(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 12: ids echoed in headers and in the log; requests counted by route."""
    caplog.handler.addFilter(ContextFilter())  # as configure_service_logging's handler has
    with caplog.at_level(logging.INFO):
        submitted = client.post("/v1/generations", data=REFS, headers={"X-Request-ID": "req-42"})
    job_id = submitted.json()["id"]
    assert submitted.headers["x-request-id"] == "req-42"
    assert submitted.headers["x-job-id"] == job_id
    access = [r for r in caplog.records if r.name == "service.access"]
    assert any(
        getattr(r, "request_id", None) == "req-42" and getattr(r, "job_id", None) == job_id
        for r in access
    ), [(r.getMessage(), r.__dict__.get("request_id")) for r in access]
    queued = [
        r for r in caplog.records if "queued" in r.getMessage() and r.name == "service.admission"
    ]
    assert queued and getattr(queued[0], "request_id", None) == "req-42"
    generated = client.get(f"/v1/generations/{job_id}", headers={"X-Request-ID": "bad id!"})
    assert generated.headers["x-request-id"] not in ("bad id!", "")
    assert generated.headers["x-job-id"] == job_id
    for _ in range(2):
        client.get("/v1/generations/" + "e" * 32)
    text = client.get("/metrics").text
    route = "/v1/generations/{job_id}"
    assert metric(text, "heygem_http_requests_total", method="GET", route=route, status="404") == 2
    assert (
        metric(
            text, "heygem_http_requests_total", method="POST", route="/v1/generations", status="202"
        )
        == 1
    )
    assert metric(text, "heygem_http_request_seconds_count", method="GET", route=route) == 3


def test_chunked_body_over_the_limit_is_cut_off(
    make_settings: Callable[..., ServiceSettings],
) -> None:
    def body() -> Any:  # no Content-Length: the limit is enforced while reading
        yield (
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n"
        )
        for _ in range(40):
            yield b"\0" * 65536
        yield b"\r\n--xyz--\r\n"

    with TestClient(create_app(make_settings(max_upload_bytes=1000))) as client:
        response = client.post(
            "/v1/uploads",
            content=body(),
            headers={"content-type": "multipart/form-data; boundary=xyz"},
        )
        assert response.request.headers["transfer-encoding"] == "chunked"
        _error(response, 413, "UploadTooLarge")


def test_retention_expires_finished_jobs_unused_uploads_and_old_cache_entries(
    make_settings: Callable[..., ServiceSettings],
    speech_wav: Path,
    template_mp4: Path,
    tmp_path: Path,
) -> None:
    """Item 8: storage used to grow forever (uploads, results, rows, template cache)."""
    cache = tmp_path / "cache"
    old = time.time() - 7200
    for n in range(3):  # three template cache entries of 10 kB, last used two hours ago
        entry = cache / "templates" / f"entry-{n}"
        entry.mkdir(parents=True)
        (entry / "crops.npy").write_bytes(b"\0" * 10_000)
        os.utime(entry, (old + n, old + n))
    settings = make_settings(
        job_ttl=3600.0,
        upload_ttl=3600.0,
        cache_max_bytes=15_000,
        cache_keep_recent=600.0,
        pipeline={"cache_dir": cache},
    )
    with TestClient(create_app(settings)) as client:
        unused = client.post("/v1/uploads", files={"file": ("a.wav", speech_wav.read_bytes())})
        used = client.post("/v1/uploads", files={"file": ("t.mp4", template_mp4.read_bytes())})
        done = client.post("/v1/generations", data=REFS).json()
        finished = _succeed(client, done["id"], template_mp4)
        waiting = client.post(
            "/v1/generations",
            data={"audio_path": "speech.wav", "video_upload_id": used.json()["id"]},
        ).json()
        retention = client.app.state.retention  # type: ignore[attr-defined]
        report = retention.sweep(
            now=time.time() + 2 * 3600
        )  # (the start-up sweep trimmed the cache)
        assert (report.jobs, report.uploads) == (1, 1)
        _error(client.get(f"/v1/generations/{done['id']}"), 404, "JobNotFound")
        assert not Path(finished.output_path).parent.exists()
        assert client.get(f"/v1/generations/{waiting['id']}").json()["state"] == "queued"
        _error(client.get(f"/v1/uploads/{unused.json()['id']}"), 404, "UploadNotFound")
        assert client.get(f"/v1/uploads/{used.json()['id']}").status_code == 200
        assert sorted(p.name for p in (cache / "templates").iterdir()) == ["entry-2"]
        text = client.get("/metrics").text
        assert metric(text, "heygem_retention_removed_total", kind="job") == 1
        assert metric(text, "heygem_retention_removed_total", kind="upload") == 1
        assert metric(text, "heygem_retention_removed_total", kind="cache_entry") == 2
        assert metric(text, "heygem_storage_bytes", area="cache") == 10_000
        uploads = metric(text, "heygem_storage_bytes", area="uploads")
        assert uploads == template_mp4.stat().st_size
        assert (metric(text, "heygem_storage_bytes", area="database") or 0) > 0


def test_a_playlist_naming_a_server_file_is_refused_not_read(
    client: TestClient, template_mp4: Path, tmp_path: Path
) -> None:
    """An HLS playlist's segment was read as the job's audio: any local media file."""
    from tests.heygem.media.test_probe import playlist_naming, write_secret_ts

    (tmp_path / "outside").mkdir()
    secret = write_secret_ts(tmp_path / "outside" / "secret.ts")
    playlist = playlist_naming(secret, tmp_path / "speech.m3u8").read_bytes()
    upload = client.post("/v1/uploads", files={"file": ("speech.m3u8", playlist)})
    error = _error(upload, 422, "MediaUnreadable")
    assert "not a media file" in error["message"] and str(tmp_path) not in error["message"]
    job = client.post(
        "/v1/generations",
        files={"audio": ("speech.m3u8", playlist), "video": ("t.mp4", template_mp4.read_bytes())},
    )
    _error(job, 422, "MediaUnreadable")


def test_a_published_compat_result_is_its_clients_alone_and_goes_with_the_job(
    make_settings: Callable[..., ServiceSettings], media_root: Path
) -> None:
    """HeyGem clients find results as <media root>/<code>-r.mp4: another client could use
    one as input, and deleting the job left the copy there for good."""
    settings = make_settings(
        api_keys={"alice": KEYS["alice"], "bob": KEYS["bob"], "ops": KEYS["ops"]},
        admin_clients=["ops"],
        publish_compat_results=True,
    )
    alice, bob = ({"X-API-Key": KEYS[n]} for n in ("alice", "bob"))
    code = f"alice-{uuid.uuid4().hex[:8]}"
    with TestClient(create_app(settings)) as client:
        body = {"audio_url": "speech.wav", "video_url": "template.mp4", "code": code}
        assert client.post("/easy/submit", json=body, headers=alice).json()["code"] == 10000
        services = _services(client)
        job = services.lifecycle.claim("test-worker")  # a worker runs it and succeeds
        assert job is not None and job.code == code
        Path(job.output_path).write_bytes((media_root / "template.mp4").read_bytes())
        services.lifecycle.succeed(job, {"frames": 1})
        published = media_root / f"{code}-r.mp4"
        assert published.is_file()

        steal = {"audio_url": "speech.wav", "video_url": published.name, "code": "bob-1"}
        refused = client.post("/easy/submit", json=steal, headers=bob).json()
        assert refused["code"] != 10000 and "another client's result" in refused["msg"]
        native = client.post(
            "/v1/generations",
            data={"audio_path": "speech.wav", "video_path": published.name},
            headers=bob,
        )
        _error(native, 403, "PathNotAllowed")
        own = {"audio_url": "speech.wav", "video_url": published.name, "code": f"{code}-2"}
        assert client.post("/easy/submit", json=own, headers=alice).json()["code"] == 10000

        assert client.delete(f"/v1/generations/{job.id}", headers=alice).status_code == 204
        assert not published.exists()
