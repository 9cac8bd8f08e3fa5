/**
 * The live dashboard served at `GET /`: one self-contained HTML page (inline
 * CSS and JS, canvas charts drawn by hand, no CDN, no web fonts), so it works
 * on an air-gapped host and the control endpoint's CSP can forbid every
 * outside load.
 *
 * The page polls `stats` (a relative URL, so it also works behind a path
 * prefix) every 500 ms with `fetch`, rather than using `/events`, because
 * `EventSource` cannot send an `Authorization` header when a token is set.
 *
 * Element ids that tests and users may rely on: `resident`, `remote`,
 * `budget`, `faults-rate`, `fetch-rate`, `evict-rate`, `p50`, `p99`,
 * `uptime`, `pids`, `backend`, `deficit`, `conn`, `peers`, `chart-memory`,
 * `chart-faults`, `chart-latency`, `resize-input`, `resize-btn`,
 * `detach-btn`, `msg`.
 *
 * @module
 */

import { PAGE_SIZE } from "../transport/store.ts";

/** The dashboard page, ready to serve as `text/html`. */
export const DASHBOARD_HTML: string = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>remora</title>
<link rel="icon" href="data:,">
<style>
  :root {
    --bg: #f6f7f9; --card: #ffffff; --fg: #1d2330; --muted: #6b7385; --line: #e3e6ec;
    --resident: #2f7de1; --remote: #e0833a; --budget: #7a8294; --faults: #8a4fd8;
    --fetch: #1fa37a; --up: #1f9d55; --down: #d64545; --draining: #d49a1f;
  }
  @media (prefers-color-scheme: dark) {
    :root {
      --bg: #14171d; --card: #1c2029; --fg: #e6e9ef; --muted: #9aa3b5; --line: #2c3240;
      --budget: #a0a8b8;
    }
  }
  * { box-sizing: border-box; }
  body {
    margin: 0; padding: 16px 20px 32px; background: var(--bg); color: var(--fg);
    font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  }
  header { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap; margin-bottom: 14px; }
  h1 { font-size: 20px; margin: 0; letter-spacing: 0.5px; }
  h2 { font-size: 13px; font-weight: 600; margin: 0 0 8px; color: var(--muted);
       text-transform: uppercase; letter-spacing: 0.6px; }
  .meta { color: var(--muted); }
  .meta b { color: var(--fg); font-weight: 600; }
  #conn { margin-left: auto; font-size: 13px; }
  #conn::before { content: ""; display: inline-block; width: 9px; height: 9px; border-radius: 50%;
                  background: var(--muted); margin-right: 6px; vertical-align: 0; }
  #conn.ok::before { background: var(--up); }
  #conn.bad::before { background: var(--down); }
  .cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px; margin-bottom: 12px; }
  @media (max-width: 700px) { .cards { grid-template-columns: repeat(2, 1fr); } }
  .card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
  .card .label { color: var(--muted); font-size: 12px; }
  .card .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; white-space: nowrap; }
  .card .sub { color: var(--muted); font-size: 12px; font-variant-numeric: tabular-nums; }
  .grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr)); gap: 12px; }
  .panel { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px; }
  canvas { width: 100%; height: 200px; display: block; }
  .legend { display: flex; gap: 14px; font-size: 12px; color: var(--muted); margin-top: 6px; }
  .legend i { display: inline-block; width: 14px; height: 3px; vertical-align: middle; margin-right: 5px; }
  table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
  th, td { text-align: left; padding: 5px 6px; border-bottom: 1px solid var(--line); }
  th { color: var(--muted); font-weight: 500; font-size: 12px; white-space: nowrap; }
  td.num, th.num { text-align: right; }
  .state { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; color: #fff; }
  .state.up { background: var(--up); } .state.down { background: var(--down); }
  .state.draining { background: var(--draining); }
  .empty { color: var(--muted); padding: 8px 0; }
  #peers { overflow-x: auto; }
  @media (min-width: 1000px) { .wide { grid-column: span 2; } }
  form { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
  input { font: inherit; padding: 6px 8px; width: 120px; border: 1px solid var(--line);
          border-radius: 6px; background: var(--bg); color: var(--fg); }
  button { font: inherit; padding: 6px 14px; border-radius: 6px; border: 1px solid var(--line);
           background: var(--resident); color: #fff; cursor: pointer; }
  button:disabled { opacity: 0.5; cursor: default; }
  button.danger { background: var(--down); }
  #msg { margin-top: 10px; min-height: 1.4em; color: var(--muted); }
  #msg.error { color: var(--down); }
  .controls { display: flex; gap: 24px; flex-wrap: wrap; align-items: center; }
</style>
</head>
<body>
<header>
  <h1>remora</h1>
  <span class="meta">backend <b id="backend">–</b></span>
  <span class="meta">pids <b id="pids">–</b></span>
  <span class="meta">up <b id="uptime">–</b></span>
  <span id="conn">connecting…</span>
</header>

<section class="cards">
  <div class="card"><div class="label">Resident</div><div class="value" id="resident">–</div>
    <div class="sub" id="resident-pages">&nbsp;</div></div>
  <div class="card"><div class="label">Remote</div><div class="value" id="remote">–</div>
    <div class="sub" id="remote-pages">&nbsp;</div></div>
  <div class="card"><div class="label">Local budget</div><div class="value" id="budget">–</div>
    <div class="sub" id="budget-pages">&nbsp;</div></div>
  <div class="card"><div class="label">Faults / s</div><div class="value" id="faults-rate">–</div>
    <div class="sub" id="faults-total">&nbsp;</div></div>
  <div class="card"><div class="label">Fetched / s</div><div class="value" id="fetch-rate">–</div>
    <div class="sub">pages from backend</div></div>
  <div class="card"><div class="label">Evicted / s</div><div class="value" id="evict-rate">–</div>
    <div class="sub">pages to backend</div></div>
  <div class="card"><div class="label">Fault latency p50</div><div class="value" id="p50">–</div>
    <div class="sub">p99 <span id="p99">–</span></div></div>
  <div class="card"><div class="label">Replication deficit</div><div class="value" id="deficit">–</div>
    <div class="sub">pages short of replicas</div></div>
  <div class="card"><div class="label">Prefetch hit rate</div><div class="value" id="prefetch-hits">–</div>
    <div class="sub" id="prefetch-counts">&nbsp;</div></div>
</section>

<section class="grid">
  <div class="panel">
    <h2>Memory (pages)</h2>
    <canvas id="chart-memory" aria-label="resident and remote pages over time"></canvas>
    <div class="legend"><span><i style="background:var(--resident)"></i>resident</span>
      <span><i style="background:var(--remote)"></i>remote</span>
      <span><i style="background:var(--budget)"></i>budget</span></div>
  </div>
  <div class="panel">
    <h2>Faults per second</h2>
    <canvas id="chart-faults" aria-label="faults per second over time"></canvas>
    <div class="legend"><span><i style="background:var(--faults)"></i>faults</span>
      <span><i style="background:var(--fetch)"></i>pages fetched</span></div>
  </div>
  <div class="panel">
    <h2>Fault latency <span id="latency-window" style="text-transform:none"></span></h2>
    <canvas id="chart-latency" aria-label="fault latency histogram"></canvas>
  </div>
  <div class="panel wide">
    <h2>Backend peers</h2>
    <div id="peers"><div class="empty">–</div></div>
  </div>
  <div class="panel">
    <h2>Control</h2>
    <div class="controls">
      <form id="resize-form">
        <label for="resize-input">Local budget</label>
        <input id="resize-input" name="local" placeholder="e.g. 16M" autocomplete="off">
        <button id="resize-btn" type="submit">Resize</button>
      </form>
      <button id="detach-btn" class="danger" type="button">Detach</button>
    </div>
    <div id="msg" role="status" aria-live="polite"></div>
  </div>
</section>

<script>
"use strict";
const PAGE = ${PAGE_SIZE};
const POLL_MS = 500;
const HISTORY = 240; // points kept: two minutes at 500 ms
const LAT_WINDOW_S = 10; // latency histogram shows the last 10 s when there were faults

const $ = (id) => document.getElementById(id);
const hist = { t: [], resident: [], remote: [], budget: [], faults: [], fetched: [] };
const latSnaps = []; // [{t, counts}] for the recent-window histogram
let prev = null;
let stopped = false;
let polling = null; // the AbortController of the poll in flight

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}
function fmtBytes(b) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i === 0 ? String(b) : b >= 100 ? b.toFixed(0) : b >= 10 ? b.toFixed(1) : b.toFixed(2)) + " " + u[i];
}
function fmtCount(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(2) + " G";
  if (n >= 1e6) return (n / 1e6).toFixed(2) + " M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + " k";
  return String(Math.round(n));
}
function fmtUs(us) {
  if (!(us > 0)) return "0 µs";
  if (us < 1000) return (us < 10 ? us.toFixed(1) : us.toFixed(0)) + " µs";
  if (us < 1e6) return (us / 1000).toFixed(us < 1e4 ? 2 : 1) + " ms";
  return (us / 1e6).toFixed(2) + " s";
}
function fmtDuration(s) {
  if (s < 60) return s.toFixed(1) + " s";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
  const two = (x) => String(x).padStart(2, "0");
  return h ? h + "h " + two(m) + "m" : m + "m " + two(sec) + "s";
}
function setText(id, text) {
  const el = $(id);
  if (el.textContent !== text) el.textContent = text;
}
function push(key, v) {
  hist[key].push(v);
  if (hist[key].length > HISTORY) hist[key].shift();
}

