// Shared helpers of the orchestrator's HTML pages (run viewer and run comparison).
// Every piece of data reaches the page as a text node or an attribute value, never as markup:
// this file and the others use no innerHTML, outerHTML, insertAdjacentHTML or document.write.
"use strict";

const DATA = JSON.parse(document.getElementById("data").textContent);

// el("td", {class: "num", title: "..."}, child, ...): children are nodes or plain text.
function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    node.append(kid instanceof Node ? kid : String(kid));
  }
  return node;
}

function pct(x, digits = 1) {
  return x === null || x === undefined || Number.isNaN(x) ? "-" : (100 * x).toFixed(digits) + "%";
}

// "52.3% [48.1, 56.4]" for {estimate, low, high}
function withInterval(iv) {
  if (!iv || iv.estimate === null) return "-";
  return `${pct(iv.estimate)} [${(100 * iv.low).toFixed(1)}, ${(100 * iv.high).toFixed(1)}]`;
}

function section(title, id, ...kids) {
  return el("section", {id}, el("h2", {}, title), ...kids);
}

// rows: arrays of cells (text or nodes); right: the right-aligned (numeric) columns, either
// every column from that index on, or a list of indices.
function table(headers, rows, right = 1, attrs = {}) {
  const num = (i) => (Array.isArray(right) ? right.includes(i) : i >= right) ? "num" : null;
  const head = el("tr", {}, headers.map((h, i) => el("th", {class: num(i)}, h)));
  const body = rows.map((row) => el("tr", {}, row.map((c, i) => el("td", {class: num(i)}, c))));
  return el("table", attrs, el("thead", {}, head), el("tbody", {}, body));
}

function badge(correct) {
  if (correct === null || correct === undefined) return el("span", {class: "badge none", title: "no gold answer"}, "?");
  return correct ? el("span", {class: "badge ok", title: "right"}, "right")
                 : el("span", {class: "badge bad", title: "wrong"}, "wrong");
}

function shorten(text, n) {
  const flat = String(text ?? "").replace(/\s+/g, " ").trim();
  return flat.length > n ? flat.slice(0, n - 1) + "\u2026" : flat;
}

function inEditable(event) {
  const tag = (event.target && event.target.tagName) || "";
  return tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || event.ctrlKey || event.metaKey || event.altKey;
}

// Distinct extracted answers of a record's outputs (no answer left out).
function answersOf(record) {
  return new Set((record.outputs || []).map((o) => o.answer).filter((a) => a !== null && a !== undefined));
}

function letterOf(i) {
  return String.fromCharCode(65 + i);
}
