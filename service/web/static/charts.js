// Two small charts drawn as inline SVG (no library, nothing fetched): where a job's time
// went, and a HeyGem task's producer sends against its consumer's takes.

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, text = null) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

function svg(width, height, label) {
  return s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": label });
}

function tooltip(node, text) {
  node.append(s("title", {}, text));
  return node;
}

// Round tick spacing (1, 2 or 5 x 10^n) giving about `count` ticks up to `max`.
function ticks(max, count = 6) {
  if (!(max > 0)) return [0];
  const raw = max / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((v) => v >= raw);
  const out = [];
  for (let v = 0; v <= max + step * 1e-9; v += step) out.push(Number(v.toFixed(10)));
  return out;
}

function fmt(v) {
  if (v === 0 || Number.isInteger(v)) return String(v);
  return v >= 10 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toFixed(2);
}

function xAxis(root, x, max, y, unit) {
  root.append(s("line", { x1: x(0), x2: x(max), y1: y, y2: y, class: "axis" }));
  for (const t of ticks(max)) {
    root.append(s("line", { x1: x(t), x2: x(t), y1: y, y2: y + 4, class: "axis" }));
    root.append(s("text", { x: x(t), y: y + 16, class: "tick", "text-anchor": "middle" }, `${fmt(t)}${unit}`));
  }
}

// --- where the time went -----------------------------------------------------------------
// The job's steps ran one after another; the four pipeline stages then ran at the same time
// inside "stream" (frames flow through them), so each gets a bar of its busy time there.
const STEPS = [
  ["queued", "waiting for a worker"],
  ["check_inputs", "input checks"],
  ["load_model", "model"],
  ["audio_features", "audio features"],
  ["face_track", "face analysis"],
  ["face_features", "face encoding (Wav2Lip)"],
  ["stream", "decode, generate, compose, encode"],
];
const STAGES = [
  ["decode", "decode the template"],
  ["load", "prepare batches"],
  ["generate", "generate mouths"],
  ["compose", "paste back and encode"],
];

export function timelineChart(timings, stageSeconds) {
  const known = new Set(STEPS.map(([k]) => k));
  const steps = [
    ...STEPS.filter(([k]) => timings[k] !== undefined),
    ...Object.keys(timings)
      .filter((k) => !known.has(k) && k !== "total")
      .map((k) => [k, k.replaceAll("_", " ")]),
  ].map(([key, label]) => ({ key, label, seconds: timings[key] }));
  const total = steps.reduce((sum, step) => sum + step.seconds, 0);
  if (!(total > 0)) return null;
  const stages = STAGES.filter(([k]) => stageSeconds[k] !== undefined).map(([key, label]) => ({
    key, label, seconds: stageSeconds[key],
  }));
  const width = 760;
  const left = 170;
  const plot = width - left - 56; // room for the seconds written after a bar
  const rowH = 26;
  const stageH = 18;
  const top = 8;
  const stageTop = top + rowH + 18;
  const axisY = stageTop + stages.length * (stageH + 6) + 4;
  const legendY = axisY + 34;
  const height = legendY + Math.ceil(steps.length / 3) * 20 + 4;
  const x = (v) => left + (v / total) * plot;
  const root = svg(width, height, `timeline: ${fmt(total)} s from submission to result`);

  root.append(s("text", { x: left - 8, y: top + rowH / 2 + 4, class: "label", "text-anchor": "end" }, "job steps"));
  let at = 0;
  let streamStart = null;
  steps.forEach((step, i) => {
    if (step.key === "stream") streamStart = at;
    const w = Math.max(1, x(at + step.seconds) - x(at));
    const rect = s("rect", { x: x(at), y: top, width: w, height: rowH, class: `step c${i % 8}` });
    root.append(tooltip(rect, `${step.label}: ${fmt(step.seconds)} s`));
    if (w > 56) {
      root.append(s("text", { x: x(at) + 4, y: top + rowH / 2 + 4, class: "in-bar" }, `${fmt(step.seconds)} s`));
    }
    at += step.seconds;
  });

  if (streamStart !== null && stages.length) {
    const streamEnd = streamStart + timings.stream;
    const band = s("rect", {
      x: x(streamStart), y: stageTop - 4, width: Math.max(1, x(streamEnd) - x(streamStart)),
      height: stages.length * (stageH + 6) + 2, class: "band",
    });
    root.append(tooltip(band, `streaming: ${fmt(timings.stream)} s wall time`));
    stages.forEach((stage, i) => {
      const y = stageTop + i * (stageH + 6);
      root.append(s("text", { x: left - 8, y: y + stageH / 2 + 4, class: "label", "text-anchor": "end" }, `${stage.key} (busy)`));
      const w = Math.max(1, x(streamStart + stage.seconds) - x(streamStart));
      const bar = s("rect", { x: x(streamStart), y, width: w, height: stageH, class: `stage s${i}`, "data-stage": stage.key });
      root.append(tooltip(bar, `${stage.label}: busy ${fmt(stage.seconds)} s`));
      root.append(s("text", { x: x(streamStart) + w + 4, y: y + stageH / 2 + 4, class: "tick" }, `${fmt(stage.seconds)} s`));
    });
  }
  xAxis(root, x, total, axisY, " s");

  steps.forEach((step, i) => {
    const lx = 10 + (i % 3) * 250;
    const ly = legendY + Math.floor(i / 3) * 20;
    root.append(s("rect", { x: lx, y: ly - 10, width: 12, height: 12, class: `step c${i % 8}` }));
    root.append(s("text", { x: lx + 18, y: ly, class: "tick" }, `${step.label} ${fmt(step.seconds)} s`));
  });
  return root;
}

