// cnnkit demo page: draws what the server streams (server-sent events from /api/events) and
// sends the few POSTs that steer training. Plain JS, no libraries (works offline).
"use strict";

const S = { run: null, grid: null, points: [], epochs: [], status: {}, snapshot: null, selected: 0 };
window.cnnkitDemo = S;  // for the end-to-end test and the curious

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function bytes(b64) {
  const s = atob(b64), a = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);
  return a;
}

// uint8 pixels (h, w, c) with c = 1 (grey) or 3 (RGB), from offset -> an offscreen canvas
function pixels(data, h, w, c, offset = 0) {
  const cv = document.createElement("canvas");
  cv.width = w; cv.height = h;
  const ctx = cv.getContext("2d"), img = ctx.createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    const o = offset + i * c;
    img.data[4 * i] = data[o];
    img.data[4 * i + 1] = data[c === 3 ? o + 1 : o];
    img.data[4 * i + 2] = data[c === 3 ? o + 2 : o];
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return cv;
}

function blit(ctx, src, x, y, w, h) {
  ctx.imageSmoothingEnabled = false;  // keep pixels square: an 8x8 slice stays readable
  ctx.drawImage(src, x, y, w, h);
}

// --- curves ---------------------------------------------------------------------------------
function ema(values, alpha) {
  const out = []; let m = null;
  for (const v of values) { m = m === null ? v : m + alpha * (v - m); out.push(m); }
  return out;
}

function plot(canvas, series, yLabel, yMax, legendBelow) {
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  const L = 48, R = 12, T = 10, B = 30;
  ctx.clearRect(0, 0, W, H);
  let x0 = Infinity, x1 = -Infinity;
  for (const s of series) for (const x of s.x) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); }
  if (!isFinite(x0)) { x0 = 0; x1 = 1; }
  if (x1 === x0) x1 = x0 + 1;
  const y0 = 0, y1 = yMax > 0 ? yMax : 1;
  const px = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const py = (y) => T + (1 - (Math.min(y, y1) - y0) / (y1 - y0)) * (H - T - B);
  ctx.strokeStyle = "#e3e7ee"; ctx.fillStyle = "#667085"; ctx.font = "11px sans-serif"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    ctx.beginPath(); ctx.moveTo(L, py(y)); ctx.lineTo(W - R, py(y)); ctx.stroke();
    ctx.textAlign = "right"; ctx.fillText(y1 <= 1 ? y.toFixed(2) : y.toFixed(1), L - 5, py(y) + 4);
  }
  ctx.textAlign = "center";
  for (let i = 0; i <= 4; i++) {
    const x = x0 + (x1 - x0) * i / 4;
    ctx.fillText(String(Math.round(x)), px(x), H - B + 15);
  }
  ctx.fillText("step", (L + W - R) / 2, H - 3);
  ctx.save(); ctx.translate(11, (T + H - B) / 2); ctx.rotate(-Math.PI / 2); ctx.fillText(yLabel, 0, 0); ctx.restore();
  let ly = legendBelow ? H - B - 8 - 14 * (series.filter((s) => s.label && s.x.length).length - 1) : T + 12;
  for (const s of series) {
    if (!s.x.length) continue;
    ctx.strokeStyle = s.color; ctx.fillStyle = s.color; ctx.lineWidth = s.width || 1.5;
    ctx.globalAlpha = s.alpha || 1;
    ctx.beginPath();
    s.x.forEach((x, i) => { const X = px(x), Y = py(s.y[i]); i ? ctx.lineTo(X, Y) : ctx.moveTo(X, Y); });
    ctx.stroke();
    if (s.dots) s.x.forEach((x, i) => { ctx.beginPath(); ctx.arc(px(x), py(s.y[i]), 3, 0, 7); ctx.fill(); });
    ctx.globalAlpha = 1;
    if (s.label) {
      ctx.textAlign = "right"; ctx.fillText(s.label, W - R - 4, ly); ly += 14;
    }
  }
}

