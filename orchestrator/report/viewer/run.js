// The run viewer: summary, accuracy per domain, expert usage, the sweep frontier, and a
// filterable question table; "#q=N" shows question N (record index in results.jsonl).
"use strict";

const RECORDS = DATA.records;
const ESCALATION = RECORDS.some(escalated); // the filter only when some question was escalated
const state = {domain: "", outcome: "", disagree: false, expert: "", relation: "chosen", escalated: false, text: ""};
let visible = RECORDS.map((_, i) => i); // indices of the rows the filters keep, table order
let cursor = -1; // highlighted row in the table (j/k), an index into `visible`
let shown = 0; // rows of `visible` in the table; more are drawn on demand (2,090 rows at once
const PAGE = 200; // are tens of thousands of nodes: seconds of layout on a slow machine)
const rowNodes = [];
const haystacks = [];

function escalated(r) {
  if ("escalated" in r) return Boolean(r.escalated);
  const rounds = r.rounds;
  return Array.isArray(rounds) ? rounds.length > 1 : Number(rounds) > 1;
}

function disagree(r) {
  return answersOf(r).size > 1;
}

// expert: "" (any) or an id; relation: what the expert did on the question.
function expertMatches(r) {
  if (!state.expert && state.relation === "chosen") return true;
  const outs = (r.outputs || []).filter((o) => !state.expert || o.expert === state.expert);
  switch (state.relation) {
    case "chosen": return (r.experts || []).includes(state.expert);
    case "error": return outs.some((o) => o.error);
    case "noanswer": return outs.some((o) => o.answer === null || o.answer === undefined);
    case "right": return outs.some((o) => o.right === true);
    case "wrong": return outs.some((o) => o.right === false);
  }
  return true;
}

function haystack(i) {
  if (haystacks[i] === undefined) {
    const r = RECORDS[i];
    haystacks[i] = [r.id, r.question, r.gold, r.final_answer, r.domain, ...(r.options || []),
      ...(r.outputs || []).flatMap((o) => [o.expert, o.text, o.answer, o.error]),
      r.aggregation && r.aggregation.text].filter((x) => x !== null && x !== undefined).join("\n").toLowerCase();
  }
  return haystacks[i];
}

function keep(i) {
  const r = RECORDS[i];
  if (state.domain && (r.domain || "(no domain)") !== state.domain) return false;
  if (state.outcome === "right" && r.correct !== true) return false;
  if (state.outcome === "wrong" && r.correct !== false) return false;
  if (state.outcome === "unscored" && r.correct !== null && r.correct !== undefined) return false;
  if (state.disagree && !disagree(r)) return false;
  if (state.escalated && !escalated(r)) return false;
  if (!expertMatches(r)) return false;
  const words = state.text.toLowerCase().split(/\s+/).filter(Boolean);
  return words.every((w) => haystack(i).includes(w));
}

function applyFilters() {
  visible = RECORDS.map((_, i) => i).filter(keep);
  cursor = -1;
  shown = 0;
  document.getElementById("qbody").replaceChildren();
  showMore();
  const right = visible.filter((i) => RECORDS[i].correct === true).length;
  const scored = visible.filter((i) => RECORDS[i].correct !== null && RECORDS[i].correct !== undefined).length;
  document.getElementById("qcount").textContent =
    `${visible.length} of ${RECORDS.length} questions` + (scored ? `; ${right} of ${scored} scored right (${pct(right / scored)})` : "");
}

// Draws the next PAGE rows of `visible` (at least up to row `upto`).
function showMore(upto = 0) {
  const end = Math.min(visible.length, Math.max(shown + PAGE, upto + 1));
  document.getElementById("qbody").append(...visible.slice(shown, end).map(rowNode));
  shown = end;
  const more = document.getElementById("more");
  more.hidden = shown >= visible.length;
  more.textContent = `show ${Math.min(PAGE, visible.length - shown)} more of ${visible.length - shown} not shown`;
}

