// The search page: upload or click an image, show the top-k with scores, local evidence and ground
// truth; the v slider re-orders the shortlist from the JSON already received (no new request).
"use strict";
const settings = JSON.parse(document.getElementById("settings").textContent);
const $ = (id) => document.getElementById(id);
let current = null;        // the last /api/search answer
let queryImageURL = null;  // where the query image is shown from (an object URL for uploads)
let browse = {which: "database", offset: 0, limit: 48, total: 0};

function status(text, isError) {
  const el = $("status");
  el.textContent = text || "";
  el.className = isError ? "error" : "";
}

async function call(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = {error: response.statusText}; }
  if (!response.ok) throw new Error(body && body.error ? body.error : ("HTTP " + response.status));
  return body;
}

function k() { return Math.max(1, Math.min(200, parseInt($("k").value || settings.k, 10))); }
function v() { return parseFloat($("v-slider").value); }
// the filter box: conditions separated by ';', each sent as one repeated `where` parameter
function where() {
  const box = $("where");
  return box ? box.value.split(";").map((w) => w.trim()).filter((w) => w.length) : [];
}
function whereQuery() { return where().map((w) => "&where=" + encodeURIComponent(w)).join(""); }

async function searchId(id, push) {
  status("searching " + id + " ...");
  try {
    const result = await call(`/api/search?id=${encodeURIComponent(id)}&k=${k()}&v=${v()}${whereQuery()}`);
    queryImageURL = result.query.image;
    if (push !== false) history.pushState({id: id}, "", "/?id=" + encodeURIComponent(id));
    show(result);
  } catch (e) { status(e.message, true); }
}

async function searchUpload(file) {
  if (file.size > settings.maxBytes) {
    status(`${file.name}: ${file.size} bytes is more than the ${settings.maxBytes} bytes an upload may have`, true);
    return;
  }
  status("uploading " + file.name + " ...");
  const form = new FormData();
  form.append("file", file);
  form.append("k", k());
  form.append("v", v());
  for (const w of where()) form.append("where", w);
  try {
    const result = await call("/api/search", {method: "POST", body: form});
    if (queryImageURL && queryImageURL.startsWith("blob:")) URL.revokeObjectURL(queryImageURL);
    queryImageURL = URL.createObjectURL(file);
    show(result);
  } catch (e) { status(e.message, true); }
}

// AP@k over the shown order with junk removed, divided by min(positives, k), as the server's
// retrieval.evaluation.metrics.average_precision_at_k (GLDv2 / Kaggle)
function apAtK(items, positives, k) {
  let hits = 0, rank = 0, sum = 0;
  for (const it of items) {
    if (it.label === "junk") continue;
    rank += 1;
    if (it.label === "positive") { hits += 1; sum += hits / rank; }
  }
  return positives ? sum / Math.min(positives, k) : null;
}

function ordered(result) {
  const items = result.results.slice();
  if (!result.local) return items;
  const weight = v();
  for (const it of items) it.fusedNow = weight * it.score + (1 - weight) * it.local_norm;
  // descending fused score; ties keep the global order (as rerank.fusion_order)
  return items.sort((a, b) => (b.fusedNow - a.fusedNow) || (a.rank - b.rank));
}

function show(result) {
  current = result;
  $("query-panel").hidden = false;
  $("matches-panel").hidden = true;
  $("query-image").src = queryImageURL || "";
  const q = result.query;
  $("query-caption").textContent = (q.kind === "upload" ? (q.name || "upload") : q.id) +
      ` (${q.kind}${q.keypoints != null ? ", " + q.keypoints + " keypoints" : ""})`;
  status(`${result.k} results` + (result.local ? `; local evidence: ${result.local.method}` : ""));
  render();
}

function render() {
  if (!current) return;
  const result = current;
  const items = ordered(result);
  const grid = $("results");
  grid.innerHTML = "";
  items.forEach((it, position) => {
    const card = document.createElement("div");
    card.className = "result " + (it.label || "unlabelled");
    card.dataset.id = it.id;
    card.dataset.rank = String(position + 1);
    const img = document.createElement("img");
    img.alt = it.id;
    if (it.image) img.src = it.image + "?size=160";
    img.title = "search with this image";
    img.addEventListener("click", () => searchId(it.id));
    card.appendChild(img);
    const lines = [`#${position + 1} <b>${escapeHTML(it.id)}</b>`, `global ${it.score.toFixed(4)}`];
    if (result.local) {
      lines.push(`${result.local.method} ${it.local_missing ? "n/a" : fmt(it.local)}`);
      lines.push(`fused ${it.fusedNow.toFixed(4)} <span class="muted">(global #${it.rank})</span>`);
    }
    if (it.metadata) {
      const meta = Object.entries(it.metadata).filter(([key]) => key !== "path")
        .map(([key, value]) => `${escapeHTML(key)}: ${escapeHTML(value)}`);
      if (meta.length) lines.push(`<span class="muted">${meta.join("<br>")}</span>`);
    }
    if (it.label) lines.push(`<span class="tag">${it.label === "positive" ? "right" : it.label === "junk" ? "junk" : "wrong"}</span>`);
    const text = document.createElement("div");
    text.innerHTML = lines.join("<br>");
    card.appendChild(text);
    if (result.local && !it.local_missing) {
      const button = document.createElement("button");
      button.textContent = "matches";
      button.className = "matches";
      button.addEventListener("click", () => drawMatches(it.id));
      card.appendChild(button);
    }
    grid.appendChild(card);
  });
  const ap = $("ap");
  if (result.truth) {
    const positives = result.truth.positives;
    const global = apAtK(result.results, positives, result.k);
    let text = `AP (global) ${fmtAP(global)}`;
    if (result.local) text += ` &middot; AP (fused, v = ${v().toFixed(2)}) <b id="ap-fused">${fmtAP(apAtK(items, positives, result.k))}</b>`;
    ap.innerHTML = text + ` <span class="muted">AP@${result.k}: ${positives} positives, junk removed, divided by min(positives, k)</span>`;
  } else {
    ap.innerHTML = '<span class="muted">no ground truth for this query</span>';
  }
}