let curvesQueued = false;
function drawCurves() {
  if (curvesQueued) return;
  curvesQueued = true;
  requestAnimationFrame(() => {
    curvesQueued = false;
    const P = S.points, steps = P.map((p) => p[1]);
    const loss = P.map((p) => p[2]), acc = P.map((p) => p[3]);
    const alpha = P.length > 200 ? 0.03 : 0.1;
    const lossAvg = ema(loss, alpha);
    let top = 0;
    for (const v of lossAvg) top = Math.max(top, v);
    plot($("loss"), [
      { x: steps, y: loss, color: "#1f6feb", width: 1, alpha: 0.25 },
      { x: steps, y: lossAvg, color: "#1f6feb", width: 2.2, label: "loss (moving average)" },
    ], "softmax loss", top * 1.15 || 1);
    const E = S.epochs;
    plot($("acc"), [
      { x: steps, y: ema(acc, alpha), color: "#1f6feb", width: 2, label: "training batches" },
      { x: E.filter((e) => e.val_acc !== null).map((e) => e.step),
        y: E.filter((e) => e.val_acc !== null).map((e) => e.val_acc), color: "#e8710a", dots: true,
        label: "validation" },
      { x: E.filter((e) => e.test_acc !== null).map((e) => e.step),
        y: E.filter((e) => e.test_acc !== null).map((e) => e.test_acc), color: "#2e7d32", dots: true,
        label: "test" },
    ], "accuracy", 1, true);  // accuracy climbs to the top: its legend goes below
    $("loss").dataset.points = String(P.length);
    $("acc").dataset.points = String(P.length);
  });
}

// --- the network, the pictures, the grid --------------------------------------------------------
function drawNet() {
  const box = $("net");
  box.replaceChildren();
  S.run.layers.forEach((l, i) => {
    if (i) box.append(el("span", "arrow", "→"));
    const b = el("div", l.depth ? "layer inner" : "layer");
    b.append(el("b", "", l.layer), el("span", "", "[" + l.volume + "]"));
    if (l.params) b.title = l.params.toLocaleString() + " parameters";
    box.append(b);
  });
}

function drawActivations() {
  const snap = S.snapshot, cv = $("activations");
  if (!snap || !snap.volumes.length) return;
  const vols = snap.volumes, scores = vols[vols.length - 1], body = vols.slice(0, -1);
  // as many rows as the deepest volume shows (at most 8), so a small net leaves no blank band
  const rows = Math.max(3, Math.min(8, ...body.map((v) => (v.kind === "slices" ? v.n : 3))));
  const cell = 58, gap = 6, head = 40, colW = cell + 14;
  const img = S.grid.images[snap.selected];
  cv.width = colW * (body.length + 1) + 190;
  cv.height = head + rows * (cell + gap) + 16;
  const ctx = cv.getContext("2d");
  ctx.fillStyle = "white"; ctx.fillRect(0, 0, cv.width, cv.height);
  ctx.fillStyle = "#1d2330"; ctx.font = "11px sans-serif"; ctx.textAlign = "center";
  const fit = (text, width) => {  // cut a long name (a RES[...] block) to its column
    let t = text;
    while (t.length > 4 && ctx.measureText(t).width > width) t = t.slice(0, -2) + "…";
    return t;
  };
  const label = (text, x, width = colW - 4) => {
    const [name, vol] = text.split(" [");
    ctx.fillText(fit(name, width), x, 14); ctx.fillText("[" + (vol || ""), x, 28);
  };
  label("image [" + img.w + "x" + img.h + "x" + img.c + "]", colW / 2);
  blit(ctx, pixels(bytes(img.data), img.h, img.w, img.c), 7, head, cell, cell);
  body.forEach((v, k) => {
    const x = colW * (k + 1) + 7, data = bytes(v.data);
    label(v.label, x + cell / 2);
    if (v.kind === "slices") {
      const n = Math.min(v.n, rows);
      for (let r = 0; r < n; r++) blit(ctx, pixels(data, v.h, v.w, 1, r * v.h * v.w), x, head + r * (cell + gap), cell, cell);
      if (v.total > n) { ctx.fillStyle = "#667085"; ctx.fillText("+" + (v.total - n) + " more", x + cell / 2, cv.height - 4); ctx.fillStyle = "#1d2330"; }
    } else {  // a flat vector: one tall strip, one row per value
      const hgt = rows * (cell + gap) - gap;
      blit(ctx, pixels(data, v.n, 1, 1), x + cell / 2 - 8, head, 16, hgt);
      if (v.total > v.n) { ctx.fillStyle = "#667085"; ctx.fillText("first " + v.n, x + cell / 2, cv.height - 4); ctx.fillStyle = "#1d2330"; }
    }
  });
  // the class scores: top-5 softmax bars
  const x = colW * (body.length + 1) + 8, bw = 120;
  label(scores.label, x + 80, 170);
  ctx.textAlign = "left";
  snap.top5.forEach(([name, p], i) => {
    const y = head + 10 + i * 30;
    ctx.fillStyle = i ? "#1f6feb" : "#c62828";
    ctx.fillRect(x + 46, y, Math.max(1, (p || 0) * bw), 18);
    ctx.fillStyle = "#1d2330";
    ctx.fillText(String(name).slice(0, 7), x, y + 13);
    ctx.fillText(p === null ? "n/a" : p.toFixed(2), x + 50 + Math.max(1, (p || 0) * bw), y + 13);
  });
  ctx.textAlign = "center";
  cv.dataset.step = String(snap.step);
}

