"""Every endpoint and error of the API, on an app without workers (jobs stay queued)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ServiceSettings
from tests.service.helpers import files


def _error(response: Any, status: int, error_type: str) -> dict[str, Any]:
    """The one error shape of the native API, with a non-empty message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type, error
    assert error["status"] == status and error["message"]
    return dict(error)


def test_health_and_readiness_without_workers(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["ready"] is False and body["checks"]["workers"]["ok"] is False
    assert body["checks"]["disk"]["ok"] and body["checks"]["watchdog"]["ok"]


def test_submit_status_and_list(client: TestClient, speech_wav: Path, template_mp4: Path) -> None:
    ids = []
    for _ in range(3):
        response = client.post(
            "/v1/generations", files=files(speech_wav, template_mp4), data={"preset": "ultrafast"}
        )
        assert response.status_code == 202, response.text
        body = response.json()
        assert response.headers["location"] == f"/v1/generations/{body['id']}"
        assert body["state"] == "queued" and body["progress"] == 0
        assert body["options"] == {"preset": "ultrafast"}
        ids.append(body["id"])
    status = client.get(f"/v1/generations/{ids[2]}").json()
    assert status["queue_position"] == 3 and status["stage"] == "queued"

    page = client.get("/v1/generations", params={"limit": 2}).json()
    assert page["total"] == 3 and page["next_offset"] == 2
    assert [item["id"] for item in page["items"]] == [ids[2], ids[1]]  # newest first
    rest = client.get("/v1/generations", params={"limit": 2, "offset": 2}).json()
    assert [item["id"] for item in rest["items"]] == [ids[0]] and rest["next_offset"] is None
    queued = client.get("/v1/generations", params={"state": "succeeded"}).json()
    assert queued["total"] == 0 and queued["items"] == []


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
    _error(
        client.post(
            "/v1/generations", files=files(speech_wav, template_mp4), data={"preset": "warp-speed"}
        ),
        400,
        "InvalidOption",
    )
    _error(
        client.post(
            "/v1/generations", files=files(speech_wav, template_mp4), data={"batch_size": "0"}
        ),
        400,
        "InvalidOption",
    )
    assert client.get("/v1/generations").json()["total"] == 0
    settings: ServiceSettings = client.app.state.services.settings  # type: ignore[attr-defined]
    assert not any((settings.data_dir / "jobs").iterdir()), "rejected jobs left files behind"
    metrics = client.get("/metrics").text
    assert 'heygem_admission_rejected_total{reason="MediaUnreadable"} 2' in metrics


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
        _error(
            client.post(
                "/v1/generations", data={"audio_path": "speech.wav", "video_path": "template.mp4"}
            ),
            413,
            "InputTooLarge",
        )
    with TestClient(create_app(make_settings(max_audio_seconds=1.0))) as client:
        _error(
            client.post(
                "/v1/generations", data={"audio_path": "speech.wav", "video_path": "template.mp4"}
            ),
            413,
            "InputTooLarge",
        )


def test_queue_full_is_429_with_retry_after(
    make_settings: Callable[..., ServiceSettings], speech_wav: Path, template_mp4: Path
) -> None:
    with TestClient(create_app(make_settings(max_queue=2, retry_after_seconds=7))) as client:
        refs = {"audio_path": "speech.wav", "video_path": "template.mp4"}
        for _ in range(2):
            assert client.post("/v1/generations", data=refs).status_code == 202
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
        assert "heygem_queue_depth 2" in client.get("/metrics").text


def test_cancel_queued_job_and_lookup_errors(client: TestClient) -> None:
    job = client.post(
        "/v1/generations", data={"audio_path": "speech.wav", "video_path": "template.mp4"}
    ).json()
    _error(client.get(f"/v1/generations/{job['id']}/result"), 409, "ResultNotReady")
    cancelled = client.delete(f"/v1/generations/{job['id']}")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled" and cancelled.json()["error"]["message"]
    _error(client.delete(f"/v1/generations/{job['id']}"), 409, "JobConflict")
    _error(client.get(f"/v1/generations/{job['id']}/result"), 409, "ResultNotReady")
    for path in (
        "/v1/generations/" + "a" * 32,
        "/v1/generations/../../etc",
        "/v1/generations/not-an-id/result",
    ):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["error"]["message"]
    _error(client.delete("/v1/generations/" + "b" * 32), 404, "JobNotFound")


def test_framework_errors_use_the_same_shape(client: TestClient) -> None:
    invalid = _error(client.get("/v1/generations", params={"limit": 0}), 422, "RequestInvalid")
    assert invalid["details"][0]["loc"] == ["query", "limit"]
    _error(client.get("/v1/generations", params={"state": "sleeping"}), 422, "RequestInvalid")
    _error(client.get("/no/such/route"), 404, "HttpError")
    _error(client.put("/v1/generations"), 405, "HttpError")


def test_api_key(make_settings: Callable[..., ServiceSettings]) -> None:
    with TestClient(create_app(make_settings(api_key="s3cret"))) as client:
        _error(client.get("/v1/generations"), 401, "Unauthorized")
        _error(client.get("/v1/generations", headers={"X-API-Key": "wrong"}), 401, "Unauthorized")
        assert client.get("/v1/generations", headers={"X-API-Key": "s3cret"}).status_code == 200
        compat = client.get("/easy/query", params={"code": "x"})
        assert compat.status_code == 401 and compat.json()["code"] == 9999
        assert compat.json()["msg"]
        assert client.get("/healthz").status_code == 200  # probes need no key
        assert client.get("/metrics").status_code == 200


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


def test_metrics_exposition(client: TestClient) -> None:
    client.post("/v1/generations", data={"audio_path": "speech.wav", "video_path": "template.mp4"})
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in (
        'heygem_jobs{state="queued"} 1',
        "heygem_queue_depth 1",
        'heygem_jobs_submitted_total{api="v1"} 1',
        "# TYPE heygem_stalls_total counter",
        "# TYPE heygem_stage_seconds histogram",
        "# TYPE heygem_worker_restarts_total counter",
        "# TYPE heygem_cpu_fallbacks_total counter",
        "# TYPE heygem_generation_fps histogram",
    ):
        assert line in text, line


@pytest.mark.parametrize("header", ["bytes=abc", "bytes=", "items=0-1"])
def test_range_header_shapes_are_checked(header: str) -> None:
    from service.errors import RangeNotSatisfiable
    from service.routes.generations import _check_range

    with pytest.raises(RangeNotSatisfiable):
        _check_range(header, 100)
    _check_range("bytes=0-99", 100)
    _check_range("bytes=-10", 100)
    with pytest.raises(RangeNotSatisfiable):
        _check_range("bytes=100-", 100)


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
