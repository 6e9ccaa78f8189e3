// mlxinterp explorer: plain JS, no framework, no CDN. Every number comes from the JSON API under /api/.
"use strict";

const $ = (id) => document.getElementById(id);
let INFO = null;

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k === "text") e.textContent = v;
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

// Tokens with their whitespace visible: a leading space is the difference between " Paris" and "Paris".
function showTok(t) {
  return t.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/ /g, "\u00b7");
}

function showError(msg) {
  const box = $("error");
  if (!msg) { box.hidden = true; box.textContent = ""; return; }
  box.hidden = false;
  box.textContent = msg;
}

async function api(path, body, signal) {
  const opts = body === undefined ? { signal } : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
  };
  const r = await fetch(path, opts);
  if (!r.ok) {
    let msg = `${r.status} ${r.statusText}`;
    try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return r;
}

async function apiJSON(path, body) { return (await api(path, body)).json(); }

async function guarded(status, fn) {
  showError(null);
  status.textContent = "running ...";
  const t0 = performance.now();
  try {
    await fn();
    status.textContent = `done in ${((performance.now() - t0) / 1000).toFixed(2)} s`;
  } catch (e) {
    if (e.name === "AbortError") return;
    status.textContent = "";
    showError(e.message);
  }
}

// colour scales: white -> blue for [0, 1]; blue <- white -> red for signed values
function blue(x) {
  const v = Math.max(0, Math.min(1, x));
  return `rgb(${Math.round(255 - 190 * v)},${Math.round(255 - 140 * v)},${Math.round(255 - 40 * v)})`;
}
function diverging(x) {
  if (x === null || Number.isNaN(x)) return "#eee";
  const v = Math.max(-1, Math.min(1, x));
  return v >= 0 ? `rgb(${Math.round(255 - 50 * v)},${Math.round(255 - 180 * v)},${Math.round(255 - 190 * v)})`
                : `rgb(${Math.round(255 + 190 * v)},${Math.round(255 + 130 * v)},${Math.round(255 + 40 * v)})`;
}
function textColour(bg) { const m = bg.match(/\d+/g); return m && (+m[0] + +m[1] + +m[2]) / 3 < 140 ? "#fff" : "#111"; }

function distTable(top) {
  const t = el("table");
  for (const [tok, p] of top) {
    const bar = el("div", { class: "bar" });
    bar.style.width = `${Math.max(1, Math.round(100 * p))}px`;
    t.append(el("tr", {}, el("td", { class: "tok", text: showTok(tok) }), el("td", { text: p.toFixed(3) }), el("td", {}, bar)));
  }
  return t;
}

// ------------------------------------------------------------------ tabs
function showView(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.view === name);
  for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== `view-${name}`;
  if (name === "results" && !$("results-list").dataset.loaded) loadResults();
  if (name === "steer" && !$("steer-source").dataset.loaded) loadVectors();
  history.replaceState(null, "", `#${name}`);
}

// ------------------------------------------------------------------ lens
let LENS = null;

function renderLens() {
  const res = LENS, grid = $("lens-grid"), byRank = $("lens-colour").value === "rank" && res.target_id !== null;
  grid.replaceChildren();
  const head = el("tr", {}, el("th", { text: "layer" }));
  res.tokens.forEach((t, j) => head.append(el("th", { class: "col", text: showTok(t), title: `position ${j}` })));
  grid.append(head);
  for (let l = res.n_layers - 1; l >= 0; l--) {
    const row = el("tr", {}, el("th", { text: String(l) }));
    res.cells[l].forEach((c, j) => {
      const [tok, p] = c.top[0];
      const v = byRank ? 1 - Math.min(1, Math.log10(1 + c.target_rank) / Math.log10(res.vocab_size)) : p;
      const bg = blue(v);
      const td = el("td", { class: "cell", text: showTok(tok), dataset: { layer: l, pos: j } });
      td.style.background = bg;
      td.style.color = textColour(bg);
      row.append(td);
    });
    grid.append(row);
  }
}

function lensHover(td) {
  const l = +td.dataset.layer, j = +td.dataset.pos, c = LENS.cells[l][j];
  const panel = $("lens-hover");
  panel.replaceChildren(
    el("div", { class: "hover-title", text: `layer ${l}, position ${j} (${showTok(LENS.tokens[j])})` }),
    el("div", { text: `entropy ${c.entropy.toFixed(2)} nats` }),
  );
  if (c.target_rank !== undefined) {
    panel.append(el("div", { class: "target", text: `target ${showTok(LENS.target)}: rank ${c.target_rank}, p ${c.target_prob.toExponential(2)}` }));
  }
  panel.append(distTable(c.top));
}

