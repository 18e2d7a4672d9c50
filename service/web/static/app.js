// The page: a hash router over four views (#generate, #job/<id>, #jobs, #diagnose), each
// cloned from its <template> in index.html and filled from the native API.

import { askForKey, authRequired, forgetKey, hasKey } from "./api.js";
import * as diagnose from "./diagnose.js";
import * as generate from "./generate.js";
import * as job from "./job.js";
import * as jobs from "./jobs.js";

const VIEWS = { generate, job, jobs, diagnose };
let leave = null; // stops the current view's polling

function route() {
  const [name, ...params] = (location.hash.replace(/^#/, "") || "generate").split("/");
  const view = VIEWS[name] || generate;
  if (leave) leave();
  const root = document.getElementById("view");
  root.replaceChildren(document.getElementById(`view-${view.template}`).content.cloneNode(true));
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.tab === (view === job ? "jobs" : view.template));
  }
  leave = view.render(root, params.map(decodeURIComponent)) || null;
}

async function start() {
  if (authRequired()) {
    const button = document.getElementById("key-button");
    button.hidden = false;
    button.addEventListener("click", async () => {
      forgetKey();
      await askForKey("");
      route();
    });
    if (!hasKey()) await askForKey(""); // before any request: no 401 to begin with
  }
  window.addEventListener("hashchange", route);
  route();
}

start();
