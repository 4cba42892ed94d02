// tki search page: plain JavaScript, no build step, no network beyond this service.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("query-form"), fileInput = $("query-file"), drop = $("drop-zone"), preview = $("query-preview");
  const kInput = $("k"), domainSelect = $("domain"), keyInput = $("api-key"), keyLabel = $("api-key-label");
  const button = $("search-button"), errorBox = $("error"), statusLine = $("status"), results = $("results");
  const textZone = $("text-zone"), textInput = $("query-text"), textHelp = $("text-help");
  let queryFile = null;
  let mode = "image"; // what the last query was: "image" (the picked file) or "text" (the words typed)
  let thumbUrls = [];
  let generation = 0;

  function headers() {
    const key = keyInput.value || sessionStorage.getItem("tki-api-key") || "";
    return key ? { Authorization: "Bearer " + key } : {};
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function clearError() {
    errorBox.hidden = true;
    errorBox.textContent = "";
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error) return body.error + " (HTTP " + response.status + ")";
    } catch (e) { /* not JSON */ }
    return "the service answered HTTP " + response.status;
  }

  function needKey() {
    keyLabel.hidden = false;
    keyInput.focus();
  }

  async function loadInfo() {
    let response;
    try {
      response = await fetch("/v1/info", { headers: headers() });
    } catch (e) {
      showError("cannot reach the service: " + e.message);
      return;
    }
    if (response.status === 401) { needKey(); showError(await errorMessage(response)); return; }
    if (!response.ok) { showError(await errorMessage(response)); return; }
    const info = await response.json();
    const g = info.gallery, m = info.model;
    $("model-info").textContent = m.name + " (" + (m.precision || "?") + ") \u00b7 gallery of " +
      g.items.toLocaleString() + " images \u00b7 " + g.dtype + " " + g.metric + " \u00b7 version " + (g.version || "-");
    const keep = domainSelect.value;
    domainSelect.length = 1;
    for (const [name, count] of Object.entries(g.domains || {})) {
      const opt = document.createElement("option");
      opt.value = name;
      opt.textContent = name + " (" + count + ")";
      domainSelect.appendChild(opt);
    }
    domainSelect.value = keep;
    kInput.max = String(Math.min(info.limits.max_k, 200));
    const text = info.text && info.text.available;
    textZone.hidden = !text;
    textHelp.hidden = !text;
    if (text) textInput.maxLength = info.limits.max_text_chars;
  }

  function setFile(file) {
    if (!file) return;
    queryFile = file;
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    preview.alt = "query image " + file.name;
    preview.hidden = false;
    mode = "image";
    search();
  }

  function releaseThumbs() {
    for (const u of thumbUrls) URL.revokeObjectURL(u);
    thumbUrls = [];
  }

  async function loadThumb(img, key, gen) {
    try {
      const response = await fetch("/v1/items/" + key + "/thumbnail", { headers: headers() });
      if (!response.ok || gen !== generation) return;
      const url = URL.createObjectURL(await response.blob());
      thumbUrls.push(url);
      img.src = url;
    } catch (e) { /* the caption still names the item */ }
  }

  function render(body, gen) {
    releaseThumbs();
    results.replaceChildren();
    const hits = body.results[0];
    hits.keys.forEach((key, i) => {
      const meta = hits.metadata[i] || {};
      const li = document.createElement("li");
      li.dataset.key = key;
      li.dataset.domain = meta.domain || "";
      li.dataset.class = meta["class"] || "";
      const img = document.createElement("img");
      img.alt = (meta["class"] || "item " + key) + (meta.domain ? " (" + meta.domain + ")" : "");
      img.width = 150;
      img.height = 150;
      const cap = document.createElement("div");
      cap.className = "caption";
      const title = document.createElement("strong");
      title.textContent = (i + 1) + ". " + (meta["class"] || "item " + key);
      const detail = document.createElement("span");
      detail.className = "detail";
      detail.textContent = (meta.domain || "-") + " \u00b7 distance " + hits.distances[i].toFixed(4);
      cap.append(title, detail);
      li.append(img, cap);
      li.tabIndex = 0;
      results.appendChild(li);
      loadThumb(img, key, gen);
    });
  }

  function hasQuery() {
    return mode === "text" ? textInput.value.trim() !== "" : queryFile !== null;
  }

  async function search() {
    const words = textInput.value.trim();
    if (mode === "text" && !words) { showError("type some words to search for"); textInput.focus(); return; }
    if (mode === "image" && !queryFile) {
      showError(textZone.hidden ? "choose a query image first" : "choose a query image or type some words");
      fileInput.focus();
      return;
    }
    const k = Number(kInput.value);
    if (!Number.isInteger(k) || k < 1 || k > Number(kInput.max)) {
      showError("k must be a whole number from 1 to " + kInput.max);
      kInput.focus();
      return;
    }
    clearError();
    const gen = ++generation;
    let request;
    if (mode === "text") {
      const body = { text: words, k: k };
      if (domainSelect.value) body.where = { domain: domainSelect.value };
      request = { method: "POST", body: JSON.stringify(body),
                  headers: Object.assign({ "Content-Type": "application/json" }, headers()) };
    } else {
      const data = new FormData();
      data.append("image", queryFile, queryFile.name);
      data.append("k", String(k));
      if (domainSelect.value) data.append("where", JSON.stringify({ domain: domainSelect.value }));
      request = { method: "POST", body: data, headers: headers() };
    }
    button.disabled = true;
    statusLine.textContent = "searching\u2026";
    const t0 = performance.now();
    try {
      const response = await fetch("/v1/search", request);
      if (gen !== generation) return;
      if (response.status === 401) needKey();
      if (!response.ok) {
        results.replaceChildren();
        statusLine.textContent = "";
        showError(await errorMessage(response));
        return;
      }
      const body = await response.json();
      const ms = performance.now() - t0;
      render(body, gen);
      const n = body.results[0].keys.length;
      statusLine.textContent = n + " result" + (n === 1 ? "" : "s") +
        (mode === "text" ? " for \u201c" + words + "\u201d" : "") + " in " + ms.toFixed(0) + " ms (server " +
        body.took_ms.toFixed(0) + " ms)" + (domainSelect.value ? " from domain " + domainSelect.value : "");
    } catch (e) {
      showError("the search failed: " + e.message);
      statusLine.textContent = "";
    } finally {
      if (gen === generation) button.disabled = false;
    }
  }

  form.addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
  fileInput.addEventListener("change", () => setFile(fileInput.files[0]));
  textInput.addEventListener("input", () => { mode = "text"; });
  domainSelect.addEventListener("change", () => { if (hasQuery()) search(); });
  kInput.addEventListener("change", () => { if (hasQuery()) search(); });
  keyInput.addEventListener("change", () => { sessionStorage.setItem("tki-api-key", keyInput.value); loadInfo(); });
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("dragging"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("dragging"); });
  }
  drop.addEventListener("drop", (e) => {
    const f = e.dataTransfer && e.dataTransfer.files[0];
    if (f) setFile(f);
  });
  loadInfo();
})();