async function runLens(ev) {
  if (ev) ev.preventDefault();
  let res = null;
  await guarded($("lens-status"), async () => {
    res = await apiJSON("/api/lens", {
      prompt: $("lens-prompt").value, target: $("lens-target").value, mode: $("lens-mode").value, top_k: 8,
    });
    LENS = res;
    renderLens();
  });
  if (res) {
    $("lens-status").textContent += ` (server ${res.seconds.toFixed(2)} s, ${res.n_layers} x ${res.tokens.length} x ` +
      `${res.vocab_size.toLocaleString()} logits)`;
  }
}

// ------------------------------------------------------------------ attention
let ATTN = null;

function renderAttention() {
  const h = +$("attn-head").value, p = ATTN.pattern[h], toks = ATTN.tokens, grid = $("attn-grid");
  grid.replaceChildren();
  const head = el("tr", {}, el("th", { text: "query \\ key" }));
  toks.forEach((t, k) => head.append(el("th", { class: "col", text: showTok(t), title: `key ${k}` })));
  grid.append(head);
  toks.forEach((t, q) => {
    const row = el("tr", {}, el("th", { text: showTok(t), title: `query ${q}` }));
    p[q].forEach((w, k) => {
      const td = el("td", { class: "cell", dataset: { q, k } });
      td.style.background = k > q ? "#f4f5f7" : blue(Math.sqrt(w));
      row.append(td);
    });
    grid.append(row);
  });
  const strip = $("attn-tokens");
  strip.replaceChildren(...toks.map((t, q) => el("span", { text: showTok(t), dataset: { q } })));
}

function attnHover(td) {
  const q = +td.dataset.q, k = +td.dataset.k, h = +$("attn-head").value, w = ATTN.pattern[h][q][k];
  $("attn-hover").replaceChildren(
    el("div", { class: "hover-title", text: `layer ${ATTN.layer}, head ${h}` }),
    el("div", { text: `query ${q} ${showTok(ATTN.tokens[q])} \u2192 key ${k} ${showTok(ATTN.tokens[k])}` }),
    el("div", { class: "weight", text: `weight ${w.toFixed(4)}` }),
  );
}

function attnStripHover(span) {
  const q = +span.dataset.q, row = ATTN.pattern[+$("attn-head").value][q];
  for (const s of $("attn-tokens").children) {
    const k = +s.dataset.q;
    s.style.background = k === q ? "#ffe3a3" : (k < q || k === q ? blue(Math.sqrt(row[k])) : "");
  }
}

async function runAttention(ev) {
  if (ev) ev.preventDefault();
  await guarded($("attn-status"), async () => {
    ATTN = await apiJSON("/api/attention", { prompt: $("attn-prompt").value, layer: +$("attn-layer").value });
    const headSel = $("attn-head"), keep = headSel.value;
    headSel.replaceChildren(...ATTN.pattern.map((_, h) => el("option", { value: h, text: String(h) })));
    if (keep && +keep < ATTN.n_heads) headSel.value = keep;
    renderAttention();
  });
}

// ------------------------------------------------------------------ steering
let STEER_ABORT = null, STEER_TIMER = null;

function parseLayers(text) {
  text = text.trim();
  if (!text) return null;
  const out = [];
  for (const part of text.split(",")) {
    const m = part.trim().match(/^(\d+)(?:-(\d+))?$/);
    if (!m) throw new Error(`layers "${text}": use e.g. 6, 4,5,6 or 3-9`);
    const a = +m[1], b = m[2] === undefined ? a : +m[2];
    for (let l = a; l <= b; l++) out.push(l);
  }
  return out;
}

function steerVector() {
  const src = $("steer-source").value;
  if (src === "contrast") {
    const lines = (id) => $(id).value.split("\n").map((s) => s.trim()).filter(Boolean);
    return { positive: lines("steer-pos"), negative: lines("steer-neg") };
  }
  return { path: src };
}

