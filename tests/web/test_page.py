"""The page in a real headless Chromium against a real ``heygem serve``: a user's round
trip (upload -> live progress -> the video plays -> download), cancel, failures with their
reasons, the log analysis with its chart, the key prompt, hostile names shown as text.

Every test ends by reading the browser console: an error there fails it. Screenshots of
each page go to web-artifacts/ (see tests/web/browser.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.support.ui import Select

from tests.helpers import stream_summary
from tests.service.helpers import KEYS
from tests.service.server import Server, running_server
from tests.web.browser import ROOT, Browser, browser_binaries, chromium
from tests.web.conftest import SPEECH_SECONDS, XSS_NAME

pytestmark = pytest.mark.slow
LOGS = ROOT / "tests" / "diagnostics" / "fixtures"
HOSTILE_LINE = "<script>alert('log')</script><img src=x onerror=alert(2)>"


def job_id(browser: Browser) -> str:
    return str(
        browser.wait(lambda: browser.driver.current_url.partition("#job/")[2], what="the job page")
    )


def fact(browser: Browser, section: str, label: str) -> str:
    """The value next to ``label`` in a section's facts list ('' when absent)."""
    script = """
      const section = document.querySelector(`[data-section="${arguments[0]}"]`);
      const term = [...section.querySelectorAll('dt')].find((t) => t.textContent === arguments[1]);
      return term ? term.nextElementSibling.textContent : '';
    """
    return str(browser.js(script, section, label))


def state(browser: Browser) -> str:
    return browser.text("[data-field=state]")


def submit(browser: Browser, audio: Path, video: Path | None = None, **options: str) -> str:
    """Fill the Generate form as a user would and submit it; the new job's id."""
    browser.open("#generate")
    browser.wait(lambda: browser.js("return document.querySelectorAll('.option').length > 1"))
    browser.upload("input[name=audio]", audio)
    if video is not None:
        browser.upload("input[name=video]", video)
    else:  # the most recent avatar
        browser.wait(lambda: browser.js("return document.querySelector('label.avatar') !== null"))
        browser.click("label.avatar:not(.unusable)")
    if options:
        browser.click("#generate-form details > summary")
    for name, value in options.items():
        element = browser.driver.find_element("name", name)
        if element.tag_name == "select":
            Select(element).select_by_value(value)
        else:
            element.send_keys(value)
    browser.click("#submit")
    return job_id(browser)


def no_script_ran(browser: Browser) -> None:
    with pytest.raises(NoAlertPresentException):
        browser.driver.switch_to.alert.text  # noqa: B018 - an alert() would be open here
    assert browser.js("return document.querySelectorAll('img[src=\"x\"], [onerror]').length") == 0
    assert browser.js("return [...document.scripts].every((s) => s.src.includes('/static/'))")


# --- a user's round trip -----------------------------------------------------------------
# The same page on both executors (issue 17): jobs run on a local worker or a Celery worker.
BOTH_EXECUTORS = pytest.mark.parametrize("web_server", ["local", "celery"], indirect=True)


