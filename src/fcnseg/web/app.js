// fcnseg serve: upload an image (or the sample), show it as overlay, mask or side by side, the class under the
// pointer, the legend with class shares, and download the mask. Plain browser JavaScript, no build step.
// The opacity slider blends image and colour mask here, with the formula of fcnseg.viz.overlay (round half up
// of (1 - a) * image + a * colour), so it needs no server call.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null, image: null, color: null, labels: null, width: 0, height: 0, maskUrl: null, pending: false,
  request: 0, view: "overlay", names: new Map(), colors: new Map(),
};

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setStatus(message) {
  $("status").textContent = message;
}

function formatMB(bytes) {
  const mb = bytes / 1048576;
  return (mb >= 10 ? mb.toFixed(0) : mb.toFixed(mb >= 1 ? 1 : 2)) + " MB";
}

function formatShare(share) {
  if (share > 0 && share < 0.001) return "<0.1%";
  return (share * 100).toFixed(1) + "%";
}

async function loadInfo() {
  try {
    const response = await fetch("/api/info");
    const info = await response.json();
    if (!response.ok) throw new Error(info.error || response.statusText);
    state.info = info;
    for (const cls of info.classes) {
      state.names.set(cls.id, cls.name);
      state.colors.set(cls.id, cls.color);
    }
    // Every model format has its name: the server reads it from the spec that checkpoints and exports carry.
    $("title").textContent = `fcnseg · ${info.model_name || "model"} · ${info.dataset}`;
    document.title = `fcnseg · ${info.dataset}`;
    $("subtitle").textContent = `${info.num_classes} classes, running on ${info.device}`;
    $("limits").textContent = `(PNG, JPEG, BMP, TIFF or WebP; up to ${formatMB(info.max_upload_bytes)}, ` +
      `${(info.max_pixels / 1e6).toFixed(0)} megapixels)`;
  } catch (err) {
    showError(`Could not reach the fcnseg server (${err.message}). Is it still running?`);
  }
}