async function runSteer(ev) {
  if (ev) ev.preventDefault();
  if (STEER_ABORT) STEER_ABORT.abort();
  const abort = new AbortController();
  STEER_ABORT = abort;
  const prompt = $("steer-prompt").value, base = $("steer-baseline"), steered = $("steer-steered");
  const status = $("steer-status");
  await guarded(status, async () => {
    const body = {
      prompt, vector: steerVector(), layers: parseLayers($("steer-layers").value),
      strength_pct: +$("steer-strength").value, max_tokens: +$("steer-max").value,
    };
    const r = await api("/api/steer", body, abort.signal);
    const t0 = performance.now();
    const fresh = { baseline: true, steered: true };
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line.trim()) continue;
        const e = JSON.parse(line);
        if (e.event === "error") throw new Error(e.error);
        if (e.event === "plan") {
          const w = e.weights.map((x) => x.toFixed(2)).join(", ");
          $("steer-plan").textContent = `(${e.strength_pct} % at layers ${e.layers.join(",")}; scale ${w})`;
        } else if (e.event === "token") {
          const pane = e.side === "steered" ? steered : base;
          if (fresh[e.side]) { pane.replaceChildren(el("span", { class: "prompt", text: prompt })); fresh[e.side] = false; }
          pane.append(el("span", { class: "tok", text: e.text }));
          if (e.side === "steered" && e.i === 0) status.dataset.firstToken = ((performance.now() - t0) / 1000).toFixed(3);
        } else if (e.event === "done") {
          status.dataset.serverSeconds = e.seconds;
        }
      }
    }
  });
  if (STEER_ABORT === abort) STEER_ABORT = null;
}

function steerSoon() {
  $("steer-strength-value").textContent = `${$("steer-strength").value} %`;
  clearTimeout(STEER_TIMER);
  STEER_TIMER = setTimeout(runSteer, 200);
}

async function loadVectors(selectPath) {
  const sel = $("steer-source");
  try {
    const res = await apiJSON("/api/vectors");
    sel.replaceChildren(el("option", { value: "contrast", text: "from two prompt sets (below)" }),
      ...res.vectors.map((v) => el("option", { value: v.path, text: `${v.path} (${v.kind})` })));
    sel.dataset.loaded = "1";
    if (selectPath) sel.value = selectPath;
    $("steer-contrast").hidden = sel.value !== "contrast";
  } catch (e) { showError(e.message); }
}

function fileBase64(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(String(r.result).split(",", 2)[1]);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}

async function uploadVector() {
  const files = [...$("steer-upload").files];
  if (!files.length) return;
  await guarded($("steer-status"), async () => {
    const main = files.find((f) => /\.(gguf|safetensors)$/.test(f.name));
    if (!main) throw new Error("choose a .gguf or .safetensors file (with its .json for a Direction)");
    const name = main.name.replace(/\.(gguf|safetensors)$/, "").replace(/[^A-Za-z0-9_.-]/g, "_").slice(0, 64);
    const body = { name };
    body[main.name.endsWith(".gguf") ? "gguf" : "safetensors"] = await fileBase64(main);
    const side = files.find((f) => f.name.endsWith(".json"));
    if (side) body.json = JSON.parse(await side.text());
    const res = await apiJSON("/api/vectors", body);
    await loadVectors(res.path);
  });
}

// ------------------------------------------------------------------ patching
let PATCH = null;

function patchBody() {
  return { clean: $("patch-clean").value, corrupt: $("patch-corrupt").value, target: $("patch-target").value,
           foil: $("patch-foil").value, hook: $("patch-hook").value };
}

function renderPatch() {
  const res = PATCH, grid = $("patch-grid");
  const norm = $("patch-show").value === "atp" && res.atp ? res.atp.normalised : res.normalised;
  grid.replaceChildren();
  const head = el("tr", {}, el("th", { text: "layer" }));
  res.positions.forEach((j) => head.append(el("th", { class: "col", text: showTok(res.tokens[j]), title: `position ${j}` })));
  grid.append(head);
  for (let i = res.layers.length - 1; i >= 0; i--) {
    const row = el("tr", {}, el("th", { text: String(res.layers[i]) }));
    res.positions.forEach((j, jj) => {
      const v = norm[i][jj];
      const bg = diverging(v);
      const td = el("td", { class: "cell", text: v === null ? "" : v.toFixed(2), dataset: { layer: res.layers[i], pos: j } });
      td.style.background = bg;
      td.style.color = textColour(bg);
      row.append(td);
    });
    grid.append(row);
  }
}

