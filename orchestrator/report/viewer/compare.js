// The comparison page: each run's accuracy on the common questions, every pair's paired
// difference with its interval, and the questions whose correctness differs (click a row for
// what each run's experts answered).
"use strict";

const RUNS = DATA.runs;

function signed(x) {
  return (x >= 0 ? "+" : "\u2212") + (100 * Math.abs(x)).toFixed(2);
}

function runsView() {
  return section("Runs", "runs", table(["run", "router", "aggregator", "k", "pool", "accuracy [95% Wilson interval]", "right"],
    RUNS.map((r) => [el("span", {title: r.path}, r.label), r.router, r.aggregator, r.k, r.pool, withInterval(r), `${r.correct} / ${r.n}`]), [3, 6], {id: "runs-table"}));
}

function pairsView() {
  const rows = DATA.pairs.map((p) => {
    const diff = el("span", {class: p.low > 0 ? "diff-pos" : p.high < 0 ? "diff-neg" : null},
      `${signed(p.estimate)} points [${signed(p.low)}, ${signed(p.high)}]`);
    return [`${RUNS[p.b].label} \u2212 ${RUNS[p.a].label}`, diff,
      p.low > 0 || p.high < 0 ? "yes" : "no", p.b_only, p.a_only];
  });
  const method = DATA.pairs.length ? DATA.pairs[0].method : "";
  return section("Paired differences", "pairs",
    el("p", {class: "note"}, `Accuracy difference on the ${DATA.n_common} common questions, in points, with a 95% interval by ${method} ` +
      "(questions resampled with replacement, both runs' marks kept together)."),
    table(["pair", "difference [95% interval]", "interval excludes 0", "first right, second wrong", "second right, first wrong"], rows, [3, 4], {id: "pairs-table"}));
}

function detail(q) {
  const kids = [el("pre", {class: "text question"}, q.question ?? "")];
  if (q.options.length) kids.push(el("ol", {class: "options", type: "A"}, q.options.map((o, j) => el("li", {class: letterOf(j) === q.gold ? "gold" : null}, o))));
  q.runs.forEach((r, n) => {
    kids.push(el("h4", {}, RUNS[n].label, ": final ", r.final_answer ?? "none", " ", badge(r.correct)));
    for (const o of r.outputs) {
      kids.push(el("div", {class: "output"}, el("p", {}, el("b", {}, o.expert), ` answered ${o.error ? "error: " + o.error : o.answer ?? "none extracted"} `, badge(o.right)),
        el("pre", {class: "text"}, o.text ?? "")));
    }
  });
  return el("td", {colspan: 4 + RUNS.length}, kids);
}

function questionsView() {
  const body = el("tbody", {id: "dbody"});
  const rows = DATA.questions.map((q) => {
    const row = el("tr", {class: "diffrow", "data-id": q.id},
      el("td", {class: "id"}, q.id), el("td", {}, q.domain ?? ""), el("td", {class: "qtext"}, shorten(q.question, 120)),
      el("td", {}, q.gold ?? "-"),
      q.runs.map((r) => el("td", {}, r.final_answer ?? "-", " ", badge(r.correct))));
    let open = null;
    row.addEventListener("click", () => {
      if (open) { open.remove(); open = null; } else { open = el("tr", {class: "detail"}, detail(q)); row.after(open); }
    });
    return {q, row};
  });
  const count = el("p", {id: "dcount", class: "note"});
  const filter = () => {
    const words = document.getElementById("dsearch").value.toLowerCase().split(/\s+/).filter(Boolean);
    const kept = rows.filter(({q}) => words.every((w) => [q.id, q.question, q.domain].join("\n").toLowerCase().includes(w)));
    body.replaceChildren(...kept.map((x) => x.row));
    count.textContent = `${kept.length} of ${DATA.questions.length} questions where the runs' correctness differs (of ${DATA.n_common} common questions)`;
  };
  const view = section("Questions where correctness differs", "differ",
    el("div", {class: "filters"}, el("input", {id: "dsearch", type: "search", placeholder: "search id, question, domain", oninput: filter})),
    count,
    el("table", {id: "dtable", class: "qtable"}, el("thead", {}, el("tr", {},
      ["id", "domain", "question", "gold", ...RUNS.map((r) => r.label)].map((h) => el("th", {}, h)))), body),
    el("p", {class: "note"}, "Click a row for each run's expert answers and texts."));
  return {view, filter};
}

function main() {
  const questions = questionsView();
  document.getElementById("app").replaceChildren(el("header", {}, el("h1", {}, DATA.title)),
    runsView(), pairsView(), questions.view);
  questions.filter();
  document.body.dataset.ready = "1";
}

main();
