// Recent images, newest first (the caller's own in jwt mode; all for an admin); refreshes every
// 5 s; "Older images" follows the cursor.
"use strict";
const rows = document.getElementById("rows");
const more = document.getElementById("more");
const filter = document.getElementById("status");
let cursor = null;

function cell(row, content) {
  const td = document.createElement("td");
  if (content instanceof Node) td.append(content); else td.textContent = content ?? "";
  row.append(td);
}

function render(image) {
  const tr = document.createElement("tr");
  const thumb = image.thumbnails["100x100"];
  if (thumb) { const img = document.createElement("img"); img.src = thumb; img.alt = ""; cell(tr, img); } else cell(tr, "");
  cell(tr, image.filename || image.id);
  const status = document.createElement("span");
  status.className = "status " + image.status; status.textContent = image.status;
  cell(tr, status);
  cell(tr, `${image.width}×${image.height}, ${(image.size_bytes / 1024).toFixed(0)} KiB`);
  cell(tr, new Date(image.created_at).toLocaleString());
  cell(tr, image.error || "");
  return tr;
}

async function load(append) {
  const params = new URLSearchParams({ limit: "25" });
  if (filter.value) params.set("status", filter.value);
  if (append && cursor) params.set("cursor", cursor);
  const response = await fetch("/images?" + params, { headers: auth.headers() });
  if (!response.ok) { if (auth.refused(response.status)) rows.replaceChildren(); return; }
  const page = await response.json();
  if (!append) rows.replaceChildren();
  page.items.forEach((image) => rows.append(render(image)));
  cursor = page.next_cursor;
  more.hidden = !cursor;
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

filter.addEventListener("change", () => load(false));
auth.onChange(() => load(false));
more.addEventListener("click", () => load(true));
load(false);
setInterval(() => { if (!cursor || rows.children.length <= 25) load(false); }, 5000);
