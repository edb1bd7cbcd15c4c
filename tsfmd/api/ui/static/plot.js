// One forecast as an inline SVG: the history as a line, the forecast as a line with one
// point per step, the band as a shaded polygon. Every forecast point carries its numbers
// as data attributes (data-output/-lower/-upper, written with String(), which round-trips
// a float64 exactly), and the SVG carries its value scale (data-ymin/-ymax/-top/-bottom),
// so what is drawn can be checked against what tsfmd answered.

const NS = "http://www.w3.org/2000/svg";
// the margins around the plot area; the left one grows with the longest value label
const BOX = { height: 300, right: 14, top: 30, bottom: 34 };
const LABEL_CHAR_PX = 7; // about one digit of the 11px tick font
// the history shown before the forecast: enough to see its shape, not so much that the
// forecast shrinks to a sliver
const MIN_SHOWN_HISTORY = 200;
const HISTORY_PER_STEP = 4;

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

const finite = (v) => typeof v === "number" && Number.isFinite(v);

export function shownHistory(history, horizon) {
  const keep = Math.max(MIN_SHOWN_HISTORY, HISTORY_PER_STEP * horizon);
  const offset = Math.max(0, history.length - keep);
  return { offset, values: history.slice(offset) };
}

// The value range of everything a set of panels draws, so side-by-side plots share a scale.
export function valueRange(arrays) {
  let min = Infinity;
  let max = -Infinity;
  for (const values of arrays) {
    for (const v of values || []) {
      if (!finite(v)) continue;
      if (v < min) min = v;
      if (v > max) max = v;
    }
  }
  if (min === Infinity) return { min: 0, max: 1 };
  const span = max - min || Math.abs(max) * 0.05 || 1;
  return { min: min - 0.06 * span, max: max + 0.06 * span };
}

function niceStep(span, count) {
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const scaled = raw / power;
  const nice = scaled < 1.5 ? 1 : scaled < 3 ? 2 : scaled < 7 ? 5 : 10;
  return nice * power;
}

function ticks(min, max, count) {
  const step = niceStep(max - min, count);
  const out = [];
  for (let k = Math.ceil(min / step); k * step <= max + step * 1e-9; k += 1) out.push(k * step);
  return { step, values: out };
}

// Labels that tell neighbouring ticks apart: 1,700,050,000 for a counter, 0.25 for a ratio,
// an exponent only where digits would not fit.
function tickLabel(value, step) {
  const size = Math.abs(value);
  const stepPower = Math.floor(Math.log10(step));
  if (size < step * 1e-9) return "0";
  if (size >= 1e15 || (size < 1e-4 && stepPower < -6)) {
    const digits = Math.floor(Math.log10(size)) - stepPower;
    return value.toExponential(Math.min(Math.max(digits, 1), 10));
  }
  if (size >= 1e5 && stepPower >= 0) return value.toLocaleString("en-US");
  return value.toFixed(Math.min(Math.max(0, -stepPower), 12));
}

// An SVG path through the points, broken where a value is missing.
function pathThrough(points) {
  let d = "";
  let drawing = false;
  for (const [x, y] of points) {
    if (y === null) {
      drawing = false;
      continue;
    }
    d += `${drawing ? "L" : "M"}${x.toFixed(2)},${y.toFixed(2)}`;
    drawing = true;
  }
  return d;
}

/**
 * history: numbers (null for missing), oldest first; output/lower/upper: the reply's lists
 * (lower/upper may be undefined); range: {min, max}; conf: the band's level (0..1);
 * width: the pixels the plot will take, so its text keeps one size.
 */