function drawFilters() {
  const f = S.snapshot && S.snapshot.filters, cv = $("filters");
  if (!f) { $("filters-title").textContent = "First-layer filters: this net has no CONV layer"; return; }
  $("filters-title").textContent = "First CONV layer's filters: " + f.title.replace(/^layer \S+: /, "");
  $("filters-note").textContent = f.note ? "(" + f.note + ")" : "";
  const scale = Math.max(2, Math.min(24, Math.floor(600 / Math.max(f.w, f.h))));
  cv.width = f.w * scale; cv.height = f.h * scale;
  blit(cv.getContext("2d"), pixels(bytes(f.data), f.h, f.w, f.c), 0, 0, cv.width, cv.height);
}

function buildGrid() {
  const box = $("grid");
  box.replaceChildren();
  S.grid.images.forEach((im, i) => {
    const c = el("div", "cell"), cv = pixels(bytes(im.data), im.h, im.w, im.c);
    c.dataset.index = String(i);
    c.append(cv, el("div", "pred", "…"), el("div", "top3", ""));
    c.addEventListener("click", () => post("/api/select", { index: i }).then(() => markSelected(i)));
    box.append(c);
  });
}

function markSelected(i) {
  S.selected = i;
  document.querySelectorAll(".cell").forEach((c) => c.classList.toggle("selected", Number(c.dataset.index) === i));
}

function drawGrid() {
  const snap = S.snapshot;
  if (!snap) return;
  const cells = document.querySelectorAll(".cell");
  snap.grid.forEach((g, i) => {
    const c = cells[i];
    if (!c) return;
    const pred = c.querySelector(".pred");
    pred.textContent = g.pred + (g.right ? " ✓" : " ✗ (" + S.grid.labels[i] + ")");
    pred.className = "pred " + (g.right ? "right" : "wrong");
    c.querySelector(".top3").textContent = g.top3.map(([n, p]) => String(n).slice(0, 8) + " " + (p === null ? "n/a" : p.toFixed(2))).join("\n");
  });
  markSelected(snap.selected);
}

