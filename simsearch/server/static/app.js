// simsearch page: search by an uploaded image, more like an item, recommendations from likes, near-duplicates.
// The search is described by the address (?view=similar&item=12&k=20&label=cats...): shareable, and the back
// button goes back to the previous search. No build step.
"use strict";
const $ = (id) => document.getElementById(id);
const MAX_K = 1000;
const uploads = new Map(); // token -> File, for this tab's history entries of uploads (files are not in URLs)
const feedback = { like: new Set(), unlike: new Set() };
let shown = []; // hits on the page
let seq = 0; // the latest search: answers to older ones are ignored

// ---------------------------------------------------------------- the address

function readUrl() {
  const p = new URLSearchParams(location.search);
  const ids = (name) => (p.get(name) || "").split(",").filter((x) => /^\d+$/.test(x)).map(Number);
  return {
    view: p.get("view") || "",
    item: /^\d+$/.test(p.get("item") || "") ? Number(p.get("item")) : null,
    upload: p.get("upload") || "",
    k: Number(p.get("k")) || 20,
    label: p.get("label") || "",
    prefix: p.get("prefix") || "",
    threshold: Number(p.get("threshold")) || 0.9,
    like: ids("like"),
    unlike: ids("unlike"),
  };
}

function options() {
  return { k: Number($("k").value), label: $("label").value, prefix: $("prefix").value.trim(),
           threshold: Number($("threshold").value) || 0.9 };
}

function toUrl(s) {
  const p = new URLSearchParams();
  if (s.view) p.set("view", s.view);
  if (s.item !== null && s.item !== undefined) p.set("item", s.item);
  if (s.upload) p.set("upload", s.upload);
  if (s.view === "recommend") {
    if (s.like.length) p.set("like", s.like.join(","));
    if (s.unlike.length) p.set("unlike", s.unlike.join(","));
  }
  if (s.k !== 20) p.set("k", s.k);
  if (s.label) p.set("label", s.label);
  if (s.prefix) p.set("prefix", s.prefix);
  if (s.view === "duplicates" && s.threshold !== 0.9) p.set("threshold", s.threshold);
  const q = p.toString();
  return q ? `?${q}` : location.pathname;
}

function navigate(change, push = true) {
  const s = { ...readUrl(), ...options(), ...change };
  history[push ? "pushState" : "replaceState"](null, "", toUrl(s));
  route();
}

// ---------------------------------------------------------------- talking to the service

async function call(url, init) {
  const res = await fetch(url, { credentials: "same-origin", ...init });
  let body = null;
  try { body = await res.json(); } catch (e) { /* not JSON */ }
  if (!res.ok) throw new Error((body && body.detail) || `${res.status} ${res.statusText}`);
  return body;
}

function filterParams(s, k) {
  const p = new URLSearchParams({ k: String(k) });
  if (s.label) p.set("label", s.label);
  if (s.prefix) p.set("path_prefix", s.prefix);
  return p;
}

function request(s, k) {
  if (s.view === "similar") return call(`items/${s.item}/similar?${filterParams(s, k)}`);
  if (s.view === "duplicates") {
    return call(`items/${s.item}/duplicates?threshold=${s.threshold}`).then((d) => ({ results: d.duplicates, took_ms: 0 }));
  }
  if (s.view === "recommend") {
    const filter = {};
    if (s.label) filter.label = s.label;
    if (s.prefix) filter.path_prefix = s.prefix;
    const body = { positive: s.like, negative: s.unlike, k, filter: Object.keys(filter).length ? filter : null };
    return call("recommend", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  }
  const file = uploads.get(s.upload);
  if (!file) return Promise.reject(new Error("the uploaded image is not kept when the page is reloaded: drop it again"));
  const form = new FormData();
  form.append("image", file);
  for (const [key, value] of filterParams(s, k)) form.append(key, value);
  return call("search", { method: "POST", body: form });
}

// ---------------------------------------------------------------- showing

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function image(src, alt) {
  const img = document.createElement("img");
  img.alt = alt;
  img.loading = "lazy";
  img.addEventListener("error", () => img.replaceWith(placeholder()), { once: true });
  img.src = src;
  return img;
}

function placeholder() {
  const div = document.createElement("div");
  div.className = "placeholder";
  div.textContent = "no preview";
  return div;
}

function link(href, text, title) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  a.title = title;
  a.target = "_blank";
  a.rel = "noopener";
  return a;
}

