// The captioner page: plain JavaScript, no build step, no network beyond this server.
// State flows one way: an image (file, drop or webcam frame) -> POST /api/caption -> draw().
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  model: null,      // GET /api/model
  image: null,      // the current image as a Blob, and its name
  name: "",
  bitmap: null,     // the decoded image, for drawing
  result: null,     // the last /api/caption answer
  hover: null,      // the word under the pointer
  pinned: null,     // the word clicked
  region: null,     // [x0, y0, x1, y1] in image pixels
  stream: null,     // the webcam's MediaStream
};

// ---- messages ------------------------------------------------------------------------------
function showMessage(text) { $("message").textContent = text; $("message").hidden = !text; }

// ---- the model and the decoding controls (built from DecodingOptions' fields) ----------------
async function loadModel() {
  const response = await fetch("/api/model");
  state.model = await response.json();
  const m = state.model;
  $("model-info").textContent = `${m.name} · decoder ${m.layers} layers × ${m.heads} heads · ` +
    `image seen as ${m.grid} × ${m.grid} patches` + (m.cross_attention ? "" : " · no cross-attention");
  const fields = $("option-fields");
  for (const option of m.options) {
    const label = document.createElement("label");
    label.title = option.help;
    const input = document.createElement("input");
    input.type = "number";
    input.name = option.name;
    input.id = "option-" + option.name;
    input.step = option.type === "float" ? "any" : "1";
    input.placeholder = option.default === null ? "default" : String(option.default);
    input.addEventListener("change", () => caption());
    label.append(option.name.replaceAll("_", " "), input);
    fields.append(label);
  }
  for (let layer = 0; layer < m.layers; layer++) {
    $("layer").append(new Option(`${layer + 1}`, String(layer)));
  }
}

// ---- getting an image ------------------------------------------------------------------------
async function useImage(blob, name) {
  state.image = blob;
  state.name = name || "image";
  state.region = null;
  state.pinned = state.hover = null;
  $("region-caption").textContent = "";
  try {
    state.bitmap = await createImageBitmap(blob);
  } catch (e) {
    state.bitmap = null;  // the server says what is wrong with it
  }
  sizeCanvases();
  await caption();
}

function sizeCanvases() {
  const width = state.bitmap ? state.bitmap.width : 640, height = state.bitmap ? state.bitmap.height : 480;
  const scale = Math.min(640 / width, 420 / height);
  for (const canvas of [$("picture"), $("overlay")]) {
    canvas.width = Math.round(width * scale);
    canvas.height = Math.round(height * scale);
  }
  const ctx = $("picture").getContext("2d");
  ctx.clearRect(0, 0, $("picture").width, $("picture").height);
  if (state.bitmap) ctx.drawImage(state.bitmap, 0, 0, $("picture").width, $("picture").height);
  $("placeholder").hidden = Boolean(state.bitmap);
}

$("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) useImage(file, file.name);
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) useImage(file, file.name);
});

async function showTab(webcam) {
  $("tab-photo").classList.toggle("active", !webcam);
  $("tab-webcam").classList.toggle("active", webcam);
  $("tab-photo").setAttribute("aria-selected", String(!webcam));
  $("tab-webcam").setAttribute("aria-selected", String(webcam));
  $("photo-view").hidden = webcam;
  $("webcam-view").hidden = !webcam;
  if (webcam && !state.stream) {
    try {
      state.stream = await navigator.mediaDevices.getUserMedia({ video: true });
      $("video").srcObject = state.stream;
    } catch (e) {
      showMessage("The webcam could not be opened: " + e.message);
    }
  } else if (!webcam && state.stream) {
    state.stream.getTracks().forEach((track) => track.stop());
    state.stream = null;
  }
}
$("tab-photo").addEventListener("click", () => showTab(false));
$("tab-webcam").addEventListener("click", () => showTab(true));
$("snap").addEventListener("click", () => {
  const video = $("video");
  if (!video.videoWidth) { showMessage("The webcam has no picture yet."); return; }
  const frame = document.createElement("canvas");
  frame.width = video.videoWidth;
  frame.height = video.videoHeight;
  frame.getContext("2d").drawImage(video, 0, 0);
  frame.toBlob((blob) => useImage(blob, "webcam.png"), "image/png");
});

// ---- captioning ------------------------------------------------------------------------------
function formFor(region) {
  const form = new FormData();
  form.append("image", state.image, state.name);
  for (const input of $("option-fields").querySelectorAll("input")) {
    if (input.value !== "") form.append(input.name, input.value);
  }
  if (region) form.append("region", region.map((v) => v.toFixed(1)).join(","));
  if (region) form.append("attention", "false");
  return form;
}

