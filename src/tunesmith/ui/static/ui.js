// tunesmith ui: the page's only script (no framework, nothing fetched from the internet). Every URL is relative,
// so the page works under a proxy's path prefix (--root-path). State lives on the server (jobs and runs in the
// work folder): on load the page asks for it, so a refresh or a second tab shows the same jobs.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { run: null, job: null, source: null, served: {} };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

function fmt(x, digits = 4) {
  return typeof x === "number" ? (Number.isInteger(x) ? String(x) : x.toFixed(digits)) : (x ?? "");
}

// Errors are shown next to the control that caused them (the server names the field).
function clearErrors() { document.querySelectorAll(".error").forEach((e) => { e.textContent = ""; }); }
function showError(message, field, fallback) {
  const target = (field && $("err-" + field)) || $(fallback);
  if (target) target.textContent = message;
}

async function call(method, url, body, fallback) {
  const options = { method, headers: {} };
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) { options.body = JSON.stringify(body); options.headers["content-type"] = "application/json"; }
  const response = await fetch(url, options);
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const message = (data && (data.error?.message || data.error)) || `${response.status} ${response.statusText}`;
    showError(message, data && data.field, fallback);
    throw new Error(message);
  }
  return data;
}

// -- 1. data ---------------------------------------------------------------------------------------------
async function loadModels() {
  const models = await call("GET", "api/models");
  const select = $("model"), chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "pick one"));
  for (const m of models) select.append(el("option", { value: m.path }, `${m.name} (${m.where})`));
  select.value = chosen;
  const uploads = await call("GET", "api/uploads");
  $("uploads").replaceChildren(...uploads.map((u) => el("option", { value: u.name })));
}

function chosenModel() { return $("model-other").value.trim() || $("model").value; }

async function upload() {
  clearErrors();
  const file = $("file").files[0];
  if (!file) { showError("choose a file first", "file"); return; }
  const form = new FormData();
  form.append("file", file);
  const saved = await call("POST", "api/uploads", form, "err-file");
  $("path").value = saved.name;
  $("uploads").append(el("option", { value: saved.name }));
  await check();
}

async function check() {
  clearErrors();
  const body = { path: $("path").value.trim(), task: $("task").value, model: chosenModel(), preview: 3 };
  $("check-summary").textContent = "checking every row...";
  let result;
  try { result = await call("POST", "api/data/check", body, "err-path"); }
  catch (e) { $("check-summary").textContent = ""; return; }
  state.source = body.path;
  localStorage.setItem("tunesmith.data", JSON.stringify(body));
  if (!$("task").value) $("task").value = result.task;
  $("check-summary").textContent =
    `${result.summary} · task ${result.task}${result.guessed_task === result.task ? " (guessed from the fields)" : ""}` +
    (result.report.rows_read !== undefined ? ` · ${result.report.rows_read} rows read` : "");
  $("problems").replaceChildren(...result.problems.map((p) => el("li", {}, p)));
  const examples = result.preview.map((item) => el("div", { class: "example" },
    el("div", { class: "where" }, item.where + (item.tokens ? ` · ${item.tokens} tokens, ${item.trained_tokens} learned (highlighted)` : "")),
    item.segments ? item.segments.map((s) => (s.trained ? el("mark", { title: "the model learns to write this" }, s.text) : s.text))
      : Object.entries(item.fields).map(([k, v]) => `${k}: ${v}\n`)));
  $("preview").replaceChildren(...(examples.length ? [el("h3", {}, "As the model will see them"), ...examples] : []));
}

// -- 2. plan and settings ------------------------------------------------------------------------------------
async function makePlan() {
  clearErrors();
  const body = { path: $("path").value.trim(), model: chosenModel(), task: $("task").value, time: $("time").value.trim(), memory: $("memory").value.trim() };
  if (!body.path) { showError("check a data file first (step 1)", "path"); return; }
  const job = await call("POST", "api/plan", body, "err-time");
  $("plan-status").textContent = `planning (${job.title})...`;
  watch(job.id);
}

