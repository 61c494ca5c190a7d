// Inline SVG drawn from data: an accuracy bar with its interval, and the sweep's
// accuracy-vs-calls frontier. Labels are text nodes.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs, ...kids) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) node.append(kid instanceof Node ? kid : String(kid));
  return node;
}

// A 0-100% track: the routed accuracy as a bar, its 95% interval as a whisker, and ticks for
// the best single expert (orange) and the oracle (grey) when known.
function intervalBar(row, width = 220) {
  const x = (v) => 1 + (width - 2) * Math.max(0, Math.min(1, v));
  const kids = [svg("rect", {x: 1, y: 3, width: width - 2, height: 12, class: "track"})];
  if (row.estimate !== null) kids.push(svg("rect", {x: 1, y: 3, width: x(row.estimate) - 1, height: 12, class: "bar"}));
  kids.push(svg("line", {x1: x(row.low), x2: x(row.high), y1: 9, y2: 9, class: "whisker"}),
            svg("line", {x1: x(row.low), x2: x(row.low), y1: 5, y2: 13, class: "whisker"}),
            svg("line", {x1: x(row.high), x2: x(row.high), y1: 5, y2: 13, class: "whisker"}));
  if (row.best_single !== null && row.best_single !== undefined)
    kids.push(svg("line", {x1: x(row.best_single), x2: x(row.best_single), y1: 0, y2: 18, class: "tick best"}));
  if (row.oracle !== null && row.oracle !== undefined)
    kids.push(svg("line", {x1: x(row.oracle), x2: x(row.oracle), y1: 0, y2: 18, class: "tick oracle"}));
  return svg("svg", {width, height: 18, class: "ivbar", role: "img"},
             svg("title", {}, `routed ${withInterval(row)}; best single ${pct(row.best_single)}; oracle ${pct(row.oracle)}`), kids);
}

// About n round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten).
function ticks(lo, hi, n = 5) {
  const raw = (hi - lo) / n || 1, power = 10 ** Math.floor(Math.log10(raw));
  const step = power * ([1, 2, 5, 10].find((m) => m * power >= raw) || 10);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toFixed(10)));
  return out;
}

// Points: sweep rows {k, accuracy, calls}; the upper-left frontier (no other point has at
// least the accuracy for fewer calls) joined by a line; the run's own k circled.
function frontier(sweep, width = 560, height = 300) {
  const rows = sweep.rows.filter((r) => r.accuracy !== null && r.calls !== null);
  if (!rows.length) return el("p", {}, "No gold answers: the sweep has no accuracy to plot.");
  const pad = {l: 56, r: 20, t: 16, b: 44};
  const calls = rows.map((r) => r.calls), accs = rows.map((r) => r.accuracy);
  const x0 = 0, x1 = Math.max(...calls) * 1.08 || 1;
  const y0 = Math.max(0, Math.min(...accs) - 0.05), y1 = Math.min(1, Math.max(...accs) + 0.05);
  const X = (v) => pad.l + (width - pad.l - pad.r) * (v - x0) / (x1 - x0);
  const Y = (v) => height - pad.b - (height - pad.t - pad.b) * (v - y0) / ((y1 - y0) || 1);
  const kids = [svg("line", {x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b, class: "axis"}),
                svg("line", {x1: pad.l, x2: pad.l, y1: pad.t, y2: height - pad.b, class: "axis"})];
  for (const v of ticks(100 * y0, 100 * y1, 6)) {
    kids.push(svg("text", {x: pad.l - 6, y: Y(v / 100) + 4, class: "tl end"}, String(v)),
              svg("line", {x1: pad.l, x2: width - pad.r, y1: Y(v / 100), y2: Y(v / 100), class: "grid"}));
  }
  for (const v of ticks(x0, x1)) {
    kids.push(svg("text", {x: X(v), y: height - pad.b + 16, class: "tl mid"}, v.toLocaleString()));
  }
  kids.push(svg("text", {x: (pad.l + width - pad.r) / 2, y: height - 6, class: "tl mid"}, "expert calls (question x expert)"),
            svg("text", {x: 14, y: (pad.t + height - pad.b) / 2, class: "tl mid", transform: `rotate(-90 14 ${(pad.t + height - pad.b) / 2})`}, "accuracy (%)"));
  const sorted = [...rows].sort((a, b) => a.calls - b.calls || b.accuracy - a.accuracy);
  const front = [];
  for (const r of sorted) if (!front.length || r.accuracy > front[front.length - 1].accuracy) front.push(r);
  kids.push(svg("polyline", {points: front.map((r) => `${X(r.calls)},${Y(r.accuracy)}`).join(" "), class: "front"}));
  for (const r of rows) {
    kids.push(svg("circle", {cx: X(r.calls), cy: Y(r.accuracy), r: 4, class: front.includes(r) ? "pt on" : "pt"},
                  svg("title", {}, `k=${r.k}: ${pct(r.accuracy)} with ${r.calls} calls`)),
              svg("text", {x: X(r.calls) + 7, y: Y(r.accuracy) - 7, class: "tl"}, `k=${r.k}`));
    if (r.k === sweep.current_k) kids.push(svg("circle", {cx: X(r.calls), cy: Y(r.accuracy), r: 9, class: "here"}));
  }
  return svg("svg", {width, height, class: "frontier", role: "img"}, kids);
}