function showQuery(s) {
  $("query").hidden = false;
  $("hint").hidden = true;
  const thumb = $("query-thumb");
  let src = null, title = "";
  const links = [];
  if (s.view === "upload") {
    const file = uploads.get(s.upload);
    src = file ? URL.createObjectURL(file) : null;
    title = `uploaded: ${file ? file.name || "pasted image" : "(not kept)"}`;
  } else if (s.view === "recommend") {
    src = s.like.length ? `items/${s.like[0]}/thumbnail?size=256` : null;
    title = `recommended: like ${s.like.join(", ") || "–"} · not like ${s.unlike.join(", ") || "–"}`;
  } else {
    src = `items/${s.item}/thumbnail?size=256`;
    title = s.view === "duplicates" ? `near-duplicates of item ${s.item}` : `more like item ${s.item}`;
    links.push(link(`items/${s.item}/image`, "full image", "the indexed file"),
               link(`items/${s.item}`, "metadata", "the item's metadata (JSON)"));
    const other = document.createElement("a");
    other.href = toUrl({ ...s, view: s.view === "duplicates" ? "similar" : "duplicates" });
    other.textContent = s.view === "duplicates" ? "more like it" : "near-duplicates";
    other.addEventListener("click", (e) => { e.preventDefault(); navigate({ view: s.view === "duplicates" ? "similar" : "duplicates" }); });
    links.push(other);
  }
  thumb.replaceChildren(src ? image(src, "query image") : placeholder());
  thumb.firstChild.id = "query-img";
  $("query-title").textContent = title;
  $("query-links").replaceChildren(...links);
}

function card(hit) {
  const el = document.createElement("div");
  el.className = "result";
  el.dataset.id = hit.id;
  el.dataset.label = hit.label ?? "";
  const open = document.createElement("button");
  open.type = "button";
  open.className = "open";
  open.title = `more like ${hit.path}`;
  const thumb = document.createElement("div");
  thumb.className = "thumb";
  thumb.append(image(`${hit.thumbnail}?size=256`, hit.path));
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
  if (hit.label !== null && hit.label !== undefined) {
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = hit.label;
    meta.append(label);
  }
  const path = document.createElement("div");
  path.className = "path";
  path.textContent = hit.path;
  meta.append(path);
  open.append(thumb, meta);
  open.addEventListener("click", () => navigate({ view: "similar", item: hit.id, upload: "" }));
  const actions = document.createElement("div");
  actions.className = "actions";
  const like = toggle("like", "✓ like", "like: recommend more like this", hit.id);
  const unlike = toggle("unlike", "✗ not", "not like: recommend less like this", hit.id);
  const dups = document.createElement("button");
  dups.type = "button";
  dups.className = "dups";
  dups.textContent = "dups";
  dups.title = "near-duplicates of this item";
  dups.addEventListener("click", () => navigate({ view: "duplicates", item: hit.id, upload: "" }));
  actions.append(like, unlike, dups, link(hit.image, "image", "the full image"), link(`items/${hit.id}`, "info", "metadata (JSON)"));
  el.append(open, actions);
  paint(el);
  return el;
}

function toggle(kind, text, title, id) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = kind;
  b.textContent = text;
  b.title = title;
  b.setAttribute("aria-pressed", "false");
  b.addEventListener("click", () => {
    const other = kind === "like" ? "unlike" : "like";
    if (feedback[kind].has(id)) feedback[kind].delete(id);
    else { feedback[kind].add(id); feedback[other].delete(id); }
    for (const el of document.querySelectorAll(`#results .result[data-id='${id}']`)) paint(el);
    showFeedback();
  });
  return b;
}

function paint(el) {
  const id = Number(el.dataset.id);
  const liked = feedback.like.has(id), unliked = feedback.unlike.has(id);
  el.classList.toggle("liked", liked);
  el.classList.toggle("unliked", unliked);
  el.querySelector(".like").setAttribute("aria-pressed", String(liked));
  el.querySelector(".unlike").setAttribute("aria-pressed", String(unliked));
}

function showFeedback() {
  const n = feedback.like.size, m = feedback.unlike.size;
  $("feedback").hidden = n + m === 0;
  $("feedback-counts").textContent = `${n} liked · ${m} not liked`;
  $("recommend").disabled = n === 0;
  $("recommend").textContent = readUrl().view === "recommend" ? "Refresh recommendations" : "Recommend";
}

function render(hits, append) {
  const grid = $("results");
  if (!append) { grid.replaceChildren(); shown = []; }
  const fresh = hits.slice(shown.length);
  shown = shown.concat(fresh);
  grid.append(...fresh.map(card));
}

