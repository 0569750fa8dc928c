// The Drover fleet dashboard: a table of devices fed by the server's event stream, and a page
// per device with its latency and drift over time. Plain browser JavaScript, no dependencies.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const withToken = (path) => token ? path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : path;
let fleet = { devices: [], generated_ms: 0 };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((fleet.generated_ms - ms) / 1000));
  return s < 60 ? s + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
}

function micros(us) { return us == null ? "" : us >= 1000 ? (us / 1000).toFixed(1) + " ms" : us + " µs"; }

function labels(d) { return Object.entries(d.labels || {}).map(([k, v]) => k + "=" + v); }

function errors(d) {
  const t = d.totals;
  return t.input_errors + t.engine_errors + t.busy_errors + t.no_model_errors;
}

function renderFleet() {
  const text = document.getElementById("filter-text").value.toLowerCase();
  const group = document.getElementById("filter-group").value;
  const onlineOnly = document.getElementById("filter-online").checked;
  const groups = new Set(fleet.devices.flatMap((d) => d.groups));
  const select = document.getElementById("filter-group");
  for (const g of [...groups].sort()) {
    if (![...select.options].some((o) => o.value === g)) select.append(el("option", { value: g }, g));
  }
  const rows = fleet.devices.filter((d) =>
    (!text || [d.id, d.model || "", ...labels(d)].some((s) => s.toLowerCase().includes(text))) &&
    (!group || d.groups.includes(group)) && (!onlineOnly || d.online));
  const body = document.querySelector("#fleet tbody");
  body.replaceChildren(...rows.map((d) => el("tr", { "data-device": d.id },
    el("td", {}, el("a", { href: "#/device/" + encodeURIComponent(d.id) }, d.id)),
    el("td", {}, [...d.groups, ...labels(d)].join(", ")),
    el("td", { class: d.online ? "online" : "offline" }, d.online ? "online" : "offline"),
    el("td", {}, d.model || "—"),
    el("td", {}, d.version == null ? "—" : "v" + d.version),
    el("td", {}, micros(d.latency_us && d.latency_us.p99)),
    el("td", {}, String(errors(d))),
    el("td", { class: d.drift && d.drift.drifted.length ? "drifted" : "" },
      d.drift ? d.drift.score.toFixed(3) + (d.drift.drifted.length ? " (" + d.drift.drifted.join(", ") + ")" : "") : ""),
    el("td", {}, d.operation || ""),
    el("td", {}, ago(d.last_seen_ms)))));
  const merged = (fleet.drift || []).filter((m) => !group || m.group === group || m.group == null);
  document.querySelector("#fleet-drift tbody").replaceChildren(...merged.map((m) => {
    const drifted = m.features.filter((f) => f.drifted).map((f) => f.name);
    const scope = m.group == null ? "fleet" : "group " + m.group;
    return el("tr", { "data-scope": scope, class: drifted.length ? "drifted" : "" },
      el("td", {}, m.model), el("td", {}, "v" + m.version), el("td", {}, scope),
      el("td", {}, String(m.devices)), el("td", {}, String(m.samples)),
      el("td", {}, m.score.toFixed(3)), el("td", {}, drifted.join(", ")));
  }));
  document.querySelector("#rollouts tbody").replaceChildren(...(fleet.rollouts || []).slice().reverse().map((r) => {
    const p = r.plan, g = p.gates, st = r.state.state;
    const gates = [g.min_shadow_agreement != null && "agreement ≥ " + (g.min_shadow_agreement * 100) + " %",
      g.max_error_rate != null && "errors ≤ " + (g.max_error_rate * 100) + " %",
      g.max_p99_increase != null && "p99 ≤ +" + (g.max_p99_increase * 100) + " %",
      g.max_drift_increase != null && "drift ≤ +" + g.max_drift_increase].filter(Boolean).join(", ");
    const last = r.log.length ? r.log[r.log.length - 1].text : "";
    return el("tr", { "data-rollout": p.id, class: st === "halted" || st === "aborted" ? "drifted" : "" },
      el("td", {}, p.id), el("td", {}, p.model + " v" + p.version), el("td", {}, p.group),
      el("td", { class: "state" }, st === "halted" ? "halted: " + r.state.reason : st),
      el("td", {}, (r.stage + 1) + "/" + p.stages.length + " (" + p.stages[r.stage] + " %)" + (st === "running" ? ", " + r.phase : "")),
      el("td", {}, gates), el("td", {}, last));
  }));
  const online = fleet.devices.filter((d) => d.online).length;
  document.getElementById("summary").textContent = online + " of " + fleet.devices.length + " devices online";
}