async function runPatch(ev) {
  if (ev) ev.preventDefault();
  await guarded($("patch-status"), async () => {
    PATCH = await apiJSON("/api/patch", { ...patchBody(), estimate: true });
    renderPatch();
    const r = PATCH.atp && PATCH.atp.pearson_r !== null ? `; AtP estimate vs exact: r = ${PATCH.atp.pearson_r.toFixed(3)}` : "";
    $("patch-cell").textContent = `metric ${PATCH.metric}: clean ${PATCH.clean.toFixed(3)}, corrupt ${PATCH.corrupt.toFixed(3)}${r}. Click a cell.`;
  });
}

async function patchCell(td) {
  for (const c of document.querySelectorAll("#patch-grid td.selected")) c.classList.remove("selected");
  td.classList.add("selected");
  await guarded($("patch-status"), async () => {
    const res = await apiJSON("/api/patch/cell", { ...patchBody(), layer: +td.dataset.layer, position: +td.dataset.pos });
    const panel = $("patch-cell");
    panel.replaceChildren(el("div", { class: "hover-title", text: `layer ${res.layer}, position ${res.position} (${res.hook})` }));
    if (PATCH && PATCH.atp) {
      const i = PATCH.layers.indexOf(res.layer), j = PATCH.positions.indexOf(res.position);
      const est = PATCH.atp.grid[i][j];
      if (est !== null) panel.append(el("div", { class: "atp", text: `AtP estimate of the patched metric: ${est.toFixed(3)}` }));
    }
    for (const key of ["patched", "corrupt", "clean"]) {
      panel.append(el("h4", { text: `${key}: ${res.metric} = ${res[key].metric.toFixed(3)}` }), distTable(res[key].top));
    }
  });
}

// ------------------------------------------------------------------ results
function fileURL(path) { return `/api/results/file?path=${encodeURIComponent(path)}`; }

async function loadResults() {
  try {
    const res = await apiJSON("/api/results");
    $("results-root").textContent = res.root;
    $("results-reports").replaceChildren(...res.reports.map((r) =>
      el("a", { href: fileURL(r), target: "_blank", rel: "noopener", text: ` ${r} ` })));
    const list = $("results-list");
    list.replaceChildren();
    for (const run of res.runs) {
      list.append(el("li", { class: "model", text: run.model }));
      for (const exp of run.experiments) {
        const a = el("a", { text: exp.name });
        a.addEventListener("click", () => showExperiment(exp));
        list.append(el("li", {}, a));
      }
      for (const note of run.notes || []) {
        const a = el("a", { text: note });
        a.addEventListener("click", () => showNote(`${run.model}/${note}`));
        list.append(el("li", {}, a));
      }
    }
    if (!res.runs.length) list.append(el("li", { text: res.exists ? "no runs yet" : "the directory does not exist" }));
    list.dataset.loaded = "1";
  } catch (e) { showError(e.message); }
}

async function showExperiment(exp) {
  const box = $("results-detail");
  box.replaceChildren(el("h3", { text: exp.path }));
  for (const f of exp.files.filter((f) => f.endsWith(".png") || f.endsWith(".svg"))) {
    box.append(el("img", { src: fileURL(`${exp.path}/${f}`), alt: f, title: f }));
  }
  if (exp.files.includes("result.json")) {
    const text = await (await api(fileURL(`${exp.path}/result.json`))).text();
    box.append(el("h4", { text: "result.json" }), el("pre", { text: text.length > 100000 ? text.slice(0, 100000) + "\n..." : text }));
  }
}

async function showNote(path) {
  const text = await (await api(fileURL(path))).text();
  $("results-detail").replaceChildren(el("h3", { text: path }), el("pre", { text }));
}

// ------------------------------------------------------------------ SAE features
let SAEF = null;

function renderSAE() {
  const res = SAEF, grid = $("sae-grid");
  grid.replaceChildren(el("tr", {}, el("th", { text: "position" }), el("th", { text: "token" }),
                          el("th", { text: `top features (activation) at ${res.hook}` })));
  let top = 0;
  for (const row of res.positions) for (const c of row) top = Math.max(top, c.act);
  res.positions.forEach((row, j) => {
    const tr = el("tr", {}, el("th", { text: String(j) }), el("th", { class: "tok", text: showTok(res.tokens[j]) }));
    const td = el("td");
    for (const c of row) {
      const bg = blue(top > 0 ? c.act / top : 0);
      const chip = el("span", { class: "feature", text: `${c.feature} (${c.act.toFixed(2)})`,
                                dataset: { feature: c.feature, pos: j, act: c.act } });
      chip.style.background = bg;
      chip.style.color = textColour(bg);
      td.append(chip);
    }
    if (!row.length) td.append(el("span", { class: "none", text: "no active feature" }));
    tr.append(td);
    grid.append(tr);
  });
}

