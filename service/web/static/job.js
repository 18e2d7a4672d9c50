// One job: live progress (polled), cancel; once it ends, the result playing in the page,
// where the time went, providers and warnings, the lip-sync score, or why it failed.
//
// Polling, not server-sent events: the job store is the one place progress is written
// (whichever executor runs the job), so an SSE endpoint would itself have to poll it, and
// hold a connection and a server thread per watcher to do so. EventSource also cannot send
// the API key header. A 1 s GET of the job's status is one small SQLite read, goes through
// any proxy, survives a server restart, and is the same call every API client makes.

import { ApiError, api, getJson } from "./api.js";
import { timelineChart } from "./charts.js";
import { age, badge, between, clear, every, facts, field, h, seconds, showError } from "./dom.js";

export const template = "job";
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 1000;
const SCORE_POLL_MS = 2000;

export function render(root, [id, anchor]) {
  const stops = [];
  const errorBox = field(root, "error-box");
  let finished = false;
  field(root, "short-id").textContent = id.slice(0, 8);
  root.querySelector("[data-action=cancel]").addEventListener("click", () => cancel(root, id));
  stops.push(every(POLL_MS, async () => {
    let job;
    try {
      job = await api(`/v1/generations/${encodeURIComponent(id)}`);
    } catch (error) {
      showError(errorBox, error);
      return !(error instanceof ApiError && error.status === 404); // gone: stop asking
    }
    showError(errorBox, null);
    showProgress(root, job);
    if (!FINAL.has(job.state)) return true;
    if (!finished) {
      finished = true;
      finish(root, job, stops).catch((error) => showError(errorBox, error));
      if (anchor === "diagnosis") root.querySelector("#diagnosis").scrollIntoView();
    }
    return false;
  }));
  return () => stops.forEach((stop) => stop());
}

function showProgress(root, job) {
  const state = field(root, "state");
  state.textContent = job.state;
  state.className = `badge ${job.state}`;
  const names = job.inputs || {};
  field(root, "inputs").textContent = `${names.audio || "audio"} + ${names.video || "template"}`;
  field(root, "bar").value = job.progress;
  const frames = job.frames_total ? `${job.frames_done ?? 0} of ${job.frames_total}` : null;
  facts(field(root, "facts"), [
    ["Phase", job.phase],
    ["Step", FINAL.has(job.state) ? null : stepText(job)],
    ["Stage", job.stage],
    ["Frames", frames],
    ["Progress", `${job.progress}%`],
    ["Queue position", job.queue_position],
    ["Submitted", age(job.created_at)],
    ["Running for", job.started_at && !job.finished_at ? seconds(between(job.started_at)) : null],
    ["Took", job.finished_at && job.started_at ? seconds(between(job.started_at, job.finished_at)) : null],
    ["Time limit", job.timeout_seconds ? seconds(job.timeout_seconds) : null],
    ["Cancel", job.cancel_requested && !FINAL.has(job.state) ? "requested, stopping…" : null],
  ]);
  root.querySelector("[data-action=cancel]").hidden = FINAL.has(job.state) || job.cancel_requested;
}

// The pipeline step the job is in: a first job on a template spends seconds analysing it
// (or exporting the model) before any frame is written, and this is what moves meanwhile.
function stepText(job) {
  if (!job.step) return null;
  const title = job.step_title || job.step;
  if (!job.step_total) return title;
  const percent = Math.min(100, Math.floor((100 * job.step_done) / job.step_total));
  return `${title}: ${job.step_done} of ${job.step_total} (${percent}%)`;
}

async function cancel(root, id) {
  const button = root.querySelector("[data-action=cancel]");
  button.disabled = true;
  try {
    await api(`/v1/generations/${encodeURIComponent(id)}`, { method: "DELETE" });
  } catch (error) {
    showError(field(root, "error-box"), error);
  } finally {
    button.disabled = false;
  }
}

