/// The live dashboard: one HTML page, no build step and nothing fetched from elsewhere. It polls
/// `/api/status` every two seconds and draws, for each level of the federation, its numbers, the
/// held-out loss per cluster against tokens or time (SVG), tokens over time, the refusals by
/// kind, and the trainers with their state. Each drawn curve is a `path.curve` whose
/// `data-points` says how many points it has (what the browser test checks).
enum DashboardPage {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>FedLM dashboard</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330; }
  header { background: #1d2330; color: #fff; padding: 10px 20px; display: flex; gap: 20px; align-items: baseline; }
  header h1 { font-size: 18px; margin: 0; }
  #state { font-size: 12px; opacity: 0.8; }
  main { padding: 12px 20px; }
  section.level { background: #fff; border: 1px solid #dde1e7; border-radius: 6px; margin-bottom: 16px; padding: 12px 16px; }
  section.level h2 { font-size: 16px; margin: 0 0 8px; }
  .cards { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 10px; }
  .card { border: 1px solid #e3e6eb; border-radius: 4px; padding: 4px 10px; min-width: 90px; }
  .card b { display: block; font-size: 16px; }
  .card span { font-size: 11px; color: #5b6473; }
  .charts { display: flex; flex-wrap: wrap; gap: 16px; }
  .chart h3 { font-size: 13px; margin: 4px 0; }
  .chart svg { background: #fbfcfd; border: 1px solid #e3e6eb; }
  .legend { max-width: 460px; margin-top: 4px; }
  .note { max-width: 460px; font-size: 11px; color: #5b6473; margin: 2px 0 0; }
  .legend span { margin-right: 10px; font-size: 12px; white-space: nowrap; }
  table { border-collapse: collapse; font-size: 12px; margin-top: 8px; }
  th, td { padding: 2px 8px; text-align: right; border-bottom: 1px solid #eef0f3; }
  th:first-child, td:first-child, td.text { text-align: left; }
  .active { color: #18794e; } .silent { color: #b54708; } .gone { color: #8a94a6; }
  .problem { color: #b42318; }
  button { font-size: 12px; }
</style>
</head>
<body>
<header><h1 id="title">FedLM</h1><span id="state">loading…</span>
  <span style="margin-left:auto"><button id="axis">loss against time</button></span></header>
<main id="levels"></main>
<script>
"use strict";
const colors = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#65a30d", "#4b5563"];
let axis = "tokens", last = null, lastOk = 0;
document.getElementById("axis").onclick = () => {
  axis = axis === "tokens" ? "time" : "tokens";
  document.getElementById("axis").textContent = "loss against " + (axis === "tokens" ? "time" : "tokens");
  if (last) render(last);
};
const fmt = n => n >= 1e9 ? (n / 1e9).toFixed(2) + "G" : n >= 1e6 ? (n / 1e6).toFixed(2) + "M" : n >= 1e3 ? (n / 1e3).toFixed(1) + "k" : String(Math.round(n * 100) / 100);
const ago = s => s == null ? "–" : s < 60 ? Math.round(s) + " s" : s < 3600 ? Math.round(s / 60) + " min" : (s / 3600).toFixed(1) + " h";
function el(tag, attrs, text) {
  const ns = ["svg", "path", "line", "text", "g", "rect"].includes(tag) ? "http://www.w3.org/2000/svg" : null;
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}
// One SVG line chart: series = [{name, color, dashed, points: [[x, y], ...]}].
function chart(title, series, xLabel, xFormat, note) {
  const W = 460, H = 236, L = 50, R = 24, T = 10, B = 42;
  const box = el("div", {class: "chart"});
  box.append(el("h3", {}, title));
  const svg = el("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`});
  const all = series.flatMap(s => s.points);
  if (all.length === 0) { svg.append(el("text", {x: 20, y: H / 2, fill: "#8a94a6"}, "no points yet")); box.append(svg); return box; }
  let [x0, x1] = [Math.min(...all.map(p => p[0])), Math.max(...all.map(p => p[0]))];
  let [y0, y1] = [Math.min(...all.map(p => p[1])), Math.max(...all.map(p => p[1]))];
  if (x1 === x0) x1 = x0 + 1; if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R), sy = y => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4, x = x0 + (x1 - x0) * i / 4;
    svg.append(el("line", {x1: L, x2: W - R, y1: sy(y), y2: sy(y), stroke: "#eef0f3"}));
    svg.append(el("text", {x: L - 4, y: sy(y) + 4, "text-anchor": "end", "font-size": 10, fill: "#5b6473"}, fmt(y)));
    svg.append(el("text", {x: sx(x), y: H - B + 14, "text-anchor": "middle", "font-size": 10, fill: "#5b6473"}, xFormat(x)));
  }
  // The axis label centred below the tick labels, clear of them and of the legend under the chart.
  svg.append(el("text", {x: L + (W - L - R) / 2, y: H - 8, "text-anchor": "middle", "font-size": 11, fill: "#5b6473"}, xLabel));
  const legend = el("div", {class: "legend"});
  series.forEach((s, i) => {
    const c = s.color ?? colors[i % colors.length];
    const d = s.points.map((p, j) => (j ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join("");
    const attrs = {class: "curve", d, fill: "none", stroke: c, "stroke-width": 1.6, "data-series": s.name, "data-points": s.points.length};
    if (s.dashed) attrs["stroke-dasharray"] = "5 3";
    svg.append(el("path", attrs));
    legend.append(el("span", {style: `color:${c}`}, (s.dashed ? "╌ " : "━ ") + s.name));
  });
  box.append(svg, legend);
  if (note) box.append(el("p", {class: "note"}, note));
  return box;
}
function card(value, label) { const c = el("div", {class: "card"}); c.append(el("b", {}, value), el("span", {}, label)); return c; }
function level(data, start) {
  const s = el("section", {class: "level", "data-level": data.name});
  s.append(el("h2", {}, data.name));
  if (data.problem) { s.append(el("p", {class: "problem"}, data.problem)); return s; }
  const st = data.status, cv = data.curves;
  const cards = el("div", {class: "cards"});
  cards.append(card(st.version, "version"), card(st.newestCheckpoint ?? "–", "checkpoint"), card(st.accepted, "updates accepted"),
    card(st.refused, "refused"), card(fmt(st.tokens), "tokens"), card(st.meanStaleness.toFixed(2), "mean staleness"),
    card(ago(st.lastUpdateSeconds), "since last update"), card(data.activeTrainers + " / " + data.trainerCount, "trainers active"));
  if (st.adoptedFromAbove != null) cards.append(card(st.adoptedFromAbove, "adopted from above"));
  s.append(cards);
  const charts = el("div", {class: "charts"});
  // Time in minutes, or in seconds while the run is younger than two minutes.
  const span = Math.max(0, ...cv.progress.map(p => p.time - start)), unit = span < 120 ? 1 : 60, unitName = unit === 1 ? "seconds" : "minutes";
  const x = p => axis === "tokens" ? p.tokens : (p.time - start) / unit;
  // One colour per cluster: the global model's loss on it solid, the cluster's own model's dashed.
  const names = Object.keys(cv.losses).filter(n => n.includes("/")).sort((a, b) => a.split("/")[1].localeCompare(b.split("/")[1]) || b.localeCompare(a));
  const clusters = [...new Set(names.map(n => n.split("/")[1]))];
  const series = names.map(n => {
    const [kind, c] = n.split("/");
    return {name: (kind === "validation_loss" ? "global model on " : "own model of ") + c, color: colors[clusters.indexOf(c) % colors.length],
            dashed: kind === "personalized_loss", points: cv.losses[n].map(p => [x(p), p.value])};
  });
  const personal = names.some(n => n.startsWith("personalized_loss/"));
  const note = personal ? "Solid: the global model (with personal clusters, what a new cluster starts from), on each cluster's held-out text. "
    + "Dashed: each cluster's own model, the one its organisations train and receive." : null;
  charts.append(chart("held-out loss per cluster", series, axis === "tokens" ? "tokens" : unitName, axis === "tokens" ? fmt : v => v.toFixed(0), note));
  charts.append(chart("tokens accepted", [{name: "tokens", points: cv.progress.map(p => [(p.time - start) / unit, p.tokens])}], unitName, v => v.toFixed(0)));
  s.append(charts);
  const kinds = Object.entries(st.refusals);
  s.append(el("p", {}, kinds.length ? "refused: " + kinds.map(([k, n]) => k + " " + n).join(", ") : "no refusals"));
  const table = el("table", {class: "trainers"});
  const head = el("tr");
  ["trainer", "cluster", "state", "last contact", "accepted", "refused", "tokens", "tokens/s", "staleness"].forEach(h => head.append(el("th", {}, h)));
  table.append(head);
  for (const t of st.trainers) {
    const state = t.lastContactSeconds < 30 ? "active" : t.lastContactSeconds < 300 ? "silent" : "gone";
    const row = el("tr", {class: "trainer"});
    [[t.id, "text"], [t.cluster ?? "–", "text"], [state, state], [ago(t.lastContactSeconds)], [t.accepted], [t.refused], [fmt(t.tokens)],
     [t.tokensPerSecond == null ? "–" : fmt(t.tokensPerSecond)], [t.meanStaleness.toFixed(2)]].forEach(([v, c]) => row.append(el("td", c ? {class: c} : {}, v)));
    table.append(row);
  }
  s.append(table);
  if (data.trainerCount > st.trainers.length) s.append(el("p", {}, `the ${st.trainers.length} most recently heard of ${data.trainerCount} trainers`));
  return s;
}
function render(snapshot) {
  document.getElementById("title").textContent = "FedLM · " + snapshot.title;
  const start = Math.min(...snapshot.levels.flatMap(l => l.curves ? [l.curves.progress[0]?.time ?? snapshot.generatedAt] : [snapshot.generatedAt]));
  const root = document.getElementById("levels");
  root.replaceChildren(...snapshot.levels.map(l => level(l, start)));
}
async function poll() {
  try {
    const r = await fetch("api/status", {cache: "no-store"});
    if (!r.ok) throw new Error(r.status + " " + r.statusText);
    last = await r.json();
    lastOk = Date.now();
    render(last);
    document.getElementById("state").textContent = "live · data of " + new Date(last.generatedAt * 1000).toLocaleTimeString();
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (e) {
    document.getElementById("state").textContent = "cannot reach the aggregator (" + e.message + ")" + (lastOk ? ", showing data from " + new Date(lastOk).toLocaleTimeString() : "");
  }
  setTimeout(poll, 2000);
}
poll();
</script>
</body>
</html>
"""#
}
