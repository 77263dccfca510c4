// Shared by every studio page: navigation, API calls, escaping, and an SVG line chart.
"use strict";
const PAGES = [["index.html", "Runs"], ["new.html", "New job"], ["data.html", "Data"],
               ["compare.html", "Compare"], ["playground.html", "Playground"]];
const COLOURS = ["#0b5fff", "#d93025", "#188038", "#e37400", "#9334e6", "#00838f"];

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

function header() {
  const here = location.pathname.split("/").pop() || "index.html";
  const links = PAGES.map(([href, name]) =>
    `<li><a href="${href}"${href === here ? ' aria-current="page"' : ""}>${name}</a></li>`).join("");
  document.body.insertAdjacentHTML("afterbegin",
    `<header><span class="brand">strop studio</span><nav aria-label="Studio pages"><ul>${links}</ul></nav></header>`);
}

// Every request says it comes from the studio: the service refuses a state-changing request
// authenticated by the cookie alone without this header, which no other site's page can add.
const STUDIO = {"X-Strop-Studio": "1"};

async function api(path, options = {}) {
  const res = await fetch(path, {credentials: "same-origin", ...options, headers: {...STUDIO, ...(options.headers || {})}});
  if (res.status === 401) { location.href = "login.html?next=" + encodeURIComponent(location.pathname + location.search); throw new Error("login needed"); }
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : await res.text();
  if (!res.ok) throw new Error(body?.error?.message || `HTTP ${res.status}`);
  return body;
}

function postJSON(path, data) {
  return api(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(data)});
}

function say(el, text, kind = "") { el.textContent = text; el.className = "msg " + kind; }

function when(t) { return t ? new Date(t * 1000).toLocaleString() : ""; }

function statusCell(s) { return `<span class="status ${esc(s)}">${esc(s)}</span>`; }

// series: [{name, points: [[x, y], ...]}]; draws axes, one polyline per series, and a legend.
function lineChart(el, series, {xLabel = "step", yLabel = "loss"} = {}) {
  const W = 640, H = 280, L = 52, R = 12, T = 12, B = 36;
  const pts = series.flatMap(s => s.points);
  if (!pts.length) { el.innerHTML = `<p class="msg">No ${esc(yLabel)} logged yet.</p>`; return; }
  let [x0, x1] = [Math.min(...pts.map(p => p[0])), Math.max(...pts.map(p => p[0]))];
  let [y0, y1] = [Math.min(...pts.map(p => p[1])), Math.max(...pts.map(p => p[1]))];
  if (x0 === x1) x1 = x0 + 1; if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R), sy = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const ticks = [0, 0.25, 0.5, 0.75, 1].map(f => y0 + f * (y1 - y0));
  const grid = ticks.map(v => `<line x1="${L}" x2="${W - R}" y1="${sy(v)}" y2="${sy(v)}" stroke="#eee"/>` +
    `<text x="${L - 6}" y="${sy(v) + 4}" text-anchor="end" font-size="11">${v.toFixed(3)}</text>`).join("");
  const lines = series.map((s, i) => s.points.length ? `<polyline fill="none" stroke-width="2" stroke="${COLOURS[i % COLOURS.length]}" points="${
    s.points.map(p => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ")}"/>` : "").join("");
  const title = `${yLabel} by ${xLabel}: ` + series.map(s => s.name).join(", ");
  el.innerHTML = `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">${grid}
    <line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="#999"/><line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="#999"/>
    <text x="${L}" y="${H - 8}" font-size="11">${x0}</text><text x="${W - R}" y="${H - 8}" font-size="11" text-anchor="end">${x1}</text>
    <text x="${(L + W) / 2}" y="${H - 8}" font-size="12" text-anchor="middle">${esc(xLabel)}</text>${lines}</svg>
    <div class="legend">${series.map((s, i) => `<span style="--c:${COLOURS[i % COLOURS.length]}">${esc(s.name)}</span>`).join("")}</div>`;
}

function lossPoints(rows, key = "loss") {
  return rows.filter(r => typeof r[key] === "number").map(r => [r.step, r[key]]);
}

// Stream a chat completion (SSE), calling onText with each piece; resolves to the full text.
async function streamChat(model, messages, onText) {
  const res = await fetch("/v1/chat/completions", {method: "POST", credentials: "same-origin",
    headers: {...STUDIO, "Content-Type": "application/json"},
    body: JSON.stringify({model, messages, stream: true, max_tokens: 64})});
  if (!res.ok) { const b = await res.json().catch(() => ({})); throw new Error(b?.error?.message || `HTTP ${res.status}`); }
  const reader = res.body.getReader(), decoder = new TextDecoder();
  let buffer = "", text = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).trim(); buffer = buffer.slice(cut + 2);
      if (!line.startsWith("data: ")) continue;
      const data = line.slice(6);
      if (data === "[DONE]") return text;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const piece = chunk.choices?.[0]?.delta?.content;
      if (piece) { text += piece; onText(text); }
    }
  }
  return text;
}

document.addEventListener("DOMContentLoaded", header);