function summaryView() {
  const acc = DATA.accuracy;
  const head = el("div", {class: "headline"},
    el("div", {class: "big", id: "accuracy"}, acc ? pct(acc.estimate) : "n/a"),
    el("div", {}, acc ? `accuracy, 95% interval ${(100 * acc.low).toFixed(1)} to ${(100 * acc.high).toFixed(1)}% ` +
      `(${acc.method}); ${acc.correct} of ${acc.n} scored questions right` : "no gold answers: accuracy not known"));
  const refs = DATA.references.length ? table(["reference on the same questions", "accuracy"],
    DATA.references.map((r) => [r.label, pct(r.accuracy)])) : null;
  return section("Summary", "summary", head,
    el("div", {class: "cols"}, table(["", "value"], DATA.summary, 2, {id: "summary-table"}), refs));
}

function domainView() {
  if (!DATA.domains.length) return null;
  const rows = DATA.domains.map((d) => [d.all ? el("b", {}, d.domain) : d.domain, d.n, withInterval(d),
    pct(d.best_single), pct(d.oracle), intervalBar(d)]);
  return section("Accuracy per domain", "domains",
    el("p", {class: "note"}, "Routed accuracy with its 95% Wilson interval; on the bar, the whisker is the interval, the orange tick the best single expert overall, the grey tick the oracle."),
    table(["domain", "scored", "routed [95% interval]", "best single", "oracle", ""], rows, [1, 3, 4], {id: "domain-table"}));
}

function usageView() {
  const u = DATA.usage;
  if (!u) return null;
  const peak = Math.max(1, ...u.counts.flat());
  const head = el("tr", {}, el("th", {}, u.kind), el("th", {class: "num"}, "questions"),
    u.experts.map((e) => el("th", {class: "rot", title: e}, el("span", {}, e))));
  const body = u.rows.map((label, i) => el("tr", {}, el("td", {}, label), el("td", {class: "num"}, u.row_n[i]),
    u.counts[i].map((c) => {
      const cell = el("td", {class: "num heat", title: `${label}: ${c} questions sent`}, c || "");
      cell.style.backgroundColor = `rgba(49, 130, 189, ${(0.85 * c / peak).toFixed(3)})`;
      if (c > 0.6 * peak) cell.style.color = "white";
      return cell;
    })));
  const shown = u.total_rows > u.rows.length ? `the ${u.rows.length} most frequent of ${u.total_rows} ${u.kind}s` : `all ${u.rows.length} ${u.kind}s`;
  return section(`Expert usage per ${u.kind}`, "usage",
    el("p", {class: "note"}, `Questions with each ${u.kind} sent to each expert (${shown}).`),
    el("div", {class: "scroll"}, el("table", {class: "usage"}, el("thead", {}, head), el("tbody", {}, body))));
}

function sweepView() {
  if (!DATA.sweep) return null;
  return section("Accuracy vs expert calls (sweep over k)", "sweep",
    el("p", {class: "note"}, "Each point is one k of the sweep; the line joins the frontier (no other k is at least as accurate for fewer calls); the ring marks this run."),
    frontier(DATA.sweep),
    table(["k", "accuracy", "expert calls", "answers generated", "mean k"],
      DATA.sweep.rows.map((r) => [r.k, pct(r.accuracy), r.calls, r.generated ?? "-", r.mean_k ?? r.k])));
}

function select(id, label, options, onchange) {
  return el("label", {}, label + " ",
    el("select", {id, onchange}, options.map(([value, text]) => el("option", {value}, text))));
}

function filterBar() {
  const domains = [...new Set(RECORDS.map((r) => r.domain || "(no domain)"))].sort();
  const set = (key, conv = (e) => e.target.value) => (e) => { state[key] = conv(e); applyFilters(); };
  return el("div", {class: "filters"},
    el("input", {id: "search", type: "search", placeholder: "search questions, outputs, ids...  (/)", oninput: set("text")}),
    select("f-domain", "domain", [["", "all"], ...domains.map((d) => [d, d])], set("domain")),
    select("f-outcome", "final answer", [["", "any"], ["right", "right"], ["wrong", "wrong"], ["unscored", "no gold"]], set("outcome")),
    select("f-expert", "expert", [["", "any expert"], ...DATA.experts.map((e) => [e, e])], set("expert")),
    select("f-relation", "", [["chosen", "was chosen"], ["error", "had an error"], ["noanswer", "gave no answer"],
      ["right", "answered right"], ["wrong", "answered wrong"]], set("relation")),
    el("label", {}, el("input", {id: "f-disagree", type: "checkbox", onchange: set("disagree", (e) => e.target.checked)}), " experts disagree"),
    ESCALATION ? el("label", {}, el("input", {id: "f-escalated", type: "checkbox", onchange: set("escalated", (e) => e.target.checked)}), " escalated") : null);
}

