// The page: the models table and the last reload (refreshed every few seconds), and the
// forecast panel, which POSTs the series to each chosen model's TDgpt route and plots
// the answers side by side on one value scale.

import { ApiError, call, postJson, setToken, token } from "./api.js";
import { EXAMPLES } from "./examples.js";
import { plotForecast, shownHistory, valueRange } from "./plot.js";

const REFRESH_MS = 5000;
const $ = (id) => document.getElementById(id);
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : word.endsWith("h") ? "es" : "s"}`;
let models = []; // the last /v1/models answer

function node(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") element.className = value;
    else if (key.startsWith("data-")) element.setAttribute(key, String(value));
    else element[key] = value;
  }
  element.append(...children.filter((c) => c !== undefined && c !== null));
  return element;
}

// ---- errors and the token ----------------------------------------------------------

function showPageError(err) {
  const box = $("page-error");
  if (!err) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.hidden = false;
  box.textContent = err.needsToken
    ? `${err.path}: HTTP ${err.status}: ${err.message}. Paste this tsfmd's token above.`
    : `${err.path}: ${err.status ? `HTTP ${err.status}: ` : ""}${err.message}`;
  if (err.needsToken) $("token").focus();
}

function showTokenState() {
  $("token-state").textContent = token() ? "a token is sent with every request" : "";
}

function wireToken() {
  $("token").value = token();
  showTokenState();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("token").value);
    showTokenState();
    refresh();
  });
  $("token-clear").addEventListener("click", () => {
    $("token").value = "";
    setToken("");
    showTokenState();
    refresh();
  });
}

// ---- models and reload -------------------------------------------------------------

function licence(info) {
  const value = info.license;
  if (value === undefined || value === null || value === "") return "unknown";
  if (typeof value === "string") return value;
  return value.spdx || value.id || value.name || JSON.stringify(value);
}

function stateCell(info) {
  const reason = info.reason || info.reload_error;
  return node("td", { class: `state state-${info.status}`, title: reason || "" },
    info.status, reason ? node("div", { class: "reason" }, reason) : undefined);
}

// Two short lines: what matters most first, the detail below it.
function twoLines(first, second) {
  return [node("div", {}, first), second ? node("div", { class: "muted" }, second) : undefined];
}

function queueCell(batching) {
  if (!batching) return node("td", { class: "queue" }, "—");
  const batch = batching.enabled ? ` · batch ≤ ${batching.max_batch}` : "";
  return node("td", { class: "queue" }, ...twoLines(
    `${batching.queue_depth} waiting of ${batching.queue_size}`,
    `${batching.running} running${batch}`));
}

function servedCell(batching) {
  if (!batching) return node("td", { class: "served" }, "—");
  return node("td", { class: "served" }, ...twoLines(
    `${plural(batching.forecasts, "forecast")} in ${plural(batching.batches, "batch")}`,
    `${batching.rejected_queue_full} refused (queue full) · ${batching.timed_out} timed out`));
}

function renderModels() {
  const body = $("models").tBodies[0];
  body.replaceChildren(...models.map((info) => node("tr", { "data-key": info.key },
    node("td", { class: "key", title: info.description || "" }, info.key),
    node("td", { class: "family" }, info.family),
    node("td", { class: "route" }, (info.routes || []).join(" ")),
    stateCell(info),
    node("td", { class: "num" }, String(info.context_limit ?? "—")),
    node("td", { class: "num" }, String(info.horizon_limit ?? "—")),
    node("td", {}, info.intervals === true ? "yes" : info.intervals === false ? "no" : "—"),
    node("td", { class: "licence" }, licence(info)),
    queueCell(info.batching),
    servedCell(info.batching),
  )));
  if (!models.length) {
    body.append(node("tr", {}, node("td", { colSpan: 10, class: "muted" }, "no models")));
  }
  fillModelChoices();
}