/** Prepares a canvas for crisp drawing at the device pixel ratio; returns its context and size. */
function surface(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  return { ctx, w, h };
}
/** Rounds a maximum up to 1, 2 or 5 times a power of ten, so axis labels read well. */
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}
function drawLines(canvas, lines, fmt) {
  const { ctx, w, h } = surface(canvas);
  const left = 56, right = 8, top = 8, bottom = 18;
  const pw = w - left - right, ph = h - top - bottom;
  let max = 0;
  for (const l of lines) for (const v of l.values) if (v > max) max = v;
  max = niceMax(max);
  ctx.strokeStyle = css("--line");
  ctx.fillStyle = css("--muted");
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const y = top + ph - (ph * i) / 4;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w - right, y); ctx.stroke();
    ctx.fillText(fmt((max * i) / 4), left - 6, y);
  }
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
  // The time axis grows with the history (at least 10 s) until it is full, so
  // a fresh page shows a readable chart instead of a sliver at the right edge.
  let n = 0;
  for (const l of lines) n = Math.max(n, l.values.length);
  const span = Math.max(n - 1, 20);
  ctx.fillText("-" + Math.round((span * POLL_MS) / 1000) + " s", left, h - 4);
  ctx.textAlign = "right";
  ctx.fillText("now", w - right, h - 4);
  for (const l of lines) {
    const m = l.values.length;
    if (m < 2) continue;
    ctx.strokeStyle = css(l.color);
    ctx.lineWidth = l.width || 2;
    ctx.setLineDash(l.dash || []);
    ctx.beginPath();
    for (let i = 0; i < m; i++) {
      const x = left + pw * (1 - (m - 1 - i) / span);
      const y = top + ph - (ph * l.values[i]) / max;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    }
    ctx.stroke();
    ctx.setLineDash([]);
  }
}
function boundLabel(us) {
  return us >= 1000 ? us / 1000 + "ms" : us + "µs";
}
function drawHistogram(canvas, bounds, counts, p50, p99) {
  const { ctx, w, h } = surface(canvas);
  const left = 8, right = 8, top = 22, bottom = 22;
  const pw = w - left - right, ph = h - top - bottom;
  const total = counts.reduce((a, b) => a + b, 0);
  const max = Math.max(1, ...counts);
  const n = counts.length, bw = pw / n;
  ctx.fillStyle = css("--muted");
  ctx.textAlign = "left";
  ctx.fillText(total ? "p50 " + fmtUs(p50) + "   p99 " + fmtUs(p99) + "   " + fmtCount(total) + " faults"
    : "no faults yet", left, 12);
  for (let i = 0; i < n; i++) {
    const bh = (ph * counts[i]) / max;
    ctx.fillStyle = css("--faults");
    ctx.fillRect(left + i * bw + 1, top + ph - bh, Math.max(1, bw - 2), bh);
  }
  ctx.strokeStyle = css("--line");
  ctx.beginPath(); ctx.moveTo(left, top + ph + 0.5); ctx.lineTo(w - right, top + ph + 0.5); ctx.stroke();
  ctx.fillStyle = css("--muted");
  ctx.textBaseline = "top";
  // Bucket edges at decades (1µs, 10µs, ...), skipping any that would touch
  // its neighbour, and the overflow bucket's label flush right.
  const last = ">" + boundLabel(bounds[bounds.length - 1]);
  const lastLeft = w - right - ctx.measureText(last).width;
  ctx.textAlign = "right";
  ctx.fillText(last, w - right, top + ph + 6);
  ctx.textAlign = "center";
  let prevRight = -Infinity;
  for (let i = 0; i < bounds.length; i++) {
    const b = bounds[i];
    if (Math.log10(b) % 1 !== 0) continue;
    const label = boundLabel(b), x = left + (i + 1) * bw, half = ctx.measureText(label).width / 2;
    if (x - half < prevRight + 8 || x + half > lastLeft - 8) continue;
    ctx.fillText(label, x, top + ph + 6);
    ctx.fillRect(x - 0.5, top + ph, 1, 4);
    prevRight = x + half;
  }
  ctx.textBaseline = "alphabetic";
}
/** Quantile from per-bucket counts, interpolated inside the bucket as the pager does. */
function quantile(bounds, counts, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (!total) return 0;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    const c = counts[i];
    if (seen + c >= rank && c > 0) {
      const lo = i === 0 ? 0 : bounds[i - 1];
      const hi = i < bounds.length ? bounds[i] : lo * 2;
      return lo + (hi - lo) * ((rank - seen) / c);
    }
    seen += c;
  }
  return bounds[bounds.length - 1];
}
function renderPeers(endpoints) {
  const box = $("peers");
  if (!endpoints.length) {
    box.innerHTML = '<div class="empty">Embedded store: no remote peers.</div>';
    return;
  }
  const table = document.createElement("table");
  table.innerHTML = '<thead><tr><th>endpoint</th><th>state</th><th class="num">requests</th>' +
    '<th class="num">median</th><th class="num">pages</th></tr></thead>';
  const body = document.createElement("tbody");
  for (const e of endpoints) {
    const tr = document.createElement("tr");
    const cells = [e.address, null, fmtCount(e.requests), fmtUs(e.medianLatencyUs), fmtCount(e.pages)];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      if (i === 1) {
        const badge = document.createElement("span");
        badge.className = "state " + e.state;
        badge.textContent = e.state;
        td.appendChild(badge);
      } else {
        td.textContent = text;
        if (i > 1) td.className = "num";
      }
      tr.appendChild(td);
    });
    body.appendChild(tr);
  }
  table.appendChild(body);
  box.replaceChildren(table);
}