function showPlan(job) {
  if (!job.config_yaml) return;
  $("yaml").value = job.config_yaml;
  updateDownload();
  const r = job.result || {};
  $("plan-status").textContent = `plan: ${r.method}, predicted ${fmt(r.predicted_seconds, 0)} s for training (${fmt(r.planning_seconds, 0)} s spent planning)`;
  $("plan-reasons").replaceChildren(...(r.reasons || []).map((x) => el("li", {}, x)));
}

function updateDownload() {
  localStorage.setItem("tunesmith.yaml", $("yaml").value);
  const blob = new Blob([$("yaml").value], { type: "text/yaml" });
  $("download-yaml").href = URL.createObjectURL(blob);
}

async function checkConfig(sets) {
  clearErrors();
  const result = await call("POST", "api/config/check", { yaml: $("yaml").value, set: sets }, "err-yaml");
  $("yaml").value = result.yaml;
  updateDownload();
  $("config-status").textContent = "the settings are valid";
  return result;
}

// -- 3. train and jobs -------------------------------------------------------------------------------------
async function startTrain() {
  clearErrors();
  if (!$("yaml").value.trim()) { showError("make a plan or write the settings first (step 2)", "train"); return; }
  const job = await call("POST", "api/train", { yaml: $("yaml").value, nproc: Number($("nproc").value) || 1 }, "err-train");
  await refreshJobs();
  watch(job.id);
}

async function refreshJobs() {
  const jobs = await call("GET", "api/jobs");
  $("jobs").tBodies[0].replaceChildren(...jobs.map((j) => el("tr", {},
    el("td", {}, el("a", { href: "#train", onclick: () => watch(j.id) }, j.title)),
    el("td", { class: "state-" + j.state }, j.state + (j.reason ? `: ${j.reason}` : "")),
    el("td", {}, j.run ? el("a", { href: "#results", onclick: () => selectRun(j.run) }, j.run) : ""),
    el("td", {}, ["queued", "running"].includes(j.state) ? el("button", { type: "button", onclick: () => cancel(j.id), "aria-label": `cancel ${j.title}` }, "Cancel") : ""))));
  return jobs;
}

async function cancel(id) { await call("POST", `api/jobs/${id}/cancel`); await refreshJobs(); }

let source = null;
function watch(id) {
  if (source) source.close();
  state.job = id;
  localStorage.setItem("tunesmith.job", id);
  const points = { train: [], validation: [] };
  source = new EventSource(`api/jobs/${id}/events`);
  source.addEventListener("metrics", (event) => {
    for (const r of JSON.parse(event.data)) {
      if (r.loss !== undefined) points.train.push([r.step, r.loss]);
      if (r.eval_loss !== undefined) points.validation.push([r.step, r.eval_loss]);
    }
    drawCurve(points);
  });
  source.addEventListener("job", (event) => showJob(JSON.parse(event.data)));
  source.onerror = () => { source.close(); setTimeout(() => state.job === id && refreshJobs().then(() => watch(id)), 3000); };
}

function showJob(job) {
  $("job-log").textContent = job.log || "";
  const p = job.progress;
  let line = `${job.title}: ${job.state}`;
  if (p && p.step) {
    line += ` · step ${p.step}${p.max_steps ? " of " + p.max_steps : ""} · loss ${fmt(p.loss)}`;
    if (p.tokens_per_second) line += ` · ${fmt(p.tokens_per_second, 0)} tokens/s`;
    if (p.seconds_left !== null && p.seconds_left !== undefined && job.state === "running") line += ` · about ${Math.round(p.seconds_left)} s left`;
    if (p.validation.length) line += ` · validation loss ${fmt(p.validation[p.validation.length - 1].loss)}`;
  }
  if (job.reason) line += ` · ${job.reason}`;
  $("progress-line").textContent = line;
  if (job.kind === "plan" && job.state === "finished") showPlan(job);
  if (job.kind === "plan" && job.state === "failed") { $("plan-status").textContent = ""; showError(job.reason, "time"); }
  if (job.kind === "export" && job.state !== "running") showExport(job);
  if (!["queued", "running"].includes(job.state)) {
    if (source) source.close();
    refreshJobs(); refreshRuns();
    if (job.kind === "train" && job.run) selectRun(job.run);
  }
}