@BOTH_EXECUTORS
def test_generate_watch_play_download(
    browser: Browser,
    web_server: Server,
    web_media: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    browser.open()
    browser.wait(lambda: browser.text("#avatars p") or browser.text("#avatars label"))
    # 0.25 s per batch of 8 frames: long enough to watch the frames count go up.
    job = submit(
        browser, web_media / "speech.wav", web_media / "template.mp4", fault="generate:slow:0.25"
    )
    browser.wait(
        lambda: state(browser) == "running" and " of 50" in fact(browser, "progress", "Frames"),
        timeout=120,
        what="live progress with frames",
    )
    assert fact(browser, "progress", "Phase") == "generating"
    if request.node.callspec.params["web_server"] == "celery":  # it runs on the Celery worker
        worker_log = web_server.data_dir.parent / "machine-0" / "worker.log"
        assert f"heygem.generate[{job}] received" in worker_log.read_text()
    browser.wait(lambda: state(browser) == "succeeded", timeout=120, what="the job to succeed")
    assert fact(browser, "progress", "Frames") == "50 of 50"

    with httpx.Client(base_url=web_server.base, timeout=30) as api:
        status = api.get(f"/v1/generations/{job}").json()
        result = tmp_path / "result.mp4"
        result.write_bytes(api.get(f"/v1/generations/{job}/result").content)
        score = _sync_score(api, job)
    media = stream_summary(result)  # measured by PyAV on the file, not by the page

    # The video element plays the result: metadata, then time moving while it plays.
    browser.wait(lambda: browser.js("return document.querySelector('video').readyState >= 1"))
    duration = float(browser.js("return document.querySelector('video').duration"))
    assert duration == pytest.approx(media["audio_seconds"], abs=0.08)
    assert duration == pytest.approx(SPEECH_SECONDS, abs=0.1)
    browser.js("const v = document.querySelector('video'); v.muted = true; v.play();")
    browser.wait(
        lambda: browser.js("return document.querySelector('video').currentTime > 0.3"),
        what="the video to play",
    )
    assert "?" not in browser.js("return document.querySelector('video').src")  # no key, no query
    assert "/v1/results/" in browser.js("return document.querySelector('video').src")

    # Where the time went: one bar per pipeline stage, sized by its busy seconds.
    widths = browser.js("""return Object.fromEntries(
        [...document.querySelectorAll('rect[data-stage]')]
            .map((r) => [r.dataset.stage, r.width.baseVal.value]))""")
    assert set(widths) == set(status["stage_seconds"]) == {"decode", "load", "generate", "compose"}
    longest = max(status["stage_seconds"], key=status["stage_seconds"].get)
    assert max(widths, key=widths.get) == longest
    assert "CPUExecutionProvider" in fact(browser, "run", "Providers used")
    shown = browser.wait(
        lambda: browser.js(
            "const s = document.querySelector('[data-score]'); return s && s.dataset.score"
        ),
        timeout=120,
        what="the lip-sync score",
    )
    assert float(shown) == pytest.approx(score, abs=1e-6)
    browser.screenshot("job-succeeded")

    # Download: the same bytes as the API's result.
    browser.click("[data-field=download]")
    saved = browser.downloads / f"{job}.mp4"
    browser.wait(
        lambda: saved.is_file() and saved.stat().st_size == result.stat().st_size,
        timeout=30,
        what="the download",
    )
    assert saved.read_bytes() == result.read_bytes()
    assert media["frames"] == status["frames"] == 50

    # The template is now an avatar whose analysis is cached: all 50 frames show a face.
    with av.open(str(web_media / "template.mp4")) as container:
        template_frames = sum(1 for _ in container.decode(video=0))
    browser.open("#generate")
    text = browser.wait_text("label.avatar .avatar-about")
    assert f"face in {template_frames} of {template_frames} frames" in text
    browser.screenshot("generate")


def _sync_score(api: httpx.Client, job: str) -> float:
    from tests.helpers import wait_for

    def measured() -> float | None:
        response = api.get(f"/v1/generations/{job}/sync-score")
        return float(response.json()["score"]) if response.status_code == 200 else None

    return float(wait_for(measured, timeout=120, interval=0.5, what="the sync score"))


@BOTH_EXECUTORS
def test_cancel_from_the_page(browser: Browser, web_media: Path) -> None:
    # 6 s a batch: the job outlasts the cancel on either executor by far.
    submit(browser, web_media / "speech.wav", web_media / "template.mp4", fault="generate:slow:6")
    browser.wait(lambda: fact(browser, "progress", "Phase") == "generating", timeout=120)
    assert re.fullmatch(r"generating: \d+ of 50 \(\d+%\)", fact(browser, "progress", "Step"))
    browser.click("[data-action=cancel]")
    browser.wait(lambda: state(browser) == "cancelled", timeout=60, what="the job to be cancelled")
    assert browser.text("[data-field=reason]") == "Cancelled: cancelled by request"
    assert fact(browser, "diagnosis", "Phase") == "generating"
    assert fact(browser, "diagnosis", "Pipeline step").startswith("generating: ")
    assert fact(browser, "progress", "Step") == ""  # an ended job's step is in its diagnosis
    assert browser.js("return document.querySelector('[data-section=result]').hidden")


# --- failures ------------------------------------------------------------------------------
def test_a_failed_job_shows_its_reason_and_hostile_names_stay_text(
    browser: Browser, web_media: Path
) -> None:
    no_face = submit(browser, web_media / XSS_NAME, web_media / "no-face.mp4")
    browser.wait(lambda: state(browser) == "failed", timeout=120, what="the faceless job to fail")
    assert browser.text("[data-field=reason]") == "No face was found in the template."
    assert "frontal face" in fact(browser, "diagnosis", "What to do")
    assert fact(browser, "diagnosis", "Error type") == "NoFaceFound"
    assert browser.text("[data-field=inputs]") == f"{XSS_NAME} + no-face.mp4"  # as typed
    no_script_ran(browser)
    browser.screenshot("job-failed")

    crashed = submit(
        browser, web_media / "speech.wav", web_media / "template.mp4", fault="generate:crash"
    )
    browser.wait(lambda: state(browser) == "failed", timeout=120, what="the crashing job to fail")
    assert fact(browser, "diagnosis", "Pipeline stage") == "generate"
    assert fact(browser, "diagnosis", "Cause").startswith("stage-raised")

    # The list, filtered to failures: both, each reason linking to its diagnosis.
    browser.open("#jobs")
    Select(browser.driver.find_element("id", "state-filter")).select_by_value("failed")
    rows = f"#jobs-body tr[data-job='{no_face}'], #jobs-body tr[data-job='{crashed}']"
    browser.wait(lambda: browser.js(f'return document.querySelectorAll("{rows}").length') == 2)
    assert browser.count("#jobs-body tr") == browser.count("#jobs-body tr[data-state=failed]")
    row = f"#jobs-body tr[data-job='{no_face}']"
    assert browser.text(f"{row} .reason-link") == "no face was found in the template"
    assert browser.text(f"{row} td.inputs") == f"{XSS_NAME} + no-face.mp4"
    no_script_ran(browser)
    browser.screenshot("jobs")
    browser.click(f"{row} .reason-link")
    browser.wait(
        lambda: browser.text("[data-field=reason]") == "No face was found in the template."
    )
    assert browser.driver.current_url.endswith(f"#job/{no_face}/diagnosis")


# --- diagnose ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real matrix report and benchmark summary, made by their own tools."""
    root = tmp_path_factory.mktemp("reports")
    subprocess.run(
        [sys.executable, "-m", "matrix.report", str(ROOT / "tests/matrix/fixtures/results.jsonl"),
         "-o", str(root / "matrix-results" / "report")],
        check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    (root / "bench-results").mkdir()
    subprocess.run(
        [sys.executable, "-m", "benchmarks.summary", str(ROOT / "benchmarks/baseline.json"),
         "-o", str(root / "bench-results" / "summary.md")],
        check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    return root


def test_diagnose_a_heygem_log_workers_doctor_and_reports(
    web_server: Server, web_media: Path, shared_cache: Path, reports: Path, tmp_path: Path
) -> None:
    browser_binaries()
    lines = (LOGS / "consumer_never_started.log").read_text(encoding="utf-8").splitlines()
    lines.insert(12, "[2025-03-18 10:21:33,700] [trans_dh_service.py[line:321]] [ERROR] "
                     f"[[1742264493] {HOSTILE_LINE}]")  # fmt: skip
    log = tmp_path / "dh.log"
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # Its own server: the reports it shows live in a directory of their own.
    with (
        running_server(
            tmp_path,
            media_root=web_media,
            cache=shared_cache,
            workers=1,
            reports_dir=str(reports),
        ) as server,
        chromium(server.base) as browser,
    ):
        browser.open("#diagnose")
        browser.upload("#log-file", log)
        task = "section.task[data-task='1742264493']"
        browser.wait_text(f"{task} h3")
        legend = browser.texts(f"{task} svg text")
        assert {"sends (10)", "takes (0)", "in queue (max 10)", "queue full"} <= set(legend)
        assert (
            browser.count(f"{task} svg path.sends") == browser.count(f"{task} svg path.takes") == 1
        )
        assert browser.count(f"{task} [data-finding='consumer-never-started'] .fix") == 1
        # This server's processes, the doctor's findings, the reports.
        browser.wait(lambda: browser.count("table.processes tbody tr") >= 2, what="processes")
        assert browser.text("table.workers tbody tr td:nth-child(2)") in ("idle", "busy")
        browser.wait(lambda: browser.count("#doctor-result .finding") > 5, 180, "the doctor")
        assert browser.count("#doctor-result [data-finding='shm']") == 1
        matrix = browser.wait_text("#reports-result .markdown table")
        assert "torch2.4.1-ort1.18.0-gpu" in matrix
        assert "Transcode floor" in browser.text("#reports-result")
        browser.screenshot("diagnose")
        browser.click(f"{task} details.timeline > summary")
        lines_shown = browser.texts(f"{task} td.log-line")
        assert any(HOSTILE_LINE in line for line in lines_shown)
        no_script_ran(browser)
        errors = browser.console_errors()
    assert not errors, errors


# --- the key -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed_server(
    tmp_path_factory: pytest.TempPathFactory, web_media: Path, shared_cache: Path
) -> Iterator[Server]:
    browser_binaries()
    with running_server(
        tmp_path_factory.mktemp("keyed"),
        media_root=web_media,
        cache=shared_cache,
        workers=0,
        api_key=KEYS["ops"],
    ) as server:
        yield server


def test_the_page_asks_for_the_key_and_sends_it_as_a_header(keyed_server: Server) -> None:
    with chromium(keyed_server.base) as browser:
        browser.expected_console.append("401 (Unauthorized)")  # the wrong key, on purpose
        browser.open("#jobs")
        dialog = "dialog#key-dialog"
        browser.wait(lambda: browser.js(f"return document.querySelector('{dialog}').open"))
        assert browser.js("return document.querySelectorAll('#jobs-body tr').length") == 0
        browser.screenshot("key-prompt")
        browser.driver.find_element("id", "key-input").send_keys("not-the-key-0123456789")
        browser.click("#key-form button[type=submit]")
        reason = browser.wait_text("#key-reason")
        assert reason.startswith("That key was not accepted: missing or wrong API key")
        browser.driver.find_element("id", "key-input").send_keys(KEYS["ops"])
        browser.click("#key-form button[type=submit]")
        browser.wait(lambda: browser.text("#jobs-body") == "No jobs.", what="the job list")
        assert not browser.js(f"return document.querySelector('{dialog}').open")
        assert KEYS["ops"] not in browser.driver.current_url
        stored = browser.js("return Object.values(sessionStorage)")
        assert stored == [KEYS["ops"]]  # this tab only
        errors = browser.console_errors()
    assert not errors, errors
    assert KEYS["ops"] not in keyed_server.output()  # nor in the server's log


def test_upload_progress_and_an_api_error_shown_as_its_message(
    browser: Browser, web_media: Path, tmp_path: Path
) -> None:
    """On a slow link the upload is seen moving; a file the server refuses shows why."""
    noise = tmp_path / "noise.wav"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4 * 2**20, np.uint8).tobytes())
    browser.open("#generate")
    browser.wait(lambda: browser.count(".option") > 1, what="the form")
    browser.driver.execute_cdp_cmd("Network.enable", {})
    browser.driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 1_000_000},
    )
    browser.expected_console.append("/v1/uploads - Failed to load resource: the server responded")
    browser.upload("input[name=audio]", noise)
    browser.upload("input[name=video]", web_media / "template.mp4")
    browser.click("#submit")
    script = "return document.querySelector('.upload-progress[data-for=audio] progress').value"
    seen = browser.wait(lambda: 0 < float(browser.js(script)) < 90, what="the upload half way")
    assert seen
    assert " of 4.0 MiB" in browser.text(".upload-progress[data-for=audio] span")
    message = browser.wait_text("#generate-error", timeout=60)
    assert message.startswith("Error: upload 'noise.wav' could not be decoded"), message
    assert "(what to do: convert it" in message
    assert "#job/" not in browser.driver.current_url
    browser.screenshot("generate-refused")
