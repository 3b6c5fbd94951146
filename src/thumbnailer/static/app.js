// Upload with progress (XMLHttpRequest: fetch has no upload progress), then long-poll the status.
"use strict";
const drop = document.getElementById("drop");
const input = document.getElementById("file");
const list = document.getElementById("uploads");

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

function show(box, image) {
  const status = box.querySelector(".status");
  status.textContent = image.status;
  status.className = "status " + image.status;
  box.dataset.status = image.status;
  box.dataset.id = image.id;
  if (image.status === "ERROR") {
    box.append(el("p", { class: "error" }, image.error || "processing failed"));
  }
  if (image.status === "DONE") {
    const thumbs = box.querySelector(".thumbs");
    thumbs.replaceChildren();
    Object.entries(image.thumbnails).forEach(([label, url]) => {
      const figure = el("figure");
      figure.append(el("img", { src: url, alt: label, "data-label": label }), el("figcaption", {}, label));
      thumbs.append(figure);
    });
  }
}

async function follow(box, location) {
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
    if (image.status === "DONE" || image.status === "ERROR") return;
  }
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
    follow(box, xhr.getResponseHeader("Location"));
  };
  xhr.onerror = () => show(box, { status: "ERROR", error: "network error" });
  xhr.send(form);
}

input.addEventListener("change", () => [...input.files].forEach(upload));
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => [...e.dataTransfer.files].forEach(upload));