function drawCurve(points) {
  const svg = $("curve"), W = 640, H = 220, pad = 34;
  const all = [...points.train, ...points.validation];
  if (!all.length) return;
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-6);
  const X = (x) => pad + ((x - x0) / (x1 - x0)) * (W - 2 * pad), Y = (y) => H - pad - ((y - y0) / (y1 - y0)) * (H - 2 * pad);
  const ns = "http://www.w3.org/2000/svg", parts = [];
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.train.map((p) => `${X(p[0])},${Y(p[1])}`).join(" "));
  line.setAttribute("fill", "none"); line.setAttribute("stroke", "#0969da"); line.setAttribute("stroke-width", "2");
  parts.push(line);
  for (const p of points.validation) {
    const dot = document.createElementNS(ns, "circle");
    dot.setAttribute("cx", X(p[0])); dot.setAttribute("cy", Y(p[1])); dot.setAttribute("r", 4); dot.setAttribute("fill", "#cf222e");
    parts.push(dot);
  }
  for (const [text, x, y] of [[fmt(y1, 3), 2, pad], [fmt(y0, 3), 2, H - pad], [`step ${x0}`, pad, H - 8], [`step ${x1}`, W - pad - 50, H - 8]]) {
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", x); label.setAttribute("y", y); label.setAttribute("font-size", "11"); label.textContent = text;
    parts.push(label);
  }
  svg.replaceChildren(...parts);
}

// -- 4. results ----------------------------------------------------------------------------------------------
async function refreshRuns() {
  const runs = await call("GET", "api/runs");
  $("runs").tBodies[0].replaceChildren(...runs.map((r) => el("tr", {},
    el("td", {}, el("input", { type: "checkbox", value: r.name, "aria-label": `compare ${r.name}` })),
    el("td", {}, el("a", { href: "#results", onclick: () => selectRun(r.name) }, r.name)),
    el("td", {}, r.status || ""), el("td", {}, r.task || ""), el("td", {}, r.method || ""))));
}

function scoreTable(run) {
  const rows = [];
  if (run.validation_loss_before !== null) rows.push(["validation loss", run.validation_loss_before, run.validation_loss_after]);
  const before = run.test_before || {}, after = run.test || {};
  for (const key of Object.keys(after)) if (typeof after[key] === "number") rows.push([`test ${key}`, before[key], after[key]]);
  return el("table", { id: "scores" }, el("thead", {}, el("tr", {}, el("th", {}, "measure"), el("th", {}, "base model"), el("th", {}, "tuned model"))),
    el("tbody", {}, rows.map(([k, b, a]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, fmt(b)), el("td", { class: "num" }, fmt(a))))));
}

async function selectRun(name) {
  state.run = name;
  history.replaceState(null, "", "#run=" + encodeURIComponent(name));
  const run = await call("GET", `api/runs/${encodeURIComponent(name)}`);
  const s = run.summary, f = s.forgetting;
  const samples = run.samples.length ? el("table", { id: "samples" },
    el("thead", {}, el("tr", {}, ["input", "expected", "base model", "tuned model"].map((h) => el("th", {}, h)))),
    el("tbody", {}, run.samples.map((g) => el("tr", {}, el("td", {}, g.prompt ?? g.where ?? ""), el("td", {}, g.reference ?? ""), el("td", {}, g.base ?? ""), el("td", {}, g.tuned ?? ""))))) : "";
  $("run-detail").replaceChildren(
    el("h3", {}, `${run.name}: ${run.status} (${run.task}, ${run.method} on ${run.base_model})`),
    scoreTable(run),
    el("p", { id: "forgetting" }, f ? `Forgetting check: ${f.metric} drift ${fmt(f.drift_percent, 2)}${f.unit === "points" ? " points" : "%"}${f.warning ? ": the model may have forgotten general knowledge" : " (within the threshold)"}` : "Forgetting check: not measured (set eval.reference to a file of general text)."),
    samples,
    el("button", { type: "button", onclick: () => call("POST", `api/runs/${encodeURIComponent(name)}/evaluate`).then((j) => watch(j.id)) }, "Score base vs tuned again (tunesmith eval --baseline)"),
    el("button", { type: "button", onclick: () => removeRun(name) }, "Delete this run..."),
    run.report ? el("iframe", { src: `runs/${encodeURIComponent(name)}/report.html`, title: `report of ${name}` }) : el("p", {}, "No report yet."));
  showShip(run);
  showTry(run);
}

