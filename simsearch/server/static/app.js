// simsearch page: search by an uploaded image, or click a result for "more like this". No build step.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { objectUrl: null };

function params() {
  const p = new URLSearchParams({ k: $("k").value });
  if ($("label").value.trim()) p.set("label", $("label").value.trim());
  if ($("prefix").value.trim()) p.set("path_prefix", $("prefix").value.trim());
  return p;
}

async function call(url, options) {
  const res = await fetch(url, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await res.json(); } catch (e) { /* not JSON */ }
  if (!res.ok) throw new Error((body && body.detail) || `${res.status} ${res.statusText}`);
  return body;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function showQuery(src, title) {
  $("query").hidden = false;
  $("hint").hidden = true;
  $("query-img").src = src;
  $("query-title").textContent = title;
  $("status").textContent = "searching…";
}

function render(data) {
  const grid = $("results");
  grid.replaceChildren();
  for (const hit of data.results) {
    const card = document.createElement("button");
    card.className = "result";
    card.type = "button";
    card.dataset.id = hit.id;
    card.dataset.label = hit.label ?? "";
    card.title = `more like ${hit.path}`;
    const thumb = document.createElement("div");
    thumb.className = "thumb";
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = hit.path;
    img.src = `${hit.thumbnail}?size=256`;
    thumb.append(img);
    const meta = document.createElement("div");
    meta.className = "meta";
    const row = document.createElement("div");
    row.className = "row";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${hit.rank}`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    row.append(rank, score);
    meta.append(row);
    if (hit.label !== null) {
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = hit.label;
      meta.append(label);
    }
    const path = document.createElement("div");
    path.className = "path";
    path.textContent = hit.path;
    meta.append(path);
    card.append(thumb, meta);
    card.addEventListener("click", () => searchItem(hit));
    grid.append(card);
  }
  $("status").textContent = `${data.results.length} results in ${data.took_ms.toFixed(1)} ms · score = cosine similarity`;
}

async function searchFile(file) {
  if (!file) return;
  showError("");
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = URL.createObjectURL(file);
  showQuery(state.objectUrl, `uploaded: ${file.name || "pasted image"}`);
  const form = new FormData();
  form.append("image", file);
  for (const [key, value] of params()) form.append(key, value);
  try {
    render(await call("search", { method: "POST", body: form }));
  } catch (e) {
    $("status").textContent = "";
    showError(e.message);
  }
}

async function searchItem(hit) {
  showError("");
  showQuery(`${hit.thumbnail}?size=256`, `more like item ${hit.id}: ${hit.path}`);
  window.scrollTo({ top: 0, behavior: "smooth" });
  try {
    render(await call(`items/${hit.id}/similar?${params()}`));
  } catch (e) {
    $("status").textContent = "";
    showError(e.message);
  }
}

function setup() {
  const drop = $("drop");
  $("file-input").addEventListener("change", (e) => searchFile(e.target.files[0]));
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file-input").click(); });
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => searchFile(e.dataTransfer.files[0]));
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
    if (item) searchFile(item.getAsFile());
  });
  call("info")
    .then((info) => {
      $("info").textContent = `${info.count} images in ${info.labels} labels · backbone ${info.backbone} · ${info.path}`;
    })
    .catch((e) => showError(`cannot read the index information: ${e.message}`));
}

setup();
