// The vggdet server's page: send images (POST v1/detect) and videos (POST v1/detect/video, NDJSON), draw the
// boxes, filter them by score and class without asking the server again, list them, download them as JSON.
// Everything is relative to the page's URL, so it also works behind a path prefix. No external resources.
"use strict";

const state = { info: null, items: [], key: sessionStorage.getItem("vggdet-api-key") || "" };
const $ = (id) => document.getElementById(id);
const MAX_CANVAS = 1600; // longest canvas side in pixels; boxes are scaled with the image

// ------------------------------------------------------------------------------------------------ server
function authHeaders() {
  return state.key ? { Authorization: "Bearer " + state.key } : {};
}

async function errorOf(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return body.error;
  } catch (e) { /* not JSON */ }
  return resp.statusText || "no details";
}

// A server answer as a sentence for people: what happened and what to do.
function plain(status, error, what) {
  switch (status) {
    case 0: return `Could not reach the server for ${what}. Is it still running?`;
    case 400: return `The server did not accept ${what}: ${error}.`;
    case 401: return "This server needs an API key. Enter it in the \"API key\" field and try again.";
    case 413: return `${what} is too large for this server: ${error}.`;
    case 415: return `${what} is not an image or video the server can read: ${error}.`;
    case 503: return `The server is busy or shutting down; try ${what} again in a few seconds.`;
    default: return `The server failed on ${what} (error ${status}): ${error}.`;
  }
}

function showError(message) {
  const p = document.createElement("p");
  p.className = "error";
  p.textContent = message;
  $("errors").append(p);
}

async function loadModel() {
  let resp;
  try {
    resp = await fetch("v1/model", { headers: authHeaders() });
  } catch (e) {
    $("model").textContent = "The server cannot be reached.";
    showError(plain(0, "", "the model information"));
    return;
  }
  if (resp.status === 401) {
    $("key-row").hidden = false;
    $("model").textContent = "This server needs an API key.";
    showError(plain(401, "", ""));
    return;
  }
  if (!resp.ok) {
    $("model").textContent = "The model is not ready yet.";
    showError(plain(resp.status, await errorOf(resp), "the model information"));
    return;
  }
  state.info = await resp.json();
  const i = state.info;
  $("model").textContent = `${i.classes.length} classes · ${i.backend} ${i.precision} on ${i.device} · ` +
    `vggdet ${i.version} · the model's own score cut-off ${i.min_score ?? "none"}`;
  buildClassBoxes(i.classes);
  redrawAll();
}

// -------------------------------------------------------------------------------------------- filtering
function colour(name) {
  const k = state.info ? Math.max(0, state.info.classes.indexOf(name)) : 0;
  return `hsl(${(k * 137.508 + 200) % 360}, 80%, 45%)`;
}

function buildClassBoxes(classes) {
  const box = $("classes");
  box.querySelectorAll("label").forEach((l) => l.remove());
  for (const name of classes) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.checked = true;
    input.value = name;
    input.addEventListener("change", redrawAll);
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colour(name);
    label.append(input, swatch, document.createTextNode(name));
    box.append(label);
  }
}

function threshold() {
  return Number($("score").value);
}

function shown(detections) {
  const thr = threshold();
  const boxes = [...$("classes").querySelectorAll("input")];
  const keep = new Set(boxes.filter((b) => b.checked).map((b) => b.value));
  return (detections || []).filter((d) => d.score >= thr && (boxes.length === 0 || keep.has(d.label)));
}