function rowNode(i) {
  if (!rowNodes[i]) {
    const r = RECORDS[i];
    rowNodes[i] = el("tr", {"data-index": i, "data-id": r.id, onclick: () => { location.hash = `q=${i}`; }},
      el("td", {class: "num"}, i + 1), el("td", {class: "id"}, r.id), el("td", {}, r.domain || ""),
      el("td", {class: "qtext"}, shorten(r.question, 140)),
      el("td", {class: "experts"}, (r.outputs || []).map((o) => el("span", {class: "chip " + (o.right === true ? "ok" : o.right === false ? "bad" : ""), title: `${o.expert}: ${o.error ? "error: " + o.error : o.answer ?? "no answer"}`}, `${o.expert}: ${o.error ? "error" : o.answer ?? "-"}`))),
      el("td", {}, r.final_answer ?? "-"), el("td", {}, r.gold ?? "-"), el("td", {}, badge(r.correct)),
      el("td", {}, disagree(r) ? el("span", {class: "flag", title: "experts disagree"}, "split") : ""));
  }
  return rowNodes[i];
}

function tableView() {
  return section("Questions", "questions", filterBar(), el("p", {id: "qcount", class: "note"}),
    el("table", {id: "qtable", class: "qtable"},
      el("thead", {}, el("tr", {}, ["#", "id", "domain", "question", "experts: extracted answer", "final", "gold", "", ""].map((h) => el("th", {}, h)))),
      el("tbody", {id: "qbody"})),
    el("button", {id: "more", type: "button", onclick: () => showMore()}),
    el("p", {class: "note"}, "Keys: j / k or arrow keys move, Enter opens, Esc returns, / searches."));
}

function questionView(i) {
  const r = RECORDS[i];
  const pos = visible.indexOf(i);
  const nav = el("div", {class: "nav"},
    el("a", {href: "#", id: "back"}, "\u2190 all questions (Esc)"),
    el("span", {class: "note"}, pos >= 0 ? `question ${pos + 1} of ${visible.length} shown` : `question ${i + 1} (outside the filters)`),
    el("a", {href: `#q=${neighbour(i, -1)}`, id: "prev"}, "\u2190 previous (k)"),
    el("a", {href: `#q=${neighbour(i, 1)}`, id: "next"}, "next (j) \u2192"));
  const options = (r.options || []).length ? el("ol", {class: "options", type: "A"},
    r.options.map((o, j) => el("li", {class: letterOf(j) === r.gold ? "gold" : null}, o))) : null;
  const votes = (r.aggregation && r.aggregation.votes) || null;
  const why = el("p", {class: "note"}, `Router ${DATA.router} scored the pool on the question` +
    ((r.skills || []).length ? " for its skills" : "") + ` and kept ${(r.experts || []).length}: the experts below in selection order, with their routing scores.`);
  const routing = el("div", {}, el("p", {}, "skills: ", (r.skills || []).length ? r.skills.map((s) => el("span", {class: "chip"}, s)) : "(none)"), why,
    table(["expert", "routing score", "extracted answer", "vs gold"], (r.experts || []).map((e, j) => {
      const o = (r.outputs || []).find((x) => x.expert === e) || {};
      return [e, r.scores && r.scores[j] !== undefined ? Number(r.scores[j]).toFixed(4) : "-", o.error ? "error" : o.answer ?? "none", badge(o.right)];
    }), [1], {id: "routing"}),
    r.evidence ? el("pre", {class: "text"}, JSON.stringify(r.evidence, null, 2)) : null);
  const agg = r.aggregation || {};
  const decision = el("div", {},
    el("p", {}, `decided by ${r.aggregator ?? "-"}` + (agg.by ? ` (${agg.by})` : "") + (agg.fallback ? `; fallback: ${agg.fallback}` : "")),
    votes ? table(["answer", "votes", "from"], Object.entries(votes).sort((a, b) => b[1] - a[1]).map(([a, v]) =>
      [a, Number(v).toFixed(2), (r.outputs || []).filter((o) => o.answer === a).map((o) => o.expert).join(", ")]), [1], {id: "votes"}) : null,
    agg.text ? el("div", {}, el("h4", {}, "fused text"), el("pre", {class: "text", id: "fused"}, agg.text)) : null);
  const outputs = (r.outputs || []).map((o) => el("div", {class: "output", "data-expert": o.expert},
    el("h4", {}, o.expert, " ", el("span", {class: "note"}, `answer: ${o.answer ?? "none extracted"}`), " ", badge(o.right),
      o.tokens_out ? el("span", {class: "note"}, ` ${o.tokens_in} tokens in, ${o.tokens_out} out`) : null),
    o.error ? el("p", {class: "error"}, "error: ", o.error) : null,
    el("pre", {class: "text"}, o.text ?? "")));
  return el("article", {id: "question", "data-index": i}, nav,
    el("h2", {}, `${r.id}`, " ", el("span", {class: "note"}, r.domain || ""), " ", badge(r.correct)),
    el("pre", {class: "text question", id: "qtext"}, r.question ?? ""), options,
    el("dl", {class: "answers"}, el("dt", {}, "gold"), el("dd", {id: "gold"}, r.gold ?? "(none)"),
      el("dt", {}, "final answer"), el("dd", {id: "final"}, r.final_answer ?? "(none)")),
    el("h3", {}, "Routing"), routing, el("h3", {}, "Aggregation"), decision,
    el("h3", {}, `Expert outputs (${(r.outputs || []).length})`), outputs);
}