function update(s) {
  const now = performance.now();
  const c = s.counters;
  let faultRate = 0, fetchRate = 0, evictRate = 0;
  if (prev) {
    const dt = (now - prev.now) / 1000;
    if (dt > 0) {
      faultRate = Math.max(0, (c.faults - prev.c.faults) / dt);
      fetchRate = Math.max(0, (c.pagesFetched - prev.c.pagesFetched) / dt);
      evictRate = Math.max(0, (c.pagesEvicted - prev.c.pagesEvicted) / dt);
    }
  }
  prev = { now, c };

  setText("backend", s.backend);
  setText("pids", s.pids.length ? s.pids.join(", ") : "none");
  setText("uptime", fmtDuration(s.uptimeSeconds));
  setText("resident", fmtBytes(s.residentPages * PAGE));
  setText("resident-pages", fmtCount(s.residentPages) + " pages");
  setText("remote", fmtBytes(s.remotePages * PAGE));
  setText("remote-pages", fmtCount(s.remotePages) + " pages");
  setText("budget", fmtBytes(s.budgetPages * PAGE));
  setText("budget-pages", fmtCount(s.budgetPages) + " pages, " +
    (s.budgetPages ? Math.round((100 * s.residentPages) / s.budgetPages) : 0) + "% used");
  setText("faults-rate", fmtCount(faultRate));
  setText("faults-total", fmtCount(c.faults) + " total");
  setText("fetch-rate", fmtCount(fetchRate));
  setText("evict-rate", fmtCount(evictRate));
  setText("deficit", fmtCount(s.store.replicationDeficit));
  // Hits over the prefetches whose fate is known (touched, or evicted untouched).
  const judged = c.prefetchHits + c.prefetchWasted;
  setText("prefetch-hits", judged ? Math.round((100 * c.prefetchHits) / judged) + "%" : "–");
  setText("prefetch-counts", fmtCount(c.pagesPrefetched) + " prefetched, " +
    fmtCount(c.prefetchWasted) + " wasted");

  push("t", now);
  push("resident", s.residentPages);
  push("remote", s.remotePages);
  push("budget", s.budgetPages);
  push("faults", faultRate);
  push("fetched", fetchRate);

  // Latency: the recent window when it saw faults, else everything since start.
  const lat = s.faultLatency;
  latSnaps.push({ t: now, counts: lat.counts.slice() });
  while (latSnaps.length > 1 && now - latSnaps[0].t > LAT_WINDOW_S * 1000) latSnaps.shift();
  const base = latSnaps[0].counts;
  let counts = lat.counts.map((v, i) => v - (base[i] || 0));
  let label = "(last " + LAT_WINDOW_S + " s)";
  if (!counts.some((v) => v > 0)) {
    counts = lat.counts.slice();
    label = "(since start)";
  }
  const p50 = quantile(lat.boundsUs, counts, 0.5), p99 = quantile(lat.boundsUs, counts, 0.99);
  setText("p50", fmtUs(p50));
  setText("p99", fmtUs(p99));
  setText("latency-window", label);

  drawAll(lat.boundsUs, counts, p50, p99);
  renderPeers(s.store.endpoints);
}
let lastHist = null;
function drawAll(bounds, counts, p50, p99) {
  if (bounds) lastHist = [bounds, counts, p50, p99];
  drawLines($("chart-memory"), [
    { values: hist.remote, color: "--remote" },
    { values: hist.resident, color: "--resident" },
    // Dashed and drawn last: a full budget sits right on the resident line.
    { values: hist.budget, color: "--budget", dash: [5, 4], width: 1.5 },
  ], fmtCount);
  drawLines($("chart-faults"), [
    { values: hist.fetched, color: "--fetch" },
    { values: hist.faults, color: "--faults" },
  ], fmtCount);
  if (lastHist) drawHistogram($("chart-latency"), ...lastHist);
}

