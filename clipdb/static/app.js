// clipdb search page: plain JavaScript, no build step, no external resources.
"use strict";

const form = document.getElementById("search-form");
const dropZone = document.getElementById("drop-zone");
const imageInput = document.getElementById("image-input");
const preview = document.getElementById("query-preview");
const hint = document.getElementById("drop-hint");
const textInput = document.getElementById("text-input");
const kInput = document.getElementById("k-input");
const afterInput = document.getElementById("after-input");
const beforeInput = document.getElementById("before-input");
const sortSelect = document.getElementById("sort-select");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");

let queryFile = null; // the chosen or dropped image, if any
let lastSearch = null; // re-run when the date range or the order changes

// The date range and order as the API's after/before/sort parameters, or null (and a message)
// when the range is backwards. "to" is inclusive: before= is the next day (before is exclusive).
function filterParams() {
  const params = [];
  const from = afterInput.value;
  const to = beforeInput.value;
  if (from && to && from > to) {
    setStatus("The \"from\" date is after the \"to\" date.", true);
    return null;
  }
  if (from) params.push(["after", from]);
  if (to) {
    const next = new Date(`${to}T00:00:00Z`);
    next.setUTCDate(next.getUTCDate() + 1);
    params.push(["before", next.toISOString().slice(0, 10)]);
  }
  if (sortSelect.value !== "relevance") params.push(["sort", sortSelect.value]);
  return params;
}

// A photo's date in the reader's locale. Shown in UTC on purpose: a photo without an EXIF time
// zone (most cameras) is stored as its wall-clock time marked UTC, so UTC shows the camera's clock
// instead of shifting it by the browser's offset.
function formatTaken(iso) {
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return iso;
  return when.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short", timeZone: "UTC" });
}

// The folder of an indexed path, shortened from the left to its last folders ("…/2021/trip"):
// two files of one name in two folders must look different, and the end of a path tells them
// apart. The full path is the element's title.
const FOLDER_CHARS = 28;
function folderLine(path) {
  const folder = path.slice(0, Math.max(path.lastIndexOf("/"), 0)) || "/";
  const line = document.createElement("span");
  line.className = "folder";
  line.title = path;
  let shown = folder;
  if (folder.length > FOLDER_CHARS) {
    const parts = folder.split("/");
    shown = parts.pop();
    while (parts.length && shown.length + parts[parts.length - 1].length + 1 <= FOLDER_CHARS - 2) {
      shown = `${parts.pop()}/${shown}`;
    }
    shown = shown.length > FOLDER_CHARS - 2 ? `…${shown.slice(-(FOLDER_CHARS - 1))}` : `…/${shown}`;
  }
  const text = document.createElement("bdi"); // left to right inside the right-to-left line
  text.textContent = shown;
  line.append(text);
  return line;
}

function setStatus(message, isError = false) {
  statusLine.textContent = message;
  statusLine.classList.toggle("error", isError);
}