// --- status ---------------------------------------------------------------------------------------
function showStatus() {
  const st = S.status, badge = $("status");
  badge.textContent = st.state || "…";
  badge.className = "badge " + (st.state || "");
  $("pause").textContent = st.state === "paused" ? "Resume" : "Pause";
  $("pause").disabled = !(st.state === "training" || st.state === "paused");
  if (st.message) { $("message").textContent = st.message; $("message").className = "message" + (st.state === "error" ? " bad" : ""); }
  if (document.activeElement !== $("lr") && st.lr) $("lr").value = String(st.lr);
}

function showProgress() {
  const P = S.points, last = P[P.length - 1], run = S.run;
  if (!last || !run) return;
  const epoch = last[5];
  $("progress").textContent = "step " + last[1] + " · epoch " + epoch + "/" + run.epochs + " · loss " +
    last[2].toFixed(4) + " · lr " + Number(last[4]).toPrecision(3);
}

function reset(st) {
  Object.assign(S, { run: st.run, grid: st.grid, points: st.points, epochs: st.epochs, status: st.status,
                     snapshot: st.snapshot });
  $("spec").textContent = st.run.spec;
  $("data").textContent = st.run.data;
  $("params").textContent = st.run.params.toLocaleString();
  $("rundir").textContent = st.run.run_dir;
  if (!$("newspec").value) $("newspec").value = st.run.spec;
  drawNet(); buildGrid(); showStatus(); showProgress(); drawCurves();
  if (st.snapshot) { drawActivations(); drawFilters(); drawGrid(); }
}

// --- talking to the server ---------------------------------------------------------------------------
async function post(url, body) {
  const r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" },
                               body: JSON.stringify(body) });
  let data = {};
  try { data = await r.json(); } catch (e) { data = { error: "the server answered " + r.status }; }
  if (!r.ok) throw new Error(data.error || ("the server answered " + r.status));
  return data;
}

function say(text, bad) { $("message").textContent = text; $("message").className = "message" + (bad ? " bad" : ""); }

function connect() {
  const es = new EventSource("/api/events");
  es.addEventListener("reset", (e) => reset(JSON.parse(e.data)));
  es.addEventListener("points", (e) => {
    const d = JSON.parse(e.data);
    if (!S.run || d.run_id !== S.run.id) return;
    for (const p of d.points) S.points.push(p);
    drawCurves(); showProgress();
  });
  es.addEventListener("epochs", (e) => {
    const d = JSON.parse(e.data);
    if (!S.run || d.run_id !== S.run.id) return;
    for (const ep of d.epochs) S.epochs.push(ep);
    drawCurves();
  });
  es.addEventListener("status", (e) => { S.status = JSON.parse(e.data); showStatus(); });
  es.addEventListener("snapshot", (e) => {
    S.snapshot = JSON.parse(e.data);
    if (S.snapshot) { drawActivations(); drawFilters(); drawGrid(); }
  });
  es.onerror = () => { $("status").textContent = "reconnecting"; $("status").className = "badge"; };
}

document.addEventListener("DOMContentLoaded", () => {
  $("pause").addEventListener("click", () => {
    const url = S.status.state === "paused" ? "/api/resume" : "/api/pause";
    post(url, {}).catch((e) => say(e.message, true));
  });
  $("setlr").addEventListener("click", () => {
    const v = Number($("lr").value);
    post("/api/lr", { lr: v }).then((d) => say("learning rate " + d.lr + " from the next step"))
      .catch((e) => say(e.message, true));
  });
  $("train").addEventListener("click", () => {
    const err = $("spec-error"), msg = $("train-msg");
    err.hidden = true; msg.textContent = "checking the net…"; $("train").disabled = true;
    post("/api/model", { spec: $("newspec").value })
      .then((d) => { msg.textContent = "training a new net: " + d.params.toLocaleString() + " parameters"; })
      .catch((e) => { msg.textContent = ""; err.textContent = e.message; err.hidden = false; })
      .finally(() => { $("train").disabled = false; });
  });
  connect();
});