export function plotForecast({ history, output, lower, upper, range, conf, label, width }) {
  const horizon = output.length;
  const shown = shownHistory(history, horizon);
  const n = shown.values.length;
  const { height, right, top, bottom } = BOX;
  const yTicks = ticks(range.min, range.max, 6);
  const yLabels = yTicks.values.map((t) => tickLabel(t, yTicks.step));
  const left = 16 + LABEL_CHAR_PX * Math.max(...yLabels.map((t) => t.length), 2);
  const plotBottom = height - bottom;
  const last = Math.max(1, n + horizon - 1);
  const x = (i) => left + (i / last) * (width - left - right);
  const y = (v) => plotBottom - ((v - range.min) / (range.max - range.min)) * (plotBottom - top);

  const svg = el("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "plot",
    role: "img",
    "aria-label": label,
    "data-ymin": range.min,
    "data-ymax": range.max,
    "data-top": top,
    "data-bottom": plotBottom,
  });

  // axes and grid
  yTicks.values.forEach((t, i) => {
    svg.append(el("line", { x1: left, x2: width - right, y1: y(t), y2: y(t), class: "grid" }));
    svg.append(el("text", { x: left - 6, y: y(t) + 4, class: "tick", "text-anchor": "end" },
      yLabels[i]));
  });
  const xTicks = ticks(shown.offset, shown.offset + last, 6);
  for (const t of xTicks.values) {
    const at = x(t - shown.offset);
    svg.append(el("line", { x1: at, x2: at, y1: plotBottom, y2: plotBottom + 4, class: "axis" }));
    svg.append(el("text", { x: at, y: plotBottom + 17, class: "tick", "text-anchor": "middle" },
      String(Math.round(t))));
  }
  svg.append(el("line", { x1: left, x2: width - right, y1: plotBottom, y2: plotBottom,
    class: "axis" }));
  svg.append(el("line", { x1: left, x2: left, y1: top, y2: plotBottom, class: "axis" }));

  // where the forecast starts
  const now = x(n - 0.5);
  svg.append(el("line", { x1: now, x2: now, y1: top, y2: plotBottom, class: "now" }));

  const hasBand = Array.isArray(lower) && Array.isArray(upper);
  if (hasBand) {
    const above = upper.map((v, k) => `${x(n + k).toFixed(2)},${y(v).toFixed(2)}`);
    const below = lower.map((v, k) => `${x(n + k).toFixed(2)},${y(v).toFixed(2)}`).reverse();
    svg.append(el("polygon", { points: above.concat(below).join(" "), class: "band" }));
  }

  const historyPoints = shown.values.map((v, i) => [x(i), finite(v) ? y(v) : null]);
  svg.append(el("path", {
    d: pathThrough(historyPoints),
    class: "history",
    "data-offset": shown.offset,
    "data-values": JSON.stringify(shown.values),
  }));

  // the forecast line starts at the last known point, so it reads as a continuation
  const lastKnown = finite(shown.values[n - 1]) ? [[x(n - 1), y(shown.values[n - 1])]] : [];
  const forecastPoints = lastKnown.concat(output.map((v, k) => [x(n + k), y(v)]));
  svg.append(el("path", { d: pathThrough(forecastPoints), class: "forecast" }));

  const points = el("g", { class: "forecast-points" });
  output.forEach((v, k) => {
    const attrs = { cx: x(n + k), cy: y(v), r: 2.6, class: "point", "data-step": k + 1,
      "data-output": String(v) };
    let tip = `step +${k + 1}: ${v}`;
    if (hasBand) {
      attrs["data-lower"] = String(lower[k]);
      attrs["data-upper"] = String(upper[k]);
      tip += ` (${lower[k]} … ${upper[k]})`;
    }
    const circle = el("circle", attrs);
    circle.append(el("title", {}, tip));
    points.append(circle);
  });
  svg.append(points);

  legend(svg, left, hasBand ? `${Math.round(conf * 1000) / 10} % band` : null);
  return svg;
}

function legend(svg, left, bandLabel) {
  const items = [["history", "history"], ["forecast", "forecast"]];
  if (bandLabel) items.push(["band", bandLabel]);
  let at = left + 4;
  for (const [kind, text] of items) {
    if (kind === "band") {
      svg.append(el("rect", { x: at, y: 9, width: 18, height: 10, class: "band" }));
    } else {
      svg.append(el("line", { x1: at, x2: at + 18, y1: 14, y2: 14, class: kind }));
    }
    svg.append(el("text", { x: at + 23, y: 18, class: "legend" }, text));
    at += 32 + 6.5 * text.length;
  }
}
