// Building the page from data: every string goes in as text (textContent), never as HTML,
// so a file name or a log line holding "<script>" shows as those characters.

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

export function field(root, name) {
  return root.querySelector(`[data-field="${name}"]`);
}

// A <dl> of label -> value pairs (values that are null are left out).
export function facts(dl, pairs) {
  clear(dl);
  for (const [label, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    append(dl, [h("dt", { text: label }), h("dd", {}, value)]);
  }
  return dl;
}

export function showError(box, error) {
  box.hidden = !error;
  if (error) clear(box, h("strong", { text: "Error: " }), error.text || error.message || String(error));
}

export function badge(text, kind = text) {
  return h("span", { class: `badge ${kind}`, text });
}

export function bytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function seconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "?";
  if (s < 10) return `${s.toFixed(2)} s`;
  if (s < 120) return `${s.toFixed(1)} s`;
  const parts = (big, small, a, b) => (small ? `${big} ${a} ${small} ${b}` : `${big} ${a}`);
  const m = Math.round(s / 60);
  if (m < 120) return parts(Math.floor(s / 60), Math.round(s % 60), "min", "s");
  if (m < 48 * 60) return parts(Math.floor(m / 60), m % 60, "h", "min");
  const d = Math.round(s / 86400);
  return `${d} days`;
}

export function age(iso, now = Date.now()) {
  if (!iso) return "";
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function between(startIso, endIso) {
  if (!startIso) return null;
  const end = endIso ? Date.parse(endIso) : Date.now();
  return (end - Date.parse(startIso)) / 1000;
}

// Repeats fn every `ms` until stopped; one call at a time, errors go to onError.
export function every(ms, fn, onError = () => {}) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    try {
      const again = await fn();
      if (again === false) return;
    } catch (error) {
      onError(error);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
