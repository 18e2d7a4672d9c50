// Diagnose: a HeyGem dh.log analysis with a sends-vs-takes chart per task, this server's
// worker processes (refreshed), the environment doctor, and the latest matrix and benchmark
// reports. Every report has the one shape: findings (severity, title, evidence, fix).

import { api, upload } from "./api.js";
import { sendsTakesChart } from "./charts.js";
import { badge, bytes, clear, every, h, seconds } from "./dom.js";
import { markdown } from "./markdown.js";

export const template = "diagnose";
const PROCESS_POLL_MS = 5000;
const ORDER = { fail: 0, warn: 1, ok: 2, info: 3 };
const EVENT_ROWS = 200;

export function render(root) {
  const input = root.querySelector("#log-file");
  input.addEventListener("change", () => {
    if (input.files[0]) analyseLog(root, input.files[0]);
  });
  const doctorButton = root.querySelector("#doctor-run");
  doctorButton.addEventListener("click", () => loadDoctor(root, true));
  loadDoctor(root, false);
  loadReports(root);
  const stop = every(PROCESS_POLL_MS, () => loadProcesses(root), (error) => failed(root.querySelector("#workers-result"), error));
  return stop;
}

function failed(box, error) {
  clear(box, h("div", { class: "error-box" }, h("strong", { text: "Error: " }), error.text || error.message));
}

// --- findings: the one way every report is shown ------------------------------------------
export function findingList(findings, { sort = true } = {}) {
  const items = sort ? [...findings].sort((a, b) => (ORDER[a.severity] ?? 9) - (ORDER[b.severity] ?? 9)) : findings;
  if (!items.length) return h("p", { class: "muted", text: "Nothing found." });
  return h("ul", { class: "findings" }, items.map((f) =>
    h("li", { class: `finding ${f.severity}`, "data-finding": f.id },
      h("div", { class: "finding-head" }, badge(f.severity), " ", h("strong", { text: f.title }),
        f.subject ? h("span", { class: "muted", text: ` [${f.subject}]` }) : null),
      evidence(f),
      f.fix ? h("p", { class: "fix" }, h("strong", { text: "What to do: " }), f.fix) : null)));
}

// A problem shows its evidence; a check that passed keeps it one click away.
function evidence(finding) {
  if (!finding.evidence.length) return null;
  const lines = h("pre", { class: "evidence", text: finding.evidence.join("\n") });
  if (finding.severity === "warn" || finding.severity === "fail") return lines;
  return h("details", {}, h("summary", { text: "evidence" }), lines);
}

// --- log analysis ------------------------------------------------------------------------
async function analyseLog(root, file) {
  const box = root.querySelector("#log-result");
  const progress = root.querySelector('.upload-progress[data-for="log"]');
  const bar = progress.querySelector("progress");
  progress.hidden = false;
  clear(box, h("p", { class: "muted", text: `Analysing ${file.name}…` }));
  try {
    const report = await upload("/v1/diagnose/log", "file", file, (loaded, total) => {
      bar.value = (100 * loaded) / total;
      progress.querySelector("span").textContent = `${bytes(loaded)} of ${bytes(total)}`;
    });
    showLog(box, report);
  } catch (error) {
    failed(box, error);
  }
}

function showLog(box, report) {
  const tasks = report.tasks || [];
  const damage = report.damage ? report.damage.lines : 0;
  const general = report.findings.filter((f) => !tasks.some((t) => t.label === f.subject));
  clear(box,
    h("p", { class: "summary" }, badge(report.worst), " ",
      `${report.path}: ${report.lines} lines, ${report.records} records, ${tasks.length} task${tasks.length === 1 ? "" : "s"}, ` +
      `${damage ? `${damage} damaged lines` : "no damaged lines"}${report.timed === false ? ", no timestamps (order only)" : ""}`),
    general.length ? findingList(general) : null,
    tasks.map((task) => taskCard(task, report)));
}

function taskCard(task, report) {
  const findings = report.findings.filter((f) => f.subject === task.label);
  const pace = [];
  if (task.sends !== undefined) pace.push(`${task.sends} sends`, `${task.takes} takes`, `${task.batches_done} batches done`);
  if (task.fps) pace.push(`${task.fps.toFixed(1)} fps`);
  if (task.longest_queue_wait_s) pace.push(`longest queue wait ${seconds(task.longest_queue_wait_s)}`);
  const chart = sendsTakesChart(task, report.timed !== false);
  return h("section", { class: "task", "data-task": task.label },
    h("h3", {}, `Task ${task.label} `, badge(task.state, task.state),
      h("span", { class: "muted small", text: ` lines ${task.first_line}-${task.last_line}` +
        (report.timed === false ? "" : `, ${seconds(task.duration_s)}`) })),
    pace.length ? h("p", { class: "muted", text: pace.join(", ") }) : null,
    chart ? h("div", { class: "chart" }, chart) : h("p", { class: "muted", text: "No sends or takes in this task." }),
    findingList(findings),
    h("details", { class: "timeline" }, h("summary", { text: `Timeline (${task.events.length} events)` }),
      h("table", { class: "events" },
        h("thead", {}, h("tr", {}, ["time", "line", "event", "log line"].map((t) => h("th", { text: t })))),
        h("tbody", {}, task.events.slice(0, EVENT_ROWS).map((e) =>
          h("tr", { class: e.late ? "late" : null },
            h("td", { text: report.timed === false ? "" : e.time.slice(11, 23) }),
            h("td", { text: e.line }), h("td", { text: e.kind }), h("td", { class: "log-line", text: e.detail })))))));
}