async function upload(file) {
  clearError();
  if (state.info && file.size > state.info.max_upload_bytes) {
    showError(`${file.name} is ${formatMB(file.size)}; this server accepts at most ` +
      `${formatMB(state.info.max_upload_bytes)}.`);
    return;
  }
  setStatus(`Segmenting ${file.name}…`);
  const request = ++state.request;  // a slow answer must not overwrite a newer upload's result
  let response;
  let data;
  try {
    response = await fetch("/api/segment", {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    data = await response.json();
  } catch (err) {
    if (request !== state.request) return;
    setStatus("");
    showError(response ? `The server answered ${response.status} ${response.statusText} without details.`
      : `Could not reach the fcnseg server (${err.message}). Is it still running?`);
    return;
  }
  if (request !== state.request) return;
  if (!response.ok) {
    setStatus("");
    $("result").hidden = true;
    const wait = response.headers.get("Retry-After");
    showError(`${file.name}: ${data.error}` + (wait ? ` (about ${wait} s)` : ""));
    return;
  }
  await show(data, file.name);
  setStatus(`${file.name} · ${data.width} × ${data.height} pixels · ${data.classes.length} classes · ` +
    `inference ${data.elapsed_ms.toFixed(0)} ms`);
}

async function trySample() {
  clearError();
  try {
    const response = await fetch("/sample.png");
    const blob = await response.blob();
    await upload(new File([blob], "sample.png", { type: "image/png" }));
  } catch (err) {
    showError(`Could not load the sample image (${err.message}).`);
  }
}

async function decodePng(base64) {
  const img = new Image();
  img.src = "data:image/png;base64," + base64;
  await img.decode();
  return img;
}

function pixelsOf(img, width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  return ctx.getImageData(0, 0, width, height).data;
}

function base64Blob(base64, type) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

async function show(data, fileName) {
  const [img, color, labels] = await Promise.all(
    [decodePng(data.image_png), decodePng(data.color_png), decodePng(data.labels_png)]);
  state.width = data.width;
  state.height = data.height;
  state.image = pixelsOf(img, data.width, data.height);
  state.color = pixelsOf(color, data.width, data.height);
  // A greyscale PNG decodes to exact values: red = green = blue = the class id of the pixel.
  const grey = pixelsOf(labels, data.width, data.height);
  state.labels = new Uint8Array(data.width * data.height);
  for (let i = 0; i < state.labels.length; i++) state.labels[i] = grey[4 * i];
  for (const cls of data.classes) {
    state.names.set(cls.id, cls.name);
    state.colors.set(cls.id, cls.color);
  }
  for (const canvas of [$("overlay"), $("picture")]) {
    canvas.width = data.width;
    canvas.height = data.height;
  }
  showLegend(data.classes);
  clearPointer();
  render();

  if (state.maskUrl) URL.revokeObjectURL(state.maskUrl);
  state.maskUrl = URL.createObjectURL(base64Blob(data.mask_png, "image/png"));
  const link = $("download");
  link.href = state.maskUrl;
  link.download = fileName.replace(/\.[^.]*$/, "") + "_mask.png";
  link.title = "Palette PNG: pixel values are class ids, viewers show the class colours";
  $("empty").hidden = true;
  $("result").hidden = false;
}

function showLegend(classes) {
  const legend = $("legend");
  legend.replaceChildren();
  for (const cls of classes) {
    const item = document.createElement("li");
    item.dataset.classId = cls.id;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = cls.color;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = cls.name;
    const share = document.createElement("span");
    share.className = "share";
    share.textContent = formatShare(cls.share);
    item.append(swatch, name, share);
    legend.append(item);
  }
}

function blend(out, alpha) {
  const inv = 1 - alpha;
  const image = state.image;
  const color = state.color;
  for (let i = 0; i < out.length; i += 4) {
    out[i] = Math.floor(inv * image[i] + alpha * color[i] + 0.5);
    out[i + 1] = Math.floor(inv * image[i + 1] + alpha * color[i + 1] + 0.5);
    out[i + 2] = Math.floor(inv * image[i + 2] + alpha * color[i + 2] + 0.5);
    out[i + 3] = 255;
  }
}

function render() {
  state.pending = false;
  if (!state.image) return;
  const view = state.view;
  const overlay = $("overlay");
  const out = overlay.getContext("2d").createImageData(state.width, state.height);
  // Overlay: the blend at the slider's opacity; mask and side by side: the colour mask itself.
  blend(out.data, view === "overlay" ? Number($("opacity").value) / 100 : 1);
  overlay.getContext("2d").putImageData(out, 0, 0);
  overlay.setAttribute("aria-label", view === "overlay" ? "the image with the predicted classes"
    : "the predicted classes (colour mask)");
  $("picture").hidden = view !== "side";
  $("stage").classList.toggle("side", view === "side");
  if (view === "side") {
    const picture = $("picture").getContext("2d").createImageData(state.width, state.height);
    picture.data.set(state.image);
    $("picture").getContext("2d").putImageData(picture, 0, 0);
  }
  $("opacity").disabled = view !== "overlay";
}

function scheduleRender() {
  if (!state.pending) {  // one redraw per frame, however fast the slider moves
    state.pending = true;
    requestAnimationFrame(render);
  }
}

function onOpacity() {
  $("opacity-value").textContent = $("opacity").value + "%";
  scheduleRender();
}

function onView(event) {
  state.view = event.target.value;
  scheduleRender();
}

// The image pixel under the pointer: canvases are scaled with object-fit: contain from the top left corner.
function pixelAt(canvas, event) {
  const rect = canvas.getBoundingClientRect();
  const scale = Math.min(rect.width / canvas.width, rect.height / canvas.height);
  const x = Math.floor((event.clientX - rect.left) / scale);
  const y = Math.floor((event.clientY - rect.top) / scale);
  if (!(scale > 0) || x < 0 || y < 0 || x >= canvas.width || y >= canvas.height) return null;
  return { x, y };
}

function onPointer(event) {
  if (!state.labels) return;
  const at = pixelAt(event.currentTarget, event);
  if (!at) {
    clearPointer();
    return;
  }
  const id = state.labels[at.y * state.width + at.x];
  const name = state.names.get(id) ?? `class ${id}`;
  $("pointer").classList.add("on");
  $("pointer").querySelector(".swatch").style.background = state.colors.get(id) || "transparent";
  $("pointer-text").textContent = `${name} (x ${at.x}, y ${at.y})`;
  for (const item of $("legend").children) item.classList.toggle("here", Number(item.dataset.classId) === id);
}

function clearPointer() {
  $("pointer").classList.remove("on");
  $("pointer-text").textContent = "Point at the image to see the class of a pixel.";
  for (const item of $("legend").children) item.classList.remove("here");
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) upload(file);
    event.target.value = "";  // choosing the same file again still triggers a change
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) upload(file);
  });
  $("sample").addEventListener("click", trySample);
  $("opacity").addEventListener("input", onOpacity);
  for (const input of document.querySelectorAll("input[name=view]")) input.addEventListener("change", onView);
  for (const canvas of [$("overlay"), $("picture")]) {
    canvas.addEventListener("pointermove", onPointer);
    canvas.addEventListener("pointerdown", onPointer);  // touch screens: a tap shows the class
    canvas.addEventListener("pointerleave", clearPointer);
  }
  // A file dropped next to the drop zone would make the browser leave the page to open it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  loadInfo();
}

init();