// -------------------------------------------------------------------------------------------- drawing
// Boxes in image pixels times `scale` (canvas pixels per image pixel); `px` canvas pixels per CSS pixel, so
// lines and labels keep the same on-screen size whatever the image's size.
function drawBoxes(ctx, dets, scale, px) {
  const font = Math.round(12 * px);
  ctx.lineWidth = Math.max(1, 2 * px);
  ctx.font = `${font}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  for (const d of [...dets].reverse()) { // the best-scoring labels last, on top
    const [x1, y1, x2, y2] = d.box.map((v) => v * scale);
    ctx.strokeStyle = colour(d.label);
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = `${d.label} ${d.score.toFixed(2)}`;
    const w = ctx.measureText(text).width + 6 * px;
    const h = font + 4 * px;
    const tx = Math.max(0, Math.min(x1, ctx.canvas.width - w)); // the label stays inside the picture
    const ty = y1 - h >= 0 ? y1 - h : y1;
    ctx.fillStyle = colour(d.label);
    ctx.fillRect(tx, ty, w, h);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, tx + 3 * px, ty + 2 * px);
  }
}

// Canvas pixels per image pixel: the card's width on screen (times the device's pixel ratio), at most
// MAX_CANVAS on the longer side.
function canvasScale(view, width, height) {
  const onScreen = (view.clientWidth || 600) * (window.devicePixelRatio || 1);
  return Math.min(onScreen / width, MAX_CANVAS / Math.max(width, height));
}

const DET_COLUMNS = ["#", "class", "score", "box (x1, y1, x2, y2)"];
const FRAME_COLUMNS = ["frame", "time (s)", "shown", "best shown"];

function setColumns(table, names) {
  table.tHead.rows[0].replaceChildren(...names.map((h) => {
    const th = document.createElement("th");
    th.textContent = h;
    return th;
  }));
}

function fillTable(table, dets) {
  setColumns(table, DET_COLUMNS);
  const body = table.tBodies[0];
  body.replaceChildren();
  if (!dets.length) {
    const row = body.insertRow();
    const cell = row.insertCell();
    cell.colSpan = 4;
    cell.className = "empty";
    cell.textContent = "No detections at this score and these classes.";
    return;
  }
  dets.forEach((d, k) => {
    const row = body.insertRow();
    for (const v of [k + 1, d.label, d.score.toFixed(4), d.box.map((x) => x.toFixed(1)).join(", ")]) {
      row.insertCell().textContent = v;
    }
  });
}

function drawImageItem(item) {
  const { record, image, canvas } = item;
  const scale = canvasScale(item.view, record.width, record.height);
  canvas.width = Math.max(1, Math.round(record.width * scale));
  canvas.height = Math.max(1, Math.round(record.height * scale));
  const ctx = canvas.getContext("2d");
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  const dets = shown(record.detections);
  drawBoxes(ctx, dets, scale, canvas.width / (item.view.clientWidth || canvas.width));
  canvas.dataset.boxes = String(dets.length);
  canvas.setAttribute("aria-label", `${item.name} with ${dets.length} boxes drawn`);
  fillTable(item.table, dets);
  const t = record.time_ms;
  item.meta.textContent = `${dets.length} of ${record.detections.length} detections shown · ${record.width}×` +
    `${record.height} px · ${t.total} ms (model ${t.model} ms, queue ${t.queue} ms)`;
  item.card.dataset.state = "done";
}

function frameAt(item, seconds) {
  // the last processed frame at or before `seconds` (frames arrive in order)
  let lo = 0, hi = item.frames.length - 1, best = null;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (item.frames[mid].time_s <= seconds + 1e-3) { best = item.frames[mid]; lo = mid + 1; } else { hi = mid - 1; }
  }
  return best;
}

function drawVideoItem(item) {
  const { video, canvas } = item;
  let where;
  if (video.videoWidth) {
    const scale = canvasScale(item.view, video.videoWidth, video.videoHeight);
    canvas.width = Math.max(1, Math.round(video.videoWidth * scale));
    canvas.height = Math.max(1, Math.round(video.videoHeight * scale));
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const frame = frameAt(item, video.currentTime);
    const dets = frame ? shown(frame.detections) : [];
    drawBoxes(ctx, dets, scale, canvas.width / (item.view.clientWidth || canvas.width));
    canvas.dataset.boxes = String(dets.length);
    fillTable(item.table, dets);
    where = frame ? `frame ${frame.frame} on screen: ${dets.length} of ${frame.detections.length} shown` : "no frame yet";
  } else {
    // the server decoded it, but this browser cannot play it (e.g. MPEG-4 part 2): list the frames instead
    canvas.dataset.boxes = "0";
    if (item.unplayable) fillFrameTable(item);
    where = item.unplayable ? "this browser cannot play this video's format; its frames are listed below"
      : "loading the video…";
  }
  item.meta.textContent = `${item.frames.length} frames processed${item.done ? "" : " so far"} · ${where}` +
    (item.done ? ` · ${item.seconds.toFixed(1)} s` : "");
}

function fillFrameTable(item) {
  setColumns(item.table, FRAME_COLUMNS);
  const body = item.table.tBodies[0];
  body.replaceChildren();
  for (const f of item.frames) {
    const dets = shown(f.detections);
    const best = dets.length ? `${dets[0].label} ${dets[0].score.toFixed(3)}` : "";
    const row = body.insertRow();
    for (const v of [f.frame, f.time_s.toFixed(2), `${dets.length} of ${f.detections.length}`, best]) {
      row.insertCell().textContent = v;
    }
  }
}

function redrawAll() {
  $("score-value").textContent = threshold().toFixed(2);
  for (const item of state.items) {
    if (item.kind === "image" && item.record && item.image) drawImageItem(item);
    if (item.kind === "video") drawVideoItem(item);
  }
}

// ------------------------------------------------------------------------------------------ requests
function newCard(file, kind) {
  const card = document.createElement("article");
  card.className = "card";
  card.dataset.state = "loading";
  const title = document.createElement("h2");
  title.textContent = file.name || "(unnamed)";
  const meta = document.createElement("p");
  meta.className = "meta";
  meta.textContent = kind === "video" ? "Uploading the video…" : "Detecting…";
  const view = document.createElement("div");
  view.className = "view";
  const table = document.createElement("table");
  table.className = "dets";
  table.createTHead().insertRow();
  setColumns(table, DET_COLUMNS);
  table.createTBody();
  card.append(title, meta, view, table);
  $("results").prepend(card);
  const item = { kind, file, name: file.name || "(unnamed)", card, meta, view, table };
  state.items.push(item);
  return item;
}

function failed(item, message) {
  item.card.dataset.state = "error";
  item.view.replaceChildren();
  item.table.hidden = true;
  item.meta.className = "meta error";
  item.meta.textContent = message;
  showError(message);
}

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.style.imageOrientation = "none"; // the pixels as stored, as the server reads them (no EXIF rotation)
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot show this image"));
    img.src = URL.createObjectURL(file);
  });
}

async function detectImage(file) {
  const item = newCard(file, "image");
  const form = new FormData();
  form.append("image", file, file.name);
  let resp;
  try {
    // no score_thr: every detection above the model's cut-off comes back; the slider filters here
    resp = await fetch("v1/detect", { method: "POST", headers: authHeaders(), body: form });
  } catch (e) {
    return failed(item, plain(0, "", item.name));
  }
  if (!resp.ok) {
    if (resp.status === 401) $("key-row").hidden = false;
    return failed(item, plain(resp.status, await errorOf(resp), item.name));
  }
  item.record = await resp.json();
  try {
    item.image = await loadImage(file);
  } catch (e) {
    return failed(item, `${item.name} was detected, but this browser cannot show it (${e.message}).`);
  }
  item.canvas = document.createElement("canvas");
  item.view.replaceChildren(item.canvas);
  drawImageItem(item);
  $("download").disabled = false;
}

async function detectVideo(file) {
  const item = newCard(file, "video");
  item.frames = [];
  item.done = false;
  item.every = Math.max(1, Math.round(Number($("every").value) || 1));
  item.video = document.createElement("video");
  item.video.controls = true;
  item.video.muted = true;
  item.video.playsInline = true;
  item.video.src = URL.createObjectURL(file);
  item.canvas = document.createElement("canvas");
  item.canvas.className = "overlay";
  item.view.replaceChildren(item.video, item.canvas);
  const redraw = () => drawVideoItem(item);
  for (const ev of ["loadeddata", "seeked", "timeupdate", "pause"]) item.video.addEventListener(ev, redraw);
  item.video.addEventListener("error", () => { item.unplayable = true; item.video.hidden = true; redraw(); });
  if (item.video.requestVideoFrameCallback) {
    const onFrame = () => { redraw(); item.video.requestVideoFrameCallback(onFrame); };
    item.video.requestVideoFrameCallback(onFrame);
  }
  const start = performance.now();
  let resp;
  try {
    resp = await fetch(`v1/detect/video?every=${item.every}`, {
      method: "POST", body: file,
      headers: { ...authHeaders(), "Content-Type": file.type || "application/octet-stream" },
    });
  } catch (e) {
    return failed(item, plain(0, "", item.name));
  }
  if (!resp.ok) return failed(item, plain(resp.status, await errorOf(resp), item.name));
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (const line of lines.filter((l) => l.trim())) {
      const row = JSON.parse(line);
      if (row.error) showError(`${item.name}: the server stopped part-way: ${row.error}.`);
      else item.frames.push(row);
    }
    redraw();
  }
  item.done = true;
  item.seconds = (performance.now() - start) / 1000;
  item.card.dataset.state = "done";
  redraw();
  $("download").disabled = false;
}

function addFiles(files) {
  if (!state.info) showError("The model information has not loaded yet; results may not show class filters.");
  for (const file of files) {
    const isVideo = file.type.startsWith("video/") || /\.(mp4|avi|mov|mkv|webm)$/i.test(file.name);
    (isVideo ? detectVideo : detectImage)(file);
  }
}

function download() {
  const images = state.items.filter((i) => i.kind === "image" && i.record).map((i) => i.record);
  const videos = state.items.filter((i) => i.kind === "video" && i.frames.length)
    .map((i) => ({ file: i.name, every: i.every, frames: i.frames }));
  const checked = [...$("classes").querySelectorAll("input")].filter((b) => b.checked).map((b) => b.value);
  const out = { model: state.info, page_filter: { score_thr: threshold(), classes: checked }, images, videos };
  const url = URL.createObjectURL(new Blob([JSON.stringify(out, null, 1)], { type: "application/json" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = "detections.json";
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 5000);
}

// --------------------------------------------------------------------------------------------- wiring
function init() {
  $("score").addEventListener("input", redrawAll);
  window.addEventListener("resize", redrawAll); // the canvases follow the cards' width
  $("files").addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addFiles([...e.dataTransfer.files]);
  });
  $("download").addEventListener("click", download);
  $("clear").addEventListener("click", () => {
    state.items = [];
    $("results").replaceChildren();
    $("errors").replaceChildren();
    $("download").disabled = true;
  });
  $("key").value = state.key;
  $("key-row").addEventListener("submit", (e) => { e.preventDefault(); $("key").dispatchEvent(new Event("change")); });
  $("key").addEventListener("change", () => {
    state.key = $("key").value.trim();
    sessionStorage.setItem("vggdet-api-key", state.key);
    $("errors").replaceChildren();
    loadModel();
  });
  redrawAll();
  loadModel();
}

init();
