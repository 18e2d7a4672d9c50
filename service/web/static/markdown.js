// The few Markdown constructs the matrix report and the benchmark summary use (headings,
// pipe tables, nested lists, paragraphs, **bold**, `code`), built as DOM nodes from text:
// anything else shows as the plain text it is.

import { h } from "./dom.js";

function inline(text) {
  const out = [];
  const pattern = /\*\*(.+?)\*\*|`([^`]+)`/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    out.push(text.slice(last, match.index));
    out.push(match[1] !== undefined ? h("strong", { text: match[1] }) : h("code", { text: match[2] }));
    last = match.index + match[0].length;
  }
  out.push(text.slice(last));
  return out.filter((part) => part !== "");
}

function cells(line) {
  return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
}

function table(lines) {
  const [head, , ...rows] = lines; // the second line is the |---| separator
  return h("div", { class: "table-wrap" },
    h("table", {},
      h("thead", {}, h("tr", {}, cells(head).map((c) => h("th", {}, inline(c))))),
      h("tbody", {}, rows.map((row) => h("tr", {}, cells(row).map((c) => h("td", {}, inline(c))))))));
}

function list(lines) {
  const root = h("ul");
  const stack = [{ indent: -1, node: root }];
  for (const line of lines) {
    const indent = line.search(/\S/);
    const item = h("li", {}, inline(line.trim().replace(/^[-*]\s+/, "")));
    while (stack.length > 1 && indent <= stack[stack.length - 1].indent) stack.pop();
    const parent = stack[stack.length - 1];
    let target = parent.node;
    if (indent > parent.indent && parent.item) {
      target = parent.item.querySelector(":scope > ul") || parent.item.appendChild(h("ul"));
    }
    target.append(item);
    stack.push({ indent, node: target, item });
  }
  return root;
}

export function markdown(text) {
  const root = h("div", { class: "markdown" });
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; ) {
    const line = lines[i];
    const heading = /^(#{1,4})\s+(.*)$/.exec(line);
    if (heading) {
      root.append(h(`h${Math.min(6, heading[1].length + 2)}`, {}, inline(heading[2])));
      i++;
    } else if (line.trim().startsWith("|")) {
      const block = [];
      while (i < lines.length && lines[i].trim().startsWith("|")) block.push(lines[i++]);
      root.append(block.length >= 2 ? table(block) : h("p", {}, inline(block[0])));
    } else if (/^\s*[-*]\s+/.test(line)) {
      const block = [];
      while (i < lines.length && /^\s*[-*]\s+/.test(lines[i])) block.push(lines[i++]);
      root.append(list(block));
    } else if (line.trim() === "") {
      i++;
    } else {
      const block = [lines[i++].trim()]; // always consumed: no line can stall the loop
      while (i < lines.length && lines[i].trim() !== "" && !/^(#|\s*\||\s*[-*]\s)/.test(lines[i])) {
        block.push(lines[i++].trim());
      }
      root.append(h("p", {}, inline(block.join(" "))));
    }
  }
  return root;
}
