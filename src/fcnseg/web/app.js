// fcnseg serve: upload an image, show the overlay, legend and class shares, download the mask.
// Plain browser JavaScript, no build step. The opacity slider blends image and colour mask here, with the
// formula of fcnseg.viz.overlay (round half up of (1 - a) * image + a * colour), so it needs no server call.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, image: null, color: null, out: null, maskUrl: null, pending: false, request: 0 };

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
    state.info = info;
    const model = info.model ? `${info.model.name} · ${info.model.backbone}` : "model";
    $("title").textContent = `fcnseg · ${model} · ${info.dataset}`;
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
  $("result").hidden = true;
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
    showError(`${file.name}: ${data.error}`);
    return;
  }
  await show(data, file.name);
  setStatus(`${file.name} · ${data.width} × ${data.height} pixels · ${data.classes.length} classes · ` +
    `inference ${data.elapsed_ms.toFixed(0)} ms`);
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
  const [img, color] = await Promise.all([decodePng(data.image_png), decodePng(data.color_png)]);
  const canvas = $("overlay");
  canvas.width = data.width;
  canvas.height = data.height;
  state.image = pixelsOf(img, data.width, data.height);
  state.color = pixelsOf(color, data.width, data.height);
  state.out = canvas.getContext("2d").createImageData(data.width, data.height);
  render();

  const legend = $("legend");
  legend.replaceChildren();
  for (const cls of data.classes) {
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

  if (state.maskUrl) URL.revokeObjectURL(state.maskUrl);
  state.maskUrl = URL.createObjectURL(base64Blob(data.mask_png, "image/png"));
  const link = $("download");
  link.href = state.maskUrl;
  link.download = fileName.replace(/\.[^.]*$/, "") + "_mask.png";
  link.title = "Palette PNG: pixel values are class ids, viewers show the class colours";
  $("result").hidden = false;
}

function render() {
  state.pending = false;
  if (!state.out) return;
  const a = Number($("opacity").value) / 100;
  const inv = 1 - a;
  const image = state.image;
  const color = state.color;
  const out = state.out.data;
  for (let i = 0; i < out.length; i += 4) {
    out[i] = Math.floor(inv * image[i] + a * color[i] + 0.5);
    out[i + 1] = Math.floor(inv * image[i + 1] + a * color[i + 1] + 0.5);
    out[i + 2] = Math.floor(inv * image[i + 2] + a * color[i + 2] + 0.5);
    out[i + 3] = 255;
  }
  $("overlay").getContext("2d").putImageData(state.out, 0, 0);
}

function onOpacity() {
  $("opacity-value").textContent = $("opacity").value + "%";
  if (!state.pending) {  // one redraw per frame, however fast the slider moves
    state.pending = true;
    requestAnimationFrame(render);
  }
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
  $("opacity").addEventListener("input", onOpacity);
  // A file dropped next to the drop zone would make the browser leave the page to open it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  loadInfo();
}

init();