// ---------------------------------------------------------------- searching

async function run(s, append) {
  const mine = ++seq;
  showError("");
  const pageSize = s.k;
  const k = append ? Math.min(MAX_K, shown.length + pageSize) : pageSize;
  if (!append) { $("results").replaceChildren(); shown = []; } // never the previous search's results under a new query
  $("more-box").hidden = true;
  $("status").textContent = "searching…";
  try {
    const data = await request(s, k);
    if (mine !== seq) return;
    render(data.results, append);
    const more = s.view !== "duplicates" && data.results.length >= k && k < MAX_K;
    $("more-box").hidden = !more;
    const took = data.took_ms ? ` in ${data.took_ms.toFixed(1)} ms` : "";
    const what = s.view === "duplicates" ? (shown.length === 1 ? "near-duplicate" : "near-duplicates")
      : (shown.length === 1 ? "result" : "results");
    $("status").textContent = `${shown.length} ${what}${took} · score = cosine similarity`;
  } catch (e) {
    if (mine !== seq) return;
    $("results").replaceChildren();
    shown = [];
    $("status").textContent = "";
    showError(e.message);
  }
}

function route() {
  const s = readUrl();
  $("k").value = String(s.k);
  if (![...$("k").options].some((o) => o.value === String(s.k))) $("k").append(new Option(String(s.k), String(s.k), true, true));
  ensureLabelOption(s.label);
  $("label").value = s.label;
  $("prefix").value = s.prefix;
  $("threshold").value = String(s.threshold);
  $("threshold-box").hidden = s.view !== "duplicates";
  if (s.view === "recommend") {
    feedback.like = new Set(s.like);
    feedback.unlike = new Set(s.unlike);
  }
  showFeedback();
  const ok = (s.view === "similar" || s.view === "duplicates") ? s.item !== null
    : s.view === "recommend" ? s.like.length > 0 : s.view === "upload";
  if (!ok) {
    $("query").hidden = true;
    $("hint").hidden = false;
    $("results").replaceChildren();
    $("more-box").hidden = true;
    shown = [];
    return;
  }
  showQuery(s);
  run(s, false);
}

function searchFile(file) {
  if (!file) return;
  const token = Math.random().toString(36).slice(2, 10);
  uploads.set(token, file);
  navigate({ view: "upload", upload: token, item: null });
}

function ensureLabelOption(label) {
  if (label && ![...$("label").options].some((o) => o.value === label)) $("label").append(new Option(label, label));
}

// ---------------------------------------------------------------- wiring

function setup() {
  const drop = $("drop");
  const input = $("file-input");
  input.addEventListener("change", () => {
    const file = input.files[0];
    input.value = ""; // choosing the same file again is a new search
    searchFile(file);
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  drop.addEventListener("drop", (e) => searchFile(e.dataTransfer.files[0]));
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
    if (item) searchFile(item.getAsFile());
  });
  // a changed option is a new search: a new history entry (back returns to the previous options)
  for (const id of ["k", "label", "prefix", "threshold"]) $(id).addEventListener("change", () => navigate({}));
  $("more").addEventListener("click", () => run(readUrl(), true));
  $("recommend").addEventListener("click", () =>
    navigate({ view: "recommend", like: [...feedback.like], unlike: [...feedback.unlike], item: null, upload: "" }));
  $("clear-feedback").addEventListener("click", () => {
    feedback.like.clear();
    feedback.unlike.clear();
    for (const el of document.querySelectorAll("#results .result")) paint(el);
    showFeedback();
  });
  $("home").addEventListener("click", (e) => { e.preventDefault(); history.pushState(null, "", location.pathname); route(); });
  window.addEventListener("popstate", route);

  call("info")
    .then((info) => {
      $("info").textContent = `${info.count} images in ${info.labels} labels · backbone ${info.backbone} · ${info.name}`;
    })
    .catch((e) => showError(`cannot read the index information: ${e.message}`));
  call("labels?limit=1000")
    .then((data) => {
      const current = readUrl().label;
      for (const { label, count } of data.labels) {
        if (label === null) continue;
        const existing = [...$("label").options].find((o) => o.value === label);
        if (existing) existing.textContent = `${label} (${count})`;
        else $("label").append(new Option(`${label} (${count})`, label));
      }
      $("label").value = current;
    })
    .catch(() => { /* the picker stays with "any label" */ });
  route();
}

setup();