function neighbour(i, step) {
  const order = visible.length ? visible : RECORDS.map((_, j) => j);
  const pos = order.indexOf(i);
  const next = pos < 0 ? 0 : (pos + step + order.length) % order.length;
  return order[next];
}

function route() {
  const match = /^#q=(\d+)$/.exec(location.hash);
  const list = document.getElementById("list"), page = document.getElementById("page");
  if (match && RECORDS[Number(match[1])]) {
    page.replaceChildren(questionView(Number(match[1])));
    list.hidden = true;
    page.hidden = false;
    window.scrollTo(0, 0);
  } else {
    page.hidden = true;
    page.replaceChildren();
    list.hidden = false;
  }
}

function moveCursor(step) {
  if (!visible.length) return;
  if (cursor >= 0) rowNode(visible[cursor]).classList.remove("cursor");
  cursor = Math.max(0, Math.min(visible.length - 1, cursor + step));
  if (cursor >= shown) showMore(cursor);
  const row = rowNode(visible[cursor]);
  row.classList.add("cursor");
  row.scrollIntoView({block: "nearest"});
}

function onKey(event) {
  if (inEditable(event)) {
    if (event.key === "Escape") event.target.blur();
    return;
  }
  const page = document.getElementById("page");
  const down = ["j", "ArrowDown", "ArrowRight"].includes(event.key), up = ["k", "ArrowUp", "ArrowLeft"].includes(event.key);
  if (!page.hidden) {
    const i = Number(document.getElementById("question").dataset.index);
    if (down || up) location.hash = `q=${neighbour(i, down ? 1 : -1)}`;
    else if (event.key === "Escape") location.hash = "";
    else return;
  } else if (down || up) moveCursor(down ? 1 : -1);
  else if (event.key === "Enter" && cursor >= 0) location.hash = `q=${visible[cursor]}`;
  else if (event.key === "/") document.getElementById("search").focus();
  else return;
  event.preventDefault();
}

function main() {
  const list = el("div", {id: "list"}, summaryView(), domainView(), usageView(), sweepView(), tableView());
  document.getElementById("app").replaceChildren(el("header", {}, el("h1", {}, DATA.title)), list, el("div", {id: "page", hidden: true}));
  applyFilters();
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", route);
  document.getElementById("page").addEventListener("click", (e) => {
    if (e.target.id === "back") { e.preventDefault(); location.hash = ""; }
  });
  route();
  document.body.dataset.ready = "1";
}

main();