async function post(form) {
  const response = await fetch("/api/caption", { method: "POST", body: form });
  const body = await response.json().catch(() => ({ detail: `the server answered ${response.status}` }));
  if (!response.ok) throw new Error(body.detail || `the server answered ${response.status}`);
  return body;
}

async function caption() {
  if (!state.image) return;
  $("caption").textContent = "…";
  try {
    state.result = await post(formFor(null));
    showMessage("");
  } catch (e) {
    state.result = null;
    $("caption").textContent = "";
    $("more-captions").replaceChildren();
    showMessage(e.message);
    draw();
    return;
  }
  renderWords();
  draw();
  if (state.region) captionRegion();
}
$("again").addEventListener("click", () => caption());
$("decoding").addEventListener("submit", (event) => { event.preventDefault(); caption(); });  // Enter in a field

function renderWords() {
  const box = $("caption");
  box.replaceChildren();
  state.result.words.forEach((word, i) => {
    const span = document.createElement("span");
    span.className = "word";
    span.textContent = word;
    span.dataset.index = i;
    span.addEventListener("mouseenter", () => { state.hover = i; draw(); });
    span.addEventListener("mouseleave", () => { state.hover = null; draw(); });
    span.addEventListener("click", () => { state.pinned = state.pinned === i ? null : i; draw(); });
    box.append(span, " ");
  });
  const more = $("more-captions");
  more.replaceChildren(...state.result.captions.slice(1).map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }));
}

async function captionRegion() {
  $("region-caption").textContent = "…";
  try {
    const answer = await post(formFor(state.region));
    $("region-caption").innerHTML = "";
    const label = document.createElement("b");
    label.textContent = "In the box: ";
    $("region-caption").append(label, answer.captions[0]);
  } catch (e) {
    $("region-caption").textContent = "";
    showMessage(e.message);
  }
}

// ---- drawing: heat maps over the model's view, the region box, every head ----------------------
const STOPS = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];  // inferno
function colour(v) {
  const x = Math.max(0, Math.min(1, v)) * (STOPS.length - 1), i = Math.min(Math.floor(x), STOPS.length - 2), t = x - i;
  return STOPS[i].map((c, k) => Math.round(c + t * (STOPS[i + 1][k] - c)));
}

function heatCanvas(map, peak) {
  // map: grid x grid numbers -> a grid x grid canvas, one pixel per patch, on the colour scale 0 .. peak
  // (shared by every map drawn beside it), drawn later without smoothing: one flat block per patch
  const grid = map.length;
  peak = peak || 1;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = grid;
  const ctx = canvas.getContext("2d"), pixels = ctx.createImageData(grid, grid);
  map.flat().forEach((v, i) => { pixels.data.set([...colour(v / peak), 255], 4 * i); });
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

function shares(map) {
  // a map as shares of the whole (the encoder's rollout, so it reads on the words' scale)
  const total = map.flat().reduce((a, b) => a + b, 0) || 1;
  return map.map((row) => row.map((v) => v / total));
}

function scalePeak() {
  // one colour scale for everything the caption shows: the largest share of any word's map (this layer
  // choice) or of the rollout
  const r = state.result, maps = r.words.map((_, w) => wordMap(w, $("layer").value)).filter(Boolean);
  return Math.max(...maps.map((m) => Math.max(...m.flat())), Math.max(...shares(r.rollout).flat())) || 1;
}

function drawGrid(ctx, [x, y, w, h], grid) {
  // thin lines between the patches: the model saw grid x grid blocks, not a smooth field
  ctx.save();
  ctx.globalAlpha = 0.45;
  ctx.strokeStyle = "#ffffff";
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let i = 1; i < grid; i++) {
    ctx.moveTo(x + (i * w) / grid, y);
    ctx.lineTo(x + (i * w) / grid, y + h);
    ctx.moveTo(x, y + (i * h) / grid);
    ctx.lineTo(x + w, y + (i * h) / grid);
  }
  ctx.stroke();
  ctx.restore();
}

function showScale(peak, grid) {
  // the colour bar: 0 at the left, the shared peak at the right, the uniform level 1/N marked
  const uniform = 1 / (grid * grid), bar = $("scale");
  bar.hidden = false;
  $("scale-peak").textContent = `${peak.toFixed(3)} (${(peak / uniform).toFixed(1)}× uniform)`;
  $("scale-uniform").style.left = `${Math.min(100, (100 * uniform) / peak)}%`;
  $("scale-uniform").title = `uniform: 1/${grid * grid} = ${uniform.toFixed(3)}, every patch its equal share`;
  $("scale-uniform-label").textContent = `uniform 1/${grid * grid}`;
}

function mean(arrays) {
  return arrays[0].map((row, r) => row.map((_, c) => arrays.reduce((s, a) => s + a[r][c], 0) / arrays.length));
}