function setQueryImage(file, previewUrl) {
  queryFile = file;
  if (preview.src && preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  if (previewUrl) {
    preview.src = previewUrl;
    preview.hidden = false;
    hint.textContent = file ? file.name : "";
  } else {
    preview.removeAttribute("src");
    preview.hidden = true;
    hint.textContent = "Drop an image here, or click to choose one";
  }
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

// Searches run one after another as the user changes dates or order; answers can come back
// in another order. Only the newest search may paint the results (an older, slower answer that
// arrives later would show results for filters no longer on screen).
let newestRun = 0;

async function run(label, request) {
  const mine = ++newestRun;
  setStatus(`Searching ${label}…`);
  const started = performance.now();
  let response;
  try {
    response = await request();
  } catch (err) {
    if (mine === newestRun) setStatus(`Search failed: ${err}`, true);
    return;
  }
  if (mine !== newestRun) return;
  if (!response.ok) {
    setStatus(await errorMessage(response), true);
    return;
  }
  const hits = await response.json();
  if (mine !== newestRun) return;
  const ms = Math.round(performance.now() - started);
  render(hits);
  results.dataset.query = label;
  results.dataset.model = response.headers.get("X-Clipdb-Model") || "";
  const count = `${hits.length} result${hits.length === 1 ? "" : "s"}`;
  setStatus(`${count} ${label} in ${ms} ms${answeredBy(response)}`);
}

// " @ 01:23" after a video's name (the time of its best frame), "" for a photo.
function videoTime(hit) {
  if (hit.media !== "video" || hit.time == null) return "";
  const total = Math.floor(hit.time);
  const [h, m, s] = [Math.floor(total / 3600), Math.floor(total / 60) % 60, total % 60];
  const two = (n) => String(n).padStart(2, "0");
  return ` @ ${h ? `${h}:${two(m)}` : two(m)}:${two(s)}`;
}

function render(hits) {
  results.replaceChildren(...hits.map((hit) => {
    // A focusable card (not a <button>, which may not contain the link to the original).
    const card = document.createElement("div");
    card.tabIndex = 0;
    card.setAttribute("role", "button");
    card.className = "result";
    card.dataset.imageId = hit.image_id;
    card.title = `${hit.image_path}\nclick: more like this`;
    const img = document.createElement("img");
    img.src = `/api/images/${hit.image_id}/thumbnail`;
    img.alt = hit.filename;
    img.loading = "lazy";
    const caption = document.createElement("span");
    caption.className = "caption";
    const similarity = document.createElement("span");
    similarity.className = "similarity";
    // A hit found by its words alone has no similarity: say so instead.
    similarity.textContent = hit.similarity === null ? hit.match : hit.similarity.toFixed(3);
    const name = document.createElement("span");
    name.className = "filename";
    name.textContent = `#${hit.rank} ${hit.filename}${videoTime(hit)}`;
    const open = document.createElement("a");
    open.className = "open";
    // A video opens in the browser's player at the frame's second (a media fragment).
    open.href = hit.media === "video"
      ? `/api/images/${hit.image_id}/video#t=${hit.time}`
      : `/api/images/${hit.image_id}/file`;
    open.target = "_blank";
    open.rel = "noopener";
    open.textContent = "open";
    open.title = "open the original image";
    open.addEventListener("click", (event) => event.stopPropagation());
    caption.append(similarity, open, name, folderLine(hit.image_path));
    if (hit.taken_at) {
      const taken = document.createElement("time");
      taken.className = "taken";
      taken.dateTime = hit.taken_at;
      taken.textContent = formatTaken(hit.taken_at);
      caption.append(taken);
    }
    if (hit.matched_text) caption.append(matchedText(hit));
    card.append(img, caption);
    card.addEventListener("click", () => moreLike(hit));
    card.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        moreLike(hit);
      }
    });
    return card;
  }));
}

// The words around a text match, the query's words marked (built as nodes: the text is data).
function matchedText(hit) {
  const line = document.createElement("span");
  line.className = "matched";
  line.title = `found by ${hit.match === "both" ? "its words and CLIP" : hit.match}`;
  const fold = (s) => s.normalize("NFKD").replace(/[\u0300-\u036f]/g, "").toLowerCase();
  const words = fold(results.dataset.words || "").split(/[\s"]+/).filter((w) => w.length > 1);
  for (const part of hit.matched_text.split(/(\s+)/)) {
    const folded = fold(part);
    if (words.some((w) => folded.includes(w))) {
      const mark = document.createElement("mark");
      mark.textContent = part;
      line.append(mark);
    } else {
      line.append(part);
    }
  }
  return line;
}

function searchForm() {
  const text = textInput.value.trim();
  if (!queryFile && !text) {
    setStatus("Choose or drop an image, or type a text.", true);
    return;
  }
  const filters = filterParams();
  if (filters === null) return;
  lastSearch = searchForm;
  const body = new FormData();
  for (const [name, value] of filters) body.append(name, value);
  if (queryFile) body.append("image", queryFile);
  if (text) body.append("text", text);
  body.append("k", kInput.value || "12");
  if (pickedModel()) body.append("model", pickedModel());
  if (document.getElementById("hide-dupes").checked) body.append("hide_duplicates", "true");
  const label = queryFile && text ? `for "${text}" + image` : text ? `for "${text}"` : "by image";
  results.dataset.words = text;  // a text alone is also matched by the images' words
  run(label, () => fetch("/api/search", { method: "POST", body }));
}

function moreLike(hit) {
  const filters = filterParams();
  if (filters === null) return;
  lastSearch = () => moreLike(hit);
  queryFile = null;
  textInput.value = "";
  setQueryImage(null, `/api/images/${hit.image_id}/thumbnail`);
  hint.textContent = `more like ${hit.filename}`;
  const query = new URLSearchParams([["k", kInput.value || "12"], ...filters]);
  // The image's id is a row of the model that found it: ask that model for more like it.
  const model = results.dataset.model || pickedModel();
  if (model) query.append("model", model);
  run(`like ${hit.filename}`, () => fetch(`/api/similar/${hit.image_id}?${query}`));
  window.scrollTo({ top: 0, behavior: "smooth" });
}

// A new date range or order applies to the results on screen at once.
for (const control of [afterInput, beforeInput, sortSelect]) {
  control.addEventListener("change", () => {
    if (lastSearch) lastSearch();
  });
}

// Another model answers the query on screen again; "more like" an image stays with the
// model that found it (its id is that model's row), so there the pick applies from the next.
modelSelect.addEventListener("change", () => {
  if (lastSearch === searchForm) searchForm();
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  searchForm();
});

imageInput.addEventListener("change", () => {
  const file = imageInput.files[0];
  if (!file) return;
  setQueryImage(file, URL.createObjectURL(file));
  imageInput.value = ""; // choosing the same file again fires "change" again
  searchForm();
});

for (const type of ["dragenter", "dragover"]) {
  dropZone.addEventListener(type, (event) => {
    event.preventDefault();
    dropZone.classList.add("dragging");
  });
}
for (const type of ["dragleave", "drop"]) {
  dropZone.addEventListener(type, () => dropZone.classList.remove("dragging"));
}
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  const file = [...event.dataTransfer.files].find((f) => f.type.startsWith("image/"));
  if (!file) {
    setStatus("That is not an image file.", true);
    return;
  }
  setQueryImage(file, URL.createObjectURL(file));
  searchForm();
});