function setConn(ok, why) {
  if (stopped) return; // a poll that was in flight when detach finished
  const el = $("conn");
  el.className = ok ? "ok" : "bad";
  el.textContent = ok ? "live" : "disconnected" + (why ? " (" + why + ")" : "");
}
function say(text, isError) {
  const el = $("msg");
  el.textContent = text;
  el.className = isError ? "error" : "";
}
async function post(path, body) {
  const r = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await r.json().catch(() => ({ error: "HTTP " + r.status }));
  if (!r.ok) throw new Error(data.error || "HTTP " + r.status);
  return data;
}

async function poll() {
  if (stopped) return;
  try {
    polling = new AbortController();
    const r = await fetch("stats", { cache: "no-store", signal: polling.signal });
    if (!r.ok) {
      const data = await r.json().catch(() => ({}));
      throw new Error(data.error || "HTTP " + r.status);
    }
    const s = await r.json();
    if (stopped) return;
    update(s);
    setConn(true);
  } catch (e) {
    setConn(false, e.message);
  } finally {
    if (!stopped) setTimeout(poll, POLL_MS);
  }
}

$("resize-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const value = $("resize-input").value.trim();
  if (!value) return say("Type a size such as 16M, 512K or 1G.", true);
  $("resize-btn").disabled = true;
  say("Resizing to " + value + "…");
  try {
    const s = await post("resize", { local: value });
    say("Local budget is now " + fmtBytes(s.budgetPages * PAGE) + ".");
    update(s);
  } catch (e) {
    say("Resize failed: " + e.message, true);
  } finally {
    $("resize-btn").disabled = false;
  }
});
$("detach-btn").addEventListener("click", async () => {
  if (!confirm("Detach? Every page goes back into the target and the pager exits.")) return;
  $("detach-btn").disabled = true;
  $("resize-btn").disabled = true;
  say("Detaching: putting every page back…");
  // The pager exits as soon as it answers: a poll still in flight then would
  // fail with a reset connection, so polling ends before the request goes.
  stopped = true;
  polling?.abort();
  try {
    const s = await post("detach", {});
    update(s);
    say("Detached: " + fmtCount(s.counters.pagesRestored) + " pages restored. The pager has exited.");
    const el = $("conn");
    el.className = "";
    el.textContent = "detached";
  } catch (e) {
    say("Detach failed: " + e.message, true);
    $("detach-btn").disabled = false;
    $("resize-btn").disabled = false;
    stopped = false;
    poll();
  }
});
window.addEventListener("resize", () => drawAll());
poll();
</script>
</body>
</html>
`;