async function finish(root, job, stops) {
  if (job.error) showDiagnosis(root, job);
  // A timeline once the pipeline ran (a job refused before it started has only its wait).
  if (Object.keys(job.timings).some((step) => step !== "queued" && step !== "total")) {
    const chart = timelineChart(job.timings, job.stage_seconds);
    if (chart) {
      clear(field(root, "timeline"), chart);
      root.querySelector("[data-section=timeline]").hidden = false;
    }
  }
  if (job.state !== "succeeded") return;
  showRun(root, job);
  root.querySelector("[data-section=result]").hidden = false;
  facts(field(root, "result-facts"), [
    ["Length", seconds(job.duration)],
    ["Frames", job.frames !== null ? `${job.frames} at ${job.fps} fps` : null],
  ]);
  await showVideo(root, job);
  stops.push(every(SCORE_POLL_MS, async () => {
    try {
      return await showScore(root, job);
    } catch (error) { // shown once; asking again would measure again
      clear(field(root, "sync"), h("p", { class: "error", text: error.text || error.message }));
      return false;
    }
  }));
}

// The <video> cannot send the key: it plays a short-lived signed link (ranges, so it
// streams and seeks). A link that expired is replaced once, at the same position.
async function showVideo(root, job) {
  const video = field(root, "video");
  const download = field(root, "download");
  const link = async () => (await api(`/v1/generations/${job.id}/result-link`, { method: "POST" })).url;
  const url = await link();
  video.src = url;
  download.href = url;
  download.setAttribute("download", `${job.id}.mp4`);
  let renewed = false;
  video.addEventListener("error", async () => {
    if (renewed) return;
    renewed = true;
    const at = video.currentTime;
    const fresh = await link();
    video.src = fresh;
    download.href = fresh;
    video.currentTime = at;
  });
}

function showRun(root, job) {
  root.querySelector("[data-section=run]").hidden = false;
  const used = job.providers_used.join(", ") || "?";
  const fallback = job.providers_requested.some((p) => p !== "CPUExecutionProvider") &&
    job.providers_used.every((p) => p === "CPUExecutionProvider");
  facts(field(root, "providers"), [
    ["Generator", job.options.generator ? `${job.options.generator} (set for this job)` : "server default"],
    ["Providers requested", job.providers_requested.join(", ") || "?"],
    ["Providers used", fallback ? h("span", { class: "error", text: `${used}: the GPU fell back to CPU` }) : used],
    ["Worker", job.worker],
  ]);
  const list = field(root, "warnings");
  clear(list, job.warnings.length ? job.warnings.map((w) => h("li", { text: w })) : h("li", { class: "muted", text: "none" }));
}

function showDiagnosis(root, job) {
  const error = job.error;
  root.querySelector("[data-section=diagnosis]").hidden = false;
  field(root, "reason").textContent = job.state === "cancelled" ? `Cancelled: ${error.message}` : `${capital(error.cause_description)}.`;
  facts(field(root, "diagnosis"), [
    ["What happened", error.message],
    ["What to do", error.hint],
    ["Cause", `${error.cause} (${error.cause_description})`],
    ["Error type", error.type],
    ["Phase", error.phase],
    ["Pipeline step", stepText(job)],
    ["Pipeline stage", error.stage],
  ]);
}

function capital(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : text;
}

async function showScore(root, job) {
  const { status, data } = await getJson(`/v1/generations/${job.id}/sync-score`);
  const box = field(root, "sync");
  if (status === 202) {
    clear(box, h("p", { class: "muted", text: "Measuring the mouth against the audio on every frame…" }));
    return true;
  }
  const verdict = { ok: "the mouth follows the voice", warn: "the score may be chance", fail: "the mouth does not follow the voice" }[data.verdict] || data.verdict;
  clear(box,
    h("p", { class: "score" }, h("strong", { "data-score": data.score, text: data.score === null ? "no score" : data.score.toFixed(2) }),
      " ", badge(data.verdict, data.verdict), " ", verdict),
    h("p", { class: "muted", text: `Correlation of the mouth's opening with the audio's loudness (1 is perfect; ` +
      `the same against shifted audio gives ${data.control === null ? "?" : data.control.toFixed(2)}, the level of chance).` }),
    (data.report.findings || []).map((f) => h("p", { class: "small", text: `${f.title}${f.fix ? ` (what to do: ${f.fix})` : ""}` })));
  return false;
}