async function removeRun(name) {
  const typed = prompt(`Delete run ${name}? It moves to the work folder's trash. Type its name to confirm:`);
  if (typed !== name) return;
  await call("DELETE", `api/runs/${encodeURIComponent(name)}?confirm=${encodeURIComponent(typed)}`);
  $("run-detail").replaceChildren(); state.run = null;
  refreshRuns();
}

async function compareRuns() {
  clearErrors();
  const names = [...document.querySelectorAll("#runs input:checked")].map((c) => c.value);
  const result = await call("POST", "api/compare", { runs: names }, "err-compare");
  window.open(result.url, "_blank");
}

// -- 5. try it: the run's `tunesmith serve` routes --------------------------------------------------------------
async function showTry(run) {
  const box = $("try-box");
  if (run.status !== "finished") { box.replaceChildren(el("p", {}, "This run has not finished.")); return; }
  box.replaceChildren(el("p", {}, "loading the model..."));
  const base = `try/${encodeURIComponent(run.name)}/`;
  const paths = Object.keys((await call("GET", base + "openapi.json")).paths);
  const input = el("textarea", { id: "try-input", rows: 3, cols: 80 });
  const answer = el("div", { id: "try-answer", class: "chat", "aria-live": "polite" });
  const ask = async (path, body) => call("POST", base + path, body, "try-error");
  let send;
  if (paths.includes("/v1/chat/completions")) {
    const history = [];
    send = async () => {
      history.push({ role: "user", content: input.value });
      answer.append(el("p", { class: "you" }, "you: " + input.value));
      const r = await ask("v1/chat/completions", { model: run.name, messages: history, max_tokens: 64 });
      const text = r.choices[0].message.content;
      history.push({ role: "assistant", content: text });
      answer.append(el("p", {}, "model: " + text));
      input.value = "";
    };
  } else if (paths.includes("/v1/classify")) {
    send = async () => {
      const r = await ask("v1/classify", { model: run.name, input: input.value });
      const item = r.data ? r.data[0] : r;
      answer.replaceChildren(el("pre", {}, JSON.stringify(item, null, 2)));
    };
  } else if (paths.includes("/v1/entities")) {
    send = async () => {
      const r = await ask("v1/entities", { model: run.name, input: input.value });
      answer.replaceChildren(el("pre", {}, JSON.stringify(r.data ? r.data[0] : r, null, 2)));
    };
  } else if (paths.includes("/v1/audio/transcriptions")) {
    const clip = el("input", { type: "file", id: "try-clip", accept: "audio/*" });
    box.replaceChildren(el("label", { for: "try-clip" }, "A clip to transcribe"), clip,
      el("button", { type: "button", onclick: async () => {
        const form = new FormData(); form.append("file", clip.files[0]); form.append("model", run.name);
        const r = await call("POST", base + "v1/audio/transcriptions", form, "try-error");
        answer.replaceChildren(el("p", {}, r.text));
      } }, "Transcribe"), el("p", { class: "error", id: "err-try-error", role: "alert" }), answer);
    return;
  } else { box.replaceChildren(el("p", {}, "This run's task has no route to try.")); return; }
  box.replaceChildren(el("label", { for: "try-input" }, "Your message"), input,
    el("button", { type: "button", id: "try-send", onclick: () => send().catch(() => {}) }, "Send"),
    el("p", { class: "error", id: "err-try-error", role: "alert" }), answer);
}