function saeHover(chip) {
  const f = chip.dataset.feature, info = SAEF.features[f];
  const panel = $("sae-hover");
  panel.replaceChildren(
    el("div", { class: "hover-title", text: `feature ${f} at position ${chip.dataset.pos}` }),
    el("div", { text: `activation ${(+chip.dataset.act).toFixed(4)}` }),
  );
  if (info) panel.append(el("div", { class: "promotes", text: `promotes: ${info.promotes.map(showTok).join("  ")}` }));
}

async function runSAE(ev) {
  if (ev) ev.preventDefault();
  await guarded($("sae-status"), async () => {
    SAEF = await apiJSON("/api/sae", { prompt: $("sae-prompt").value, top_k: +$("sae-k").value });
    renderSAE();
  });
}

// ------------------------------------------------------------------ start
async function start() {
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showView(b.dataset.view));
  $("lens-form").addEventListener("submit", runLens);
  $("lens-colour").addEventListener("change", () => LENS && renderLens());
  $("lens-grid").addEventListener("mouseover", (e) => { const td = e.target.closest("td.cell"); if (td) lensHover(td); });
  $("attn-form").addEventListener("submit", runAttention);
  $("attn-layer").addEventListener("change", () => runAttention());
  $("attn-head").addEventListener("change", () => ATTN && renderAttention());
  $("attn-grid").addEventListener("mouseover", (e) => { const td = e.target.closest("td.cell"); if (td) attnHover(td); });
  $("attn-tokens").addEventListener("mouseover", (e) => { const s = e.target.closest("span"); if (s && ATTN) attnStripHover(s); });
  $("steer-form").addEventListener("submit", runSteer);
  $("steer-strength").addEventListener("input", steerSoon);
  $("steer-source").addEventListener("change", () => { $("steer-contrast").hidden = $("steer-source").value !== "contrast"; });
  $("steer-upload").addEventListener("change", uploadVector);
  $("patch-form").addEventListener("submit", runPatch);
  $("patch-show").addEventListener("change", () => PATCH && renderPatch());
  $("patch-grid").addEventListener("click", (e) => { const td = e.target.closest("td.cell"); if (td) patchCell(td); });
  $("sae-form").addEventListener("submit", runSAE);
  $("sae-grid").addEventListener("mouseover", (e) => { const s = e.target.closest("span.feature"); if (s) saeHover(s); });
  try {
    INFO = await apiJSON("/api/info");
    $("model-info").textContent = `${INFO.slug}: ${INFO.arch}, ${INFO.n_layers} layers, d_model ${INFO.d_model}, ` +
      `${INFO.n_heads} heads, vocabulary ${INFO.vocab_size.toLocaleString()}`;
    $("attn-layer").replaceChildren(...Array.from({ length: INFO.n_layers }, (_, l) => el("option", { value: l, text: String(l) })));
    $("patch-hook").replaceChildren(...INFO.hooks.map((h) => el("option", { value: h, text: h })));
    if (INFO.modes.includes("tuned")) $("lens-mode").append(el("option", { value: "tuned", text: "tuned lens" }));
    if (INFO.sae) {
      document.querySelector('#tabs button[data-view="sae"]').hidden = false;
      $("sae-help").textContent = `SAE at ${INFO.sae.hook} (${INFO.sae.d_sae.toLocaleString()} features, ${INFO.sae.activation}): ` +
        "the most active features at each position (rows), strongest first. Hover a feature for the tokens its decoder direction promotes.";
    }
    $("steer-layers").placeholder = `e.g. ${Math.floor(INFO.n_layers / 2)} or 2-${INFO.n_layers - 2}`;
  } catch (e) { showError(e.message); }
  const view = location.hash.slice(1);
  const views = ["lens", "attention", "steer", "patch", "results"].concat(INFO && INFO.sae ? ["sae"] : []);
  showView(views.includes(view) ? view : "lens");
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", start);