function chart(svg, series, classes) {
  const w = 600, h = 160, pad = 28;
  const all = series.flatMap((s) => s.points);
  svg.replaceChildren();
  if (all.length === 0) { svg.append(svgEl("text", { x: pad, y: h / 2 }, "no data yet")); return; }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y1 = Math.max(...ys, 1e-9);
  const sx = (x) => pad + (x - x0) / (x1 - x0) * (w - 2 * pad);
  const sy = (y) => h - pad - y / y1 * (h - 2 * pad);
  series.forEach((s, i) => {
    svg.append(svgEl("polyline", { class: classes[i], "data-points": s.points.length,
      points: s.points.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ") }));
  });
  svg.append(svgEl("text", { x: 2, y: pad }, y1 < 10 ? y1.toFixed(3) : String(Math.round(y1))));
  svg.append(svgEl("text", { x: 2, y: h - pad }, "0"));
}

function svgEl(tag, attrs, text) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text) e.textContent = text;
  return e;
}

async function getJson(path) {
  const r = await fetch(withToken(path));
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

async function renderDevice(id) {
  const [{ device, events }, { points, drift }] = await Promise.all([
    getJson("/api/devices/" + encodeURIComponent(id)),
    getJson("/api/devices/" + encodeURIComponent(id) + "/series?since_ms=0"),
  ]);
  document.getElementById("device-title").textContent = device.id + (device.online ? " (online)" : " (offline)");
  const facts = [["Groups", device.groups.join(", ")], ["Labels", labels(device).join(", ") || "—"], ["Model", (device.model || "—") + (device.version != null ? " v" + device.version : "")],
    ["Slot", device.slot || "—"], ["Agent", (device.agent || "") + " " + (device.arch || "")],
    ["Inferences", String(device.totals.inferences)], ["Errors", String(errors(device))],
    ["Operation", device.operation || "—"], ["Last seen", ago(device.last_seen_ms)]];
  document.getElementById("device-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  chart(document.getElementById("latency-chart"), [
    { points: points.filter((p) => p.p50_us != null).map((p) => [p.end_ms, p.p50_us]) },
    { points: points.filter((p) => p.p99_us != null).map((p) => [p.end_ms, p.p99_us]) },
  ], ["p50", "p99"]);
  chart(document.getElementById("drift-chart"), [{ points: drift.map((w) => [w.end_ms, w.score]) }], ["drift"]);
  document.getElementById("device-events").replaceChildren(...events.map((e) =>
    el("li", {}, new Date(e.at_ms).toISOString() + " " + e.kind + ": " + e.text)));
}

function route() {
  const m = location.hash.match(/^#\/device\/(.+)$/);
  document.getElementById("fleet-view").hidden = !!m;
  document.getElementById("device-view").hidden = !m;
  if (m) renderDevice(decodeURIComponent(m[1])).catch((e) => { document.getElementById("device-title").textContent = String(e); });
  else renderFleet();
}

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource(withToken("/api/stream"));
  source.addEventListener("fleet", (e) => {
    fleet = JSON.parse(e.data);
    live.textContent = "live";
    live.className = "badge ok";
    route();
  });
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "badge"; };
}

for (const id of ["filter-text", "filter-group", "filter-online"]) {
  document.getElementById(id).addEventListener("input", renderFleet);
}
window.addEventListener("hashchange", route);
connect();