// -- 6. ship it --------------------------------------------------------------------------------------------------
function showShip(run) {
  const links = run.downloads.map((d) => el("li", {}, el("a", { href: `runs/${encodeURIComponent(run.name)}/${d}` }, d)));
  const exports = run.exports.map((e) => el("li", {}, exportLine(e)));
  $("ship-detail").replaceChildren(
    el("p", {}, "Serve it with: ", el("code", { id: "serve-command" }, run.serve_command)),
    el("h3", {}, "Exports"), el("ul", { id: "exports" }, exports.length ? exports : [el("li", {}, "none yet")]),
    el("details", {}, el("summary", {}, "Files to download"), el("ul", {}, links)));
}

function exportLine(e) {
  const checks = e.checks || {};
  const verdicts = Object.entries(checks).filter(([, v]) => v && (v.verdict || v.skipped)).map(([k, v]) => `${k}: ${v.verdict || v.skipped}`);
  const parity = e.parity ? `max logit difference ${Number(e.parity.max_abs_logit_difference).toExponential(2)}` : "";
  return `${e.format || ""} → ${e.output || e.folder} ${parity} ${verdicts.join("; ")}`;
}

async function exportRun() {
  clearErrors();
  if (!state.run) { showError("pick a run under Results first", "format"); return; }
  const job = await call("POST", `api/runs/${encodeURIComponent(state.run)}/export`, { format: $("format").value, quantize: $("quantize").value.trim() }, "err-format");
  watch(job.id);
}

function showExport(job) {
  if (job.state === "failed") showError(job.reason, "format");
  if (job.state === "finished" && state.run) selectRun(state.run);
}

// -- start: reattach to what the server holds -------------------------------------------------------------------------
async function start() {
  $("upload").addEventListener("click", () => upload().catch(() => {}));
  $("check").addEventListener("click", () => check().catch(() => {}));
  $("make-plan").addEventListener("click", () => makePlan().catch(() => {}));
  $("apply-set").addEventListener("click", () => checkConfig($("set").value.trim().split(/\s+/).filter(Boolean)).catch(() => {}));
  $("check-config").addEventListener("click", () => checkConfig([]).catch(() => {}));
  $("yaml").addEventListener("input", updateDownload);
  $("start-train").addEventListener("click", () => startTrain().catch(() => {}));
  $("compare").addEventListener("click", () => compareRuns().catch(() => {}));
  $("export").addEventListener("click", () => exportRun().catch(() => {}));
  await loadModels();
  const saved = JSON.parse(localStorage.getItem("tunesmith.data") || "null");
  if (saved) { $("path").value = saved.path; $("task").value = saved.task || ""; if (saved.model) { $("model").value = saved.model; if (!$("model").value) $("model-other").value = saved.model; } }
  const jobs = await refreshJobs();
  await refreshRuns();
  const plan = jobs.find((j) => j.kind === "plan" && j.state === "finished");
  if (plan) showPlan(await call("GET", `api/jobs/${plan.id}`));
  const edited = localStorage.getItem("tunesmith.yaml");  // the settings as the user last left them
  if (edited) { $("yaml").value = edited; updateDownload(); }
  const active = jobs.find((j) => ["running", "queued"].includes(j.state));
  const remembered = localStorage.getItem("tunesmith.job");
  if (active) watch(active.id); else if (remembered && jobs.some((j) => j.id === remembered)) watch(remembered);
  const hash = decodeURIComponent(location.hash);
  if (hash.startsWith("#run=")) selectRun(hash.slice(5)).catch(() => {});
}

document.addEventListener("DOMContentLoaded", () => start().catch((e) => console.error(e)));
