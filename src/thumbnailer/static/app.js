// Upload with progress (XMLHttpRequest: fetch has no upload progress), then follow the status
// over Server-Sent Events (fetch, so the bearer token can be sent: EventSource cannot send
// headers), falling back to long-polling. When DONE: each thumbnail at its real size, the
// BlurHash placeholder and dominant colour painted in its place until it has loaded.
"use strict";
const drop = document.getElementById("drop");
const input = document.getElementById("file");
const list = document.getElementById("uploads");
const FINAL = new Set(["DONE", "ERROR"]);
let blurhash = null; // the vendored decoder, loaded on first use
const decoder = () => (blurhash ||= import("/static/blurhash.js"));

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
  if (text) node.textContent = text;
  return node;
}

function card(file) {
  const box = el("div", { class: "card" });
  box.append(el("h3", {}, file.name), el("progress", { max: "100", value: "0" }));
  const status = el("span", { class: "status" }, "uploading");
  box.append(status, el("div", { class: "thumbs" }));
  list.prepend(box);
  return box;
}

function size(bytes) {
  if (bytes == null) return "";
  return bytes < 1024 ? `${bytes} B` : `${(bytes / 1024).toFixed(1)} kB`;
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) { // no clipboard API (an insecure origin): the old way
    const area = el("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "copied";
  setTimeout(() => { button.textContent = "copy URL"; }, 1500);
}

async function paintBlur(canvas, placeholder) {
  const width = 32;
  const height = Math.max(1, Math.round(width / placeholder.aspect_ratio));
  try {
    const { decode } = await decoder();
    const pixels = decode(placeholder.hash, width, height);
    canvas.width = width;
    canvas.height = height;
    canvas.getContext("2d").putImageData(new ImageData(pixels, width, height), 0, 0);
    canvas.dataset.painted = "true";
  } catch (_) { /* the colour behind it is placeholder enough */ }
}

function rendition(item, placeholder) {
  const figure = el("figure");
  const slot = el("div", { class: "slot" });
  slot.style.aspectRatio = `${item.width} / ${item.height}`;
  slot.style.width = `${item.width}px`;
  if (placeholder) {
    slot.style.backgroundColor = placeholder.color;
    slot.dataset.color = placeholder.color;
    const blur = el("canvas", { class: "blur", "aria-hidden": "true" });
    slot.append(blur);
    paintBlur(blur, placeholder);
  }
  const img = el("img", {
    src: item.url, alt: item.label, "data-label": item.label,
    width: String(item.width), height: String(item.height), decoding: "async",
  });
  img.addEventListener("load", () => img.classList.add("loaded"));
  slot.append(img);
  const button = el("button", { type: "button", class: "copy", title: item.url }, "copy URL");
  button.addEventListener("click", () => copy(item.url, button));
  const caption = el("figcaption");
  caption.append(
    el("span", {}, `${item.label} · ${item.width}×${item.height} · ${size(item.bytes)}`), button,
  );
  figure.append(slot, caption);
  return figure;
}

function show(box, image) {
  const status = box.querySelector(".status");
  status.textContent = image.status;
  status.className = "status " + image.status;
  box.dataset.status = image.status;
  box.dataset.id = image.id;
  if (image.status === "ERROR" && !box.querySelector(".error")) {
    box.append(el("p", { class: "error" }, image.error || "processing failed"));
  }
  const thumbs = box.querySelector(".thumbs");
  if (image.status === "DONE" && !box.dataset.shown) {
    box.dataset.shown = "true";
    const items = image.renditions && image.renditions.length ? image.renditions
      : Object.entries(image.thumbnails).map(([label, url]) => ({ label, url, width: 0, height: 0 }));
    thumbs.replaceChildren(...items.map((item) => rendition(item, image.placeholder)));
  } else if (!FINAL.has(image.status) && !thumbs.children.length) {
    thumbs.append(el("div", { class: "pending" }, "making thumbnails…"));
  }
}

// Server-Sent Events over fetch. True once the image is final; false to fall back to polling.
async function stream(box, id) {
  let lastId = null;
  for (let attempt = 0; attempt < 3; attempt += 1) {
    const headers = auth.headers({ Accept: "text/event-stream", ...(lastId ? { "Last-Event-ID": lastId } : {}) });
    let response;
    try {
      response = await fetch(`/images/${id}/events`, { headers, cache: "no-store" });
    } catch (_) {
      continue;
    }
    if (response.status === 204) return true; // what we had was already final
    const type = response.headers.get("Content-Type") || "";
    if (!response.ok || !response.body || !type.startsWith("text/event-stream")) {
      auth.refused(response.status);
      return false;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let data = [];
    let eventId = null;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        // A chunk may end between the \r and \n of one line end: keep a trailing \r for later.
        const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
        const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
        buffer = lines.pop() + buffer.slice(cut);
        for (const line of lines) {
          if (line === "") {
            if (eventId !== null) lastId = eventId;
            if (data.length) {
              const image = JSON.parse(data.join("\n"));
              show(box, image);
              if (FINAL.has(image.status)) { reader.cancel(); return true; }
            }
            data = [];
            eventId = null;
          } else if (!line.startsWith(":")) {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let text = colon < 0 ? "" : line.slice(colon + 1);
            if (text.startsWith(" ")) text = text.slice(1);
            if (field === "data") data.push(text);
            else if (field === "id") eventId = text;
          }
        }
      }
    } catch (_) { /* the connection dropped: resume from lastId */ }
  }
  return false;
}

async function poll(box, location) {
  let etag = null;
  for (;;) {
    const headers = auth.headers(etag ? { "If-None-Match": etag } : {});
    const response = await fetch(location + "?wait=25", { headers });
    if (response.status === 304) continue;
    if (!response.ok) {
      auth.refused(response.status);
      show(box, { status: "ERROR", error: `status check failed (${response.status})` });
      return;
    }
    etag = response.headers.get("ETag");
    const image = await response.json();
    show(box, image);
    if (FINAL.has(image.status)) return;
  }
}

async function follow(box, id, location) {
  const streamed = "ReadableStream" in window && "TextDecoderStream" in window && (await stream(box, id));
  if (!streamed) await poll(box, location);
}

function upload(file) {
  const box = card(file);
  const bar = box.querySelector("progress");
  const form = new FormData();
  form.append("file", file);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/images");
  Object.entries(auth.headers()).forEach(([name, value]) => xhr.setRequestHeader(name, value));
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
  xhr.onload = () => {
    bar.value = 100;
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
    if (xhr.status !== 202) {
      auth.refused(xhr.status);
      show(box, { status: "ERROR", error: body.detail || `upload failed (${xhr.status})` });
      return;
    }
    show(box, body);
    follow(box, body.id, xhr.getResponseHeader("Location"));
  };
  xhr.onerror = () => show(box, { status: "ERROR", error: "network error" });
  xhr.send(form);
}

input.addEventListener("change", () => [...input.files].forEach(upload));
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => [...e.dataTransfer.files].forEach(upload));