// --- sends vs takes ----------------------------------------------------------------------
// HeyGem's producer puts a batch on a queue of 10 and logs a send; the consumer logs a take
// per batch it gets. The gap between the two cumulative counts is what waits in the queue:
// when the consumer stops, the gap widens to 10 and the producer's sends stop too.
const FAILURES = new Set(["queue_full", "producer_error", "consumer_failed", "writer_failed", "task_failed", "stall", "crash"]);

export function sendsTakesChart(task, timed) {
  const events = task.events || [];
  const wanted = events.filter((e) => e.kind === "send" || e.kind === "take");
  if (!wanted.length) return null;
  const t0 = Date.parse(events[0].time);
  const pos = (e) => (timed ? (Date.parse(e.time) - t0) / 1000 : e.line);
  const origin = timed ? 0 : events[0].line;
  const failures = events.filter((e) => FAILURES.has(e.kind));
  const last = Math.max(...[...wanted, ...failures].map(pos));
  const xMax = Math.max(last - origin, 1);

  let sends = 0;
  let takes = 0;
  let deepest = 0;
  const sendPts = [[0, 0]];
  const takePts = [[0, 0]];
  for (const e of wanted) {
    const xv = pos(e) - origin;
    sendPts.push([xv, sends]);
    takePts.push([xv, takes]);
    if (e.kind === "send") sends++;
    else takes++;
    sendPts.push([xv, sends]);
    takePts.push([xv, takes]);
    deepest = Math.max(deepest, sends - takes);
  }
  sendPts.push([xMax, sends]);
  takePts.push([xMax, takes]);

  const width = 760;
  const height = 270;
  const left = 50;
  const right = 20;
  const top = 34; // the legend's row
  const bottom = 40;
  const yMax = Math.max(sends, takes, 1);
  const x = (v) => left + (v / xMax) * (width - left - right);
  const y = (v) => height - bottom - (v / yMax) * (height - top - bottom);
  const path = (pts) => pts.map(([a, b], i) => `${i ? "L" : "M"}${x(a).toFixed(1)},${y(b).toFixed(1)}`).join(" ");
  const root = svg(width, height, `task ${task.label}: ${sends} sends and ${takes} takes`);
  root.classList.add("sends-takes");

  for (const t of ticks(yMax, 5).filter((v) => Number.isInteger(v))) {
    root.append(s("line", { x1: left, x2: width - right, y1: y(t), y2: y(t), class: "grid" }));
    root.append(s("text", { x: left - 6, y: y(t) + 4, class: "tick", "text-anchor": "end" }, fmt(t)));
  }
  const gap = [...sendPts, ...[...takePts].reverse()].map(([a, b]) => `${x(a).toFixed(1)},${y(b).toFixed(1)}`).join(" ");
  root.append(tooltip(s("polygon", { points: gap, class: "queued" }), `in the queue: at most ${deepest} batches`));
  root.append(s("path", { d: path(sendPts), class: "sends" }));
  root.append(s("path", { d: path(takePts), class: "takes" }));
  for (const e of failures) {
    const fx = x(pos(e) - origin);
    const nearEnd = fx > width - right - 90; // label to the left of a line at the right edge
    root.append(tooltip(s("line", { x1: fx, x2: fx, y1: top, y2: height - bottom, class: "failure" }), e.detail));
    root.append(s("text", { x: nearEnd ? fx - 4 : fx + 4, y: top + 12, class: "failure-label",
      "text-anchor": nearEnd ? "end" : "start" }, e.kind.replaceAll("_", " ")));
  }
  xAxis(root, x, xMax, height - bottom, timed ? " s" : "");
  root.append(s("text", { x: (left + width - right) / 2, y: height - 4, class: "tick", "text-anchor": "middle" },
    timed ? "seconds since the task's first line" : "log line (no timestamps in this log)"));
  const legend = [["sends", `sends (${sends})`], ["takes", `takes (${takes})`], ["queued", `in queue (max ${deepest})`]];
  legend.forEach(([kind, text], i) => {
    const lx = left + i * 150;
    root.append(s("rect", { x: lx, y: 8, width: 12, height: 8, class: `key ${kind}` }));
    root.append(s("text", { x: lx + 18, y: 16, class: "tick" }, text));
  });
  return root;
}
