// Recent images, newest first (the caller's own in jwt mode; all for an admin); refreshes every
// 5 s; "Older images" follows the cursor. Each row can be made again (reprocess, once finished)
// or deleted (after a confirmation: the thumbnails and every file made from it go too).
"use strict";
const rows = document.getElementById("rows");
const more = document.getElementById("more");
const filter = document.getElementById("status");
const note = document.getElementById("note");
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
  const actions = document.createElement("span");
  actions.append(
    button("Reprocess", "reprocess", image, image.status !== "DONE" && image.status !== "ERROR"),
    button("Delete", "delete", image, false),
  );
  cell(tr, actions);
  tr.dataset.id = image.id;
  return tr;
}

function button(label, action, image, disabled) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.className = action;
  b.dataset.action = action;
  b.dataset.id = image.id;
  b.dataset.name = image.filename || image.id;
  b.disabled = disabled;
  return b;
}

async function problem(response) {
  try { return (await response.json()).detail; } catch { return `HTTP ${response.status}`; }
}

async function act(target) {
  const { action, id, name } = target.dataset;
  if (action === "delete") {
    if (!confirm(`Delete ${name}? Its thumbnails go too; this cannot be undone.`)) return;
    const response = await fetch(`/images/${id}`, { method: "DELETE", headers: auth.headers() });
    if (response.status === 204 || response.status === 404) {
      rows.querySelector(`tr[data-id="${id}"]`)?.remove();
      note.textContent = `deleted ${name}`;
    } else if (!auth.refused(response.status)) note.textContent = `not deleted: ${await problem(response)}`;
  } else if (action === "reprocess") {
    const response = await fetch(`/images/${id}/reprocess`, { method: "POST", headers: auth.headers() });
    if (response.status === 202) { note.textContent = `making ${name} again`; load(false); }
    else if (!auth.refused(response.status)) note.textContent = `not reprocessed: ${await problem(response)}`;
  }
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
rows.addEventListener("click", (e) => { if (e.target.dataset?.action) act(e.target); });
load(false);
setInterval(() => { if (!cursor || rows.children.length <= 25) load(false); }, 5000);