function fmt(x) { return Number.isInteger(x) ? String(x) : x.toFixed(3); }
function fmtAP(x) { return x == null ? "-" : x.toFixed(4); }
function escapeHTML(s) { return s.replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c])); }

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("could not load " + src));
    img.src = src;
  });
}

async function drawMatches(dbId) {
  if (!current) return;
  status("matching " + dbId + " ...");
  try {
    const m = await call(`/api/matches?query=${encodeURIComponent(current.query.id)}&db=${encodeURIComponent(dbId)}`);
    const dbItem = current.results.find((r) => r.id === dbId);
    const [qi, di] = await Promise.all([loadImage(queryImageURL), loadImage(dbItem.image)]);
    const height = 320;
    const qw = qi.width * height / qi.height, dw = di.width * height / di.height;
    const canvas = $("matches-canvas");
    canvas.width = Math.round(qw + dw + 10);
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(qi, 0, 0, qw, height);
    ctx.drawImage(di, qw + 10, 0, dw, height);
    ctx.lineWidth = 1;
    for (const [x1, y1, x2, y2, inlier] of m.lines) {
      ctx.strokeStyle = inlier ? "rgba(0,200,60,0.85)" : "rgba(230,40,40,0.35)";
      ctx.beginPath();
      ctx.moveTo(x1 * qw, y1 * height);
      ctx.lineTo(qw + 10 + x2 * dw, y2 * height);
      ctx.stroke();
    }
    $("matches-title").textContent = `${m.method}: ${m.inliers} of ${m.matches} matches (query ${m.query_keypoints}, ${dbId} ${m.db_keypoints} keypoints)`;
    $("matches-panel").hidden = false;
    status("");
  } catch (e) { status(e.message, true); }
}

async function loadBrowse() {
  try {
    const page = await call(`/api/images?which=${browse.which}&offset=${browse.offset}&limit=${browse.limit}`);
    browse.total = page.total;
    const grid = $("browse-grid");
    grid.innerHTML = "";
    for (const it of page.items) {
      const img = document.createElement("img");
      img.className = "thumb browse-item";
      img.dataset.id = it.id;
      img.alt = it.id;
      img.title = it.id;
      if (it.image) img.src = it.image + "?size=96";
      img.addEventListener("click", () => { window.scrollTo(0, 0); searchId(it.id); });
      grid.appendChild(img);
    }
    const last = Math.min(browse.offset + browse.limit, browse.total);
    $("page-info").textContent = `${browse.total ? browse.offset + 1 : 0}-${last} of ${browse.total}`;
  } catch (e) { status(e.message, true); }
}

async function addImages(files) {
  for (const file of files) {
    if (file.size > settings.maxBytes) {
      status(`${file.name}: ${file.size} bytes is more than the ${settings.maxBytes} bytes an upload may have`, true);
      return;
    }
  }
  status(`adding ${files.length} image(s) ...`);
  const form = new FormData();
  for (const file of files) form.append("files", file);
  try {
    const answer = await call("/api/add", {method: "POST", body: form});
    status(`added ${answer.added.length} image(s)` + (answer.present.length ? `, ${answer.present.length} already there` : "") +
           `; the collection holds ${answer.count} (generation ${answer.generation})`);
    if ($("generation")) $("generation").textContent = String(answer.generation);
    loadBrowse();
  } catch (e) { status(e.message, true); }
}

if (settings.allowAdd) $("add").addEventListener("change", (e) => { if (e.target.files.length) addImages(Array.from(e.target.files)); });
if ($("where")) $("where").addEventListener("change", () => { if (current && current.query.kind !== "upload") searchId(current.query.id, false); });
$("upload").addEventListener("change", (e) => { if (e.target.files.length) searchUpload(e.target.files[0]); });
$("v-slider").addEventListener("input", () => { $("v-value").textContent = v().toFixed(2); render(); });
$("k").addEventListener("change", () => { if (current && current.query.kind !== "upload") searchId(current.query.id, false); });
$("prev").addEventListener("click", () => { browse.offset = Math.max(0, browse.offset - browse.limit); loadBrowse(); });
$("next").addEventListener("click", () => { if (browse.offset + browse.limit < browse.total) { browse.offset += browse.limit; loadBrowse(); } });
$("which").addEventListener("change", (e) => { browse.which = e.target.value; browse.offset = 0; loadBrowse(); });
window.addEventListener("popstate", (e) => { if (e.state && e.state.id) searchId(e.state.id, false); });
loadBrowse();
const initial = new URLSearchParams(location.search).get("id");
if (initial) searchId(initial, false);