function fillModelChoices() {
  for (const [id, optional] of [["model-a", false], ["model-b", true]]) {
    const select = $(id);
    const chosen = select.value;
    const options = optional ? [node("option", { value: "" }, "— none —")] : [];
    for (const info of models) {
      if (!(info.routes || []).length) continue;
      const ready = info.status === "ready";
      options.push(node("option", { value: info.key, disabled: !ready },
        ready ? info.key : `${info.key} (${info.status})`));
    }
    select.replaceChildren(...options);
    const stillThere = models.some((m) => m.key === chosen && m.status === "ready");
    if (stillThere) select.value = chosen;
    else if (!optional) {
      const firstReady = models.find((m) => m.status === "ready" && (m.routes || []).length);
      if (firstReady) select.value = firstReady.key;
    }
  }
}

function renderReload(status) {
  const box = $("reload");
  const reloads = status.reloads;
  const daemon = [status.summary, status.pid ? `pid ${status.pid}` : "",
    status.registry || ""].filter(Boolean).join(" · ");
  $("daemon").textContent = daemon;
  $("daemon").title = daemon;
  if (!reloads) {
    box.dataset.state = "unknown";
    box.className = "muted";
    box.textContent = "this tsfmd does not report reloads";
    return;
  }
  const counts = `${reloads.started} started, ${reloads.succeeded} succeeded, ` +
    `${reloads.failed} failed`;
  if (!reloads.started) {
    box.dataset.state = "none";
    box.className = "muted";
    box.textContent = `no reload since tsfmd started (${counts})`;
    return;
  }
  const ok = reloads.last_successful;
  box.dataset.state = ok ? "succeeded" : "failed";
  box.className = ok ? "ok" : "error";
  const changes = Object.entries(reloads.last_changes || {})
    .filter(([, keys]) => keys.length)
    .map(([kind, keys]) => `${kind}: ${keys.join(", ")}`);
  box.replaceChildren(
    node("div", { class: "outcome" }, ok ? "succeeded" : "failed", node("span",
      { class: "muted" }, ` (${counts})`)),
    reloads.last_error ? node("div", { class: "reload-error" }, reloads.last_error) : undefined,
    node("div", { class: "changes" }, changes.length ? changes.join("; ") : "no model changed"),
    ...(reloads.last_warnings || []).map((w) => node("div", { class: "warning" }, w)),
  );
}

async function refresh() {
  try {
    const [listed, status] = await Promise.all([call("/v1/models"), call("/v1/status")]);
    models = listed.models || [];
    renderModels();
    renderReload(status);
    $("models-refreshed").textContent = `as of ${new Date().toLocaleTimeString()}`;
    showPageError(null);
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    showPageError(err);
  }
}

// ---- the series --------------------------------------------------------------------

// Numbers separated by commas, semicolons or white space; a pasted JSON list works too.
export function parseSeries(text) {
  const tokens = text.replace(/[[\]]/g, " ").split(/[\s,;]+/).filter(Boolean);
  return tokens.map((tokenText, i) => {
    if (/^(null|nan|none)$/i.test(tokenText)) return null;
    const value = Number(tokenText);
    if (!Number.isFinite(value)) {
      throw new Error(`point ${i + 1} of the series is not a number: "${tokenText}"`);
    }
    return value;
  });
}

function showSeriesCount() {
  try {
    const n = parseSeries($("series").value).length;
    $("series-count").textContent = plural(n, "point");
  } catch (err) {
    $("series-count").textContent = err.message;
  }
}

function wireExamples() {
  const select = $("example");
  for (const [name, example] of Object.entries(EXAMPLES)) {
    select.append(node("option", { value: name }, example.label));
  }
  select.addEventListener("change", () => {
    const example = EXAMPLES[select.value];
    if (example) $("series").value = example.make().join(", ");
    showSeriesCount();
  });
  $("series").addEventListener("input", () => {
    select.value = "";
    showSeriesCount();
  });
  select.value = "sine";
  $("series").value = EXAMPLES.sine.make().join(", ");
  showSeriesCount();
}

// ---- forecasts ---------------------------------------------------------------------

async function forecastWith(key, history, horizon, conf) {
  const info = models.find((m) => m.key === key);
  const route = info && info.routes && info.routes[0];
  if (!route) return { key, route: "?", error: new ApiError(0, `model ${key} has no route`) };
  try {
    const reply = await postJson(route, { input: history, next_len: horizon,
      conf_interval: conf });
    return { key, route, info, history, reply };
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    return { key, route, info, error: err };
  }
}

