// Jobs: newest first, filtered by state, refreshed every few seconds; a failed job's reason
// in plain words links to its diagnosis.

import { api } from "./api.js";
import { age, badge, between, clear, every, h, seconds, showError } from "./dom.js";

export const template = "jobs";
const PAGE = 25;
const MAX = 100; // the API's largest page
const POLL_MS = 3000;

export function render(root) {
  const filter = root.querySelector("#state-filter");
  const more = root.querySelector("#jobs-more");
  const errorBox = root.querySelector("#jobs-error");
  let limit = PAGE;
  const load = async () => {
    const state = filter.value ? `&state=${encodeURIComponent(filter.value)}` : "";
    const page = await api(`/v1/generations?limit=${limit}${state}`);
    showError(errorBox, null);
    clear(root.querySelector("#jobs-body"), page.items.length ? page.items.map(row) :
      h("tr", {}, h("td", { colspan: 6, class: "muted", text: "No jobs" + (filter.value ? ` ${filter.value}` : "") + "." })));
    root.querySelector("#jobs-count").textContent = `${page.items.length} of ${page.total}`;
    more.hidden = page.next_offset === null || limit >= MAX;
  };
  let stop = every(POLL_MS, load, (error) => showError(errorBox, error));
  const restart = () => {
    stop();
    stop = every(POLL_MS, load, (error) => showError(errorBox, error));
  };
  filter.addEventListener("change", () => {
    limit = PAGE;
    restart();
  });
  more.addEventListener("click", () => {
    limit = Math.min(MAX, limit + PAGE);
    restart();
  });
  return () => stop();
}

function row(job) {
  const names = job.inputs || {};
  const took = job.started_at ? seconds(between(job.started_at, job.finished_at)) : "—";
  let reason = "";
  if (job.error) {
    reason = h("div", {},
      h("a", { href: `#job/${job.id}/diagnosis`, class: "reason-link", text: job.error.cause_description }),
      h("div", { class: "muted small", text: job.error.message }));
  }
  return h("tr", { "data-job": job.id, "data-state": job.state },
    h("td", {}, h("a", { href: `#job/${job.id}`, text: job.id.slice(0, 8) })),
    h("td", { class: "inputs", text: `${names.audio || "?"} + ${names.video || "?"}` }),
    h("td", {}, badge(job.state), job.state === "running" ? h("span", { class: "muted small", text: ` ${running(job)}` }) : null),
    h("td", { text: age(job.created_at) }),
    h("td", { text: took }),
    h("td", {}, reason));
}

// A running job's phase and percent; while it prepares, the pipeline step it is in.
function running(job) {
  const step = job.phase === "preparing" && job.step_title ? `: ${job.step_title}` : "";
  return `${job.phase} ${job.progress}%${step}`;
}