document.getElementById("clear-button").addEventListener("click", () => {
  setQueryImage(null, null);
  textInput.value = "";
  results.replaceChildren();
  delete results.dataset.query;
  delete results.dataset.model;
  lastSearch = null;
  setStatus("");
});

fetch("/api/stats")
  .then((response) => (response.ok ? response.json() : null))
  .then((stats) => {
    if (!stats) return;
    const serving = stats.serving;
    const model = stats.models.find((m) => m.model_id === serving.model_id);
    const count = model ? `, ${model.image_count} images` : "";
    // Random weights have no tag worth showing ("none"): the badge says what they mean.
    const weights = serving.pretrained && !serving.random_weights ? ` (${serving.pretrained})` : "";
    document.getElementById("model").textContent = `${serving.architecture}${weights}${count}`;
    document.getElementById("weights-badge").hidden = !serving.random_weights;
  })
  .catch(() => {});

// Why the kept image is kept, or what a duplicate has that the kept one lacks (a line).
function dupeNote(image) {
  const note = document.createElement("div");
  note.className = "dupe-note";
  if (image.keep && image.reason) note.textContent = `kept: ${image.reason}`;
  else if (image.extra_metadata && image.extra_metadata.length) {
    note.textContent = `has ${image.extra_metadata.join(", ")} the kept image lacks`;
  }
  return note;
}

// Duplicates view: the groups of GET /api/duplicates (exact and near), the kept image first.
function renderGroups(groups) {
  results.replaceChildren(...groups.map((group, index) => {
    const box = document.createElement("section");
    box.className = "dupe-group";
    box.dataset.tier = group.tier;
    const title = document.createElement("h2");
    title.textContent = `group ${index + 1}: ${group.tier}, ${group.images.length} images`;
    box.append(title);
    for (const image of group.images) {
      const card = document.createElement("figure");
      card.className = image.keep ? "dupe keep" : "dupe";
      card.dataset.imageId = image.image_id;
      card.title = image.image_path;
      const img = document.createElement("img");
      img.src = `/api/images/${image.image_id}/thumbnail`;
      img.alt = image.image_path.split("/").pop();
      img.loading = "lazy";
      const caption = document.createElement("figcaption");
      const how = image.keep ? "keep" : image.distance !== undefined
        ? `${image.distance} bits` : image.similarity !== undefined
          ? image.similarity.toFixed(3) : "";
      caption.textContent = `${how} · ${image.width}×${image.height} · ${img.alt}`;
      caption.append(folderLine(image.image_path));
      caption.append(dupeNote(image));
      card.append(img, caption);
      box.append(card);
    }
    return box;
  }));
}

document.getElementById("dupes-button").addEventListener("click", async () => {
  lastSearch = null; // the date controls do not apply to duplicate groups
  setStatus("Finding duplicates…");
  let response;
  try {
    response = await fetch("/api/duplicates");
  } catch (err) {
    setStatus(`Failed: ${err}`, true);
    return;
  }
  if (!response.ok) {
    setStatus(await errorMessage(response), true);
    return;
  }
  const groups = await response.json();
  renderGroups(groups);
  setStatus(groups.length ? `${groups.length} duplicate group${groups.length === 1 ? "" : "s"}`
    : "No duplicates");
});