function wordMap(word, layer) {
  // attention: (layers, heads, words, grid, grid)
  const attention = state.result.attention;
  if (!attention) return null;
  const layers = layer === "mean" ? attention : [attention[Number(layer)]];
  return mean(layers.map((heads) => mean(heads.map((h) => h[word]))));
}

function viewRect(canvas) {
  // where the model's view of the image lies on the canvas
  const [x0, y0, x1, y1] = state.result.view_box, sx = canvas.width / state.result.width;
  const sy = canvas.height / state.result.height;
  return [x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy];
}

function draw() {
  const overlay = $("overlay"), ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  document.querySelectorAll(".word").forEach((span) => {
    span.classList.toggle("active", Number(span.dataset.index) === state.hover);
    span.classList.toggle("pinned", Number(span.dataset.index) === state.pinned);
  });
  let showing = "", map = null;
  const word = state.hover !== null ? state.hover : state.pinned;
  if (state.result && word !== null) {
    map = wordMap(word, $("layer").value);
    showing = `word:${word}:layer:${$("layer").value}`;
  } else if (state.result && $("rollout").checked) {
    map = shares(state.result.rollout);
    showing = "rollout";
  }
  if (map) {
    const peak = scalePeak();
    ctx.globalAlpha = 0.6;
    ctx.imageSmoothingEnabled = false;  // one flat block per patch, never smoothed past the grid
    ctx.drawImage(heatCanvas(map, peak), ...viewRect(overlay));
    ctx.globalAlpha = 1;
    drawGrid(ctx, viewRect(overlay), map.length);
    showScale(peak, map.length);
  }
  overlay.dataset.showing = showing;
  if (state.region) {
    const s = overlay.width / state.result.width, [x0, y0, x1, y1] = state.region;
    ctx.setLineDash([8, 5]);
    ctx.lineWidth = 3;
    ctx.strokeStyle = "#38bdf8";
    ctx.strokeRect(x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s);
    ctx.setLineDash([]);
  }
  drawHeads(word);
}

function drawHeads(word) {
  const heads = $("heads");
  heads.replaceChildren();
  if (!state.result || !state.result.attention || word === null) {
    $("heads-title").textContent = "Every head, one word: hover or click a word";
    return;
  }
  const chosen = $("layer").value, layer = chosen === "mean" ? state.result.attention.length - 1 : Number(chosen);
  $("heads-title").textContent = `Every head of layer ${layer + 1}` + (chosen === "mean" ? " (the last)" : "") +
    ` while writing “${state.result.words[word]}”`;
  const headsPeak = Math.max(...state.result.attention[layer].map((head) => Math.max(...head[word].flat())));
  state.result.attention[layer].forEach((head, h) => {
    const figure = document.createElement("figure"), canvas = document.createElement("canvas");
    canvas.width = canvas.height = 130;
    const ctx = canvas.getContext("2d"), [x0, y0, x1, y1] = state.result.view_box;
    if (state.bitmap) ctx.drawImage(state.bitmap, x0, y0, x1 - x0, y1 - y0, 0, 0, 130, 130);
    ctx.globalAlpha = 0.65;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(heatCanvas(head[word], headsPeak), 0, 0, 130, 130);
    ctx.globalAlpha = 1;
    drawGrid(ctx, [0, 0, 130, 130], head[word].length);
    const caption = document.createElement("figcaption");
    caption.textContent = `head ${h + 1}`;
    figure.append(canvas, caption);
    heads.append(figure);
  });
}
$("layer").addEventListener("change", draw);
$("rollout").addEventListener("change", draw);

// ---- drawing a region ------------------------------------------------------------------------
let dragStart = null;
function imagePoint(event) {
  const rect = $("overlay").getBoundingClientRect(), scale = state.result.width / rect.width;
  return [(event.clientX - rect.left) * scale, (event.clientY - rect.top) * scale];
}
$("overlay").addEventListener("mousedown", (event) => {
  if (state.result) dragStart = imagePoint(event);
});
$("overlay").addEventListener("mousemove", (event) => {
  if (!dragStart) return;
  const [x, y] = imagePoint(event);
  state.region = [Math.min(dragStart[0], x), Math.min(dragStart[1], y), Math.max(dragStart[0], x), Math.max(dragStart[1], y)];
  draw();
});
window.addEventListener("mouseup", () => {
  if (!dragStart) return;
  dragStart = null;
  const r = state.region;
  if (r && r[2] - r[0] > 2 && r[3] - r[1] > 2) captionRegion();
  else { state.region = null; $("region-caption").textContent = ""; draw(); }
});

loadModel().catch((e) => showMessage("The server did not answer: " + e.message));