function numbersTable(history, reply) {
  const rows = reply.output.map((v, k) => node("tr", { "data-step": k + 1 },
    node("td", { class: "num" }, `+${k + 1}`),
    node("td", { class: "num" }, String(v)),
    node("td", { class: "num" }, reply.lower ? String(reply.lower[k]) : "—"),
    node("td", { class: "num" }, reply.upper ? String(reply.upper[k]) : "—"),
  ));
  const head = node("tr", {}, ...["step", "forecast", "lower", "upper"]
    .map((name) => node("th", {}, name)));
  return node("details", { class: "numbers" },
    node("summary", {}, `numbers (${reply.output.length} steps after ${history.length} points)`),
    node("table", {}, node("thead", {}, head), node("tbody", {}, ...rows)));
}

// A panel for one model's answer; a plot goes into its .plot-slot once it is on the page
// (drawPlot), where its width is known.
function resultPanel(result) {
  const title = node("h3", {}, result.key, node("span", { class: "muted" },
    ` ${result.route}${result.info ? ` · ${result.info.family}` : ""}`));
  const panel = node("article", { class: "result", "data-model": result.key,
    "data-route": result.route });
  if (result.error) {
    panel.classList.add("refused");
    panel.setAttribute("data-status", result.error.status);
    panel.append(title, node("p", { class: "error", role: "alert" },
      `refused${result.error.status ? ` (HTTP ${result.error.status})` : ""}: `,
      node("span", { class: "error-text" }, result.error.message)));
    if (result.error.needsToken) panel.append(node("p", {}, "Paste this tsfmd's token above."));
    return panel;
  }
  const { reply } = result;
  panel.setAttribute("data-status", 200);
  panel.append(title, node("div", { class: "plot-slot" }));
  if (!reply.lower) panel.append(node("p", { class: "muted" }, "this model gives no band"));
  for (const note of reply.notes || []) panel.append(node("p", { class: "note" }, note));
  panel.append(numbersTable(result.history, reply));
  return panel;
}

function drawPlot(panel, result, conf, range) {
  const slot = panel.querySelector(".plot-slot");
  const { reply } = result;
  slot.append(plotForecast({ history: result.history, output: reply.output, lower: reply.lower,
    upper: reply.upper, range, conf, label: `forecast of ${result.key}`,
    width: Math.max(320, slot.clientWidth) }));
}

async function runForecast(event) {
  event.preventDefault();
  const results = $("results");
  let history;
  try {
    history = parseSeries($("series").value);
    if (!history.length) throw new Error("the series is empty: paste numbers or pick an example");
  } catch (err) {
    results.dataset.state = "invalid";
    results.replaceChildren(node("p", { class: "error", role: "alert" }, err.message));
    return;
  }
  const horizon = Number($("horizon").value);
  const conf = Number($("conf").value);
  const keys = [...new Set([$("model-a").value, $("model-b").value].filter(Boolean))];
  if (!keys.length) {
    results.dataset.state = "invalid";
    results.replaceChildren(node("p", { class: "error" }, "no model is ready to forecast"));
    return;
  }
  results.dataset.state = "running";
  $("run").disabled = true;
  results.replaceChildren(node("p", { class: "muted" }, `asking ${keys.join(" and ")}…`));
  try {
    const answers = await Promise.all(keys.map((k) => forecastWith(k, history, horizon, conf)));
    const drawn = [shownHistory(history, horizon).values];
    for (const a of answers) if (a.reply) drawn.push(a.reply.output, a.reply.lower, a.reply.upper);
    const range = valueRange(drawn);
    const shown = answers.map(resultPanel);
    results.classList.toggle("side-by-side", answers.length > 1);
    results.replaceChildren(...shown);
    answers.forEach((a, i) => { if (a.reply) drawPlot(shown[i], a, conf, range); });
    results.dataset.state = "done";
  } finally {
    $("run").disabled = false;
  }
  refresh(); // the queue and served counts moved
}

// ---- start -------------------------------------------------------------------------

wireToken();
wireExamples();
$("forecast-form").addEventListener("submit", runForecast);
refresh();
setInterval(refresh, REFRESH_MS);