// --- worker processes --------------------------------------------------------------------
async function loadProcesses(root) {
  const box = root.querySelector("#workers-result");
  const { workers, report } = await api("/v1/diagnose/processes");
  const tree = (report.reports || [])[0];
  const roles = new Map(workers.filter((w) => w.pid).map((w) => [w.pid, w.name]));
  const role = (p) => {
    if (tree && p.pid === tree.root_pid) return "service";
    return roles.has(p.pid) ? `worker ${roles.get(p.pid)}` : `child of ${p.ppid}`;
  };
  const rows = tree ? [...tree.processes, ...tree.orphans] : [];
  clear(box,
    h("table", { class: "workers" },
      h("thead", {}, h("tr", {}, ["worker", "state", "pid", "job", "heartbeat", "RSS", "jobs done"].map((t) => h("th", { text: t })))),
      h("tbody", {}, workers.length ? workers.map((w) => h("tr", {},
        h("td", { text: w.name }), h("td", {}, badge(w.state)), h("td", { text: w.pid ?? "" }),
        h("td", {}, w.job_id ? h("a", { href: `#job/${w.job_id}`, text: w.job_id.slice(0, 8) }) : ""),
        h("td", { text: w.seconds_since_heartbeat === null ? "" : `${seconds(w.seconds_since_heartbeat)} ago` }),
        h("td", { text: w.rss_bytes === null ? "" : bytes(w.rss_bytes) }), h("td", { text: w.jobs_done }))) :
        h("tr", {}, h("td", { colspan: 7, class: "muted", text: "No workers (HEYGEM_SERVICE_WORKERS=0)." })))),
    h("h3", { text: "Processes" }),
    h("table", { class: "processes" },
      h("thead", {}, h("tr", {}, ["pid", "role", "status", "threads", "CPU", "RSS", "shared memory", "command"].map((t) => h("th", { text: t })))),
      h("tbody", {}, rows.map((p) => h("tr", { class: p.status === "zombie" ? "zombie" : null },
        h("td", { text: p.pid }), h("td", { text: role(p) }), h("td", { text: p.display_status }),
        h("td", { text: p.threads ?? "?" }), h("td", { text: p.cpu_percent === null ? "?" : `${p.cpu_percent.toFixed(0)}%` }),
        h("td", { text: bytes(p.rss_bytes) }),
        h("td", { text: p.shm.length ? `${p.shm.length} (${bytes(p.shm.reduce((n, u) => n + (u.mapped_bytes || 0), 0))} mapped)` : "" }),
        h("td", { class: "command", text: p.cmdline.join(" ").slice(0, 140) || p.name }))))),
    (tree ? tree.notes : []).map((note) => h("p", { class: "muted small", text: note })),
    findingList(report.findings));
  return true;
}

// --- the doctor --------------------------------------------------------------------------
async function loadDoctor(root, refresh) {
  const box = root.querySelector("#doctor-result");
  const when = root.querySelector("#doctor-when");
  const button = root.querySelector("#doctor-run");
  button.disabled = true;
  if (refresh) clear(box, h("p", { class: "muted", text: "Running the doctor (about ten seconds)…" }));
  try {
    const answer = await api(`/v1/diagnose/doctor${refresh ? "?refresh=true" : ""}`);
    when.textContent = `checked ${new Date(answer.checked_at).toLocaleString()} in ${seconds(answer.seconds)}`;
    clear(box, h("p", { class: "summary" }, badge(answer.report.worst), " ", answer.report.title),
      findingList(answer.report.findings));
  } catch (error) {
    failed(box, error);
  } finally {
    button.disabled = false;
  }
}

// --- reports -----------------------------------------------------------------------------
async function loadReports(root) {
  const box = root.querySelector("#reports-result");
  try {
    const answer = await api("/v1/diagnose/reports");
    const part = (title, report, how) => report
      ? h("details", { class: "report" },
          h("summary", {}, h("strong", { text: title }),
            h("span", { class: "muted small", text: ` ${report.name}, written ${new Date(report.modified).toLocaleString()}${report.truncated ? " (cut short)" : ""}` })),
          markdown(report.markdown))
      : h("div", { class: "report" }, h("h3", { text: title }),
          h("p", { class: "muted", text: `None found in ${answer.looked_in} (${how}).` }));
    clear(box, part("Version matrix", answer.matrix, "run nox -s matrix and nox -s matrix_report there"),
      part("Benchmarks", answer.benchmarks, "run nox -s bench there"));
  } catch (error) {
    failed(box, error);
  }
}
