// The admin page: calls the server API with the key kept in session storage and redraws.
// Every value from the server is inserted as text (never as HTML): user ids, room names and
// payloads come from clients.
"use strict";

const KEY = "nself-realtime.api-key";
const HISTORY = 120; // seconds of events/s kept for the chart
const $ = (id) => document.getElementById(id);

let key = sessionStorage.getItem(KEY);
let timers = [];
let lastEvents = null; // { total, at }
const rates = [];

class Unauthorized extends Error {}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: Object.assign({ Authorization: "Bearer " + key }, body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
    cache: "no-store",
  });
  let json = null;
  try { json = await res.json(); } catch (_) { /* not JSON */ }
  if (res.status === 401) throw new Unauthorized((json && json.error && json.error.message) || "unauthorized");
  if (!json || json.success !== true) {
    const e = json && json.error;
    throw new Error(e ? e.code + ": " + e.message : "HTTP " + res.status);
  }
  return json.data;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    if (c instanceof Node) { const td = document.createElement("td"); td.appendChild(c); tr.appendChild(td); }
    else if (c && typeof c === "object") tr.appendChild(el("td", c.text, c.cls));
    else tr.appendChild(el("td", c));
  }
  return tr;
}

function fill(tableId, rows, empty) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...rows);
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = el("td", empty, "muted");
    td.colSpan = $(tableId).tHead.rows[0].cells.length;
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

function duration(s) {
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}

function time(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleTimeString();
}

function signedIn(ok) {
  $("login").hidden = ok;
  $("dashboard").hidden = !ok;
  $("signout").hidden = !ok;
  if (!ok) $("status").textContent = "signed out";
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  key = null;
  timers.forEach(clearInterval);
  timers = [];
  signedIn(false);
  $("login-error").textContent = message || "";
}

async function guarded(fn) {
  try { await fn(); }
  catch (e) {
    if (e instanceof Unauthorized) signOut("The key was refused: " + e.message);
    else $("status").textContent = "error: " + e.message;
  }
}

async function refreshNodes() {
  const data = await api("GET", "/api/nodes");
  let total = 0, connections = 0, users = 0;
  fill("nodes", data.nodes.map((n) => {
    total += n.eventsTotal; connections += n.connections; users += n.users;
    return row([
      { text: n.nodeId + (n.self ? " (this)" : ""), cls: "mono" }, n.hostname || "", n.version,
      duration(n.uptimeSeconds), { text: n.connections, cls: "num" }, { text: n.users, cls: "num" },
      { text: n.eventsTotal, cls: "num" }, n.draining ? "draining" : "serving",
    ]);
  }), "no nodes");
  $("coverage").textContent = data.complete ? "" : "(not answering: " + (data.missing.join(", ") || "Redis unreachable") + ")";
  $("total-connections").textContent = connections;
  $("total-users").textContent = users;
  const now = performance.now();
  if (lastEvents) {
    const rate = Math.max(0, (total - lastEvents.total) / ((now - lastEvents.at) / 1000));
    rates.push(rate);
    if (rates.length > HISTORY) rates.shift();
    $("rate").textContent = rate.toFixed(1);
    draw();
  }
  lastEvents = { total, at: now };
  $("status").textContent = data.nodes.length + " node(s) · updated " + new Date().toLocaleTimeString();
}

function draw() {
  const c = $("chart");
  const w = c.width = c.clientWidth || 560;
  const h = c.height = 160;
  const g = c.getContext("2d");
  g.clearRect(0, 0, w, h);
  const max = Math.max(1, ...rates);
  g.strokeStyle = "#e2e5ea";
  g.fillStyle = "#6b7380";
  g.font = "11px system-ui, sans-serif";
  for (const f of [0, 0.5, 1]) {
    const y = h - 16 - f * (h - 28);
    g.beginPath(); g.moveTo(36, y); g.lineTo(w, y); g.stroke();
    g.fillText((max * f).toFixed(max * f < 10 ? 1 : 0), 2, y + 4);
  }
  g.strokeStyle = "#2563eb";
  g.lineWidth = 2;
  g.beginPath();
  rates.forEach((r, i) => {
    const x = 36 + (i / (HISTORY - 1)) * (w - 40);
    const y = h - 16 - (r / max) * (h - 28);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
}

async function refreshConnections() {
  const data = await api("GET", "/api/connections?limit=200");
  $("connections-count").textContent = data.total + (data.truncated ? " (newest 200 shown)" : "");
  fill("connections", data.connections.map((s) => {
    const b = el("button", "Disconnect", "small secondary");
    b.type = "button";
    b.dataset.socketId = s.socketId;
    b.addEventListener("click", () => guarded(async () => {
      const r = await api("POST", "/api/disconnect", { socketId: s.socketId });
      $("disconnect-result").textContent = "socket " + s.socketId + ": " + r.disconnected + " disconnected";
      await refreshConnections();
    }));
    const tr = row([
      { text: s.socketId, cls: "mono" }, s.userId || "(anonymous)", { text: s.nodeId, cls: "mono" },
      s.transport || "", s.ip || "", time(s.connectedAt), s.rooms.join(", "), b,
    ]);
    tr.dataset.socketId = s.socketId;
    if (s.userId) tr.dataset.userId = s.userId;
    return tr;
  }), "no connections");
}

async function refreshRooms() {
  const data = await api("GET", "/api/rooms");
  const select = $("publish-room");
  const chosen = select.value;
  select.replaceChildren(...data.rooms.filter((r) => r.isActive).map((r) => {
    const o = el("option", r.name);
    o.value = r.name;
    return o;
  }));
  if (chosen) select.value = chosen;
  fill("rooms", data.rooms.map((r) => row([
    r.name + (r.isActive ? "" : " (deleted)"), r.type, r.visibility,
    { text: r.memberCount, cls: "num" }, { text: r.online, cls: "num" }, { text: r.sockets, cls: "num" },
  ])), "no rooms");
}

async function refreshPresence() {
  const data = await api("GET", "/api/presence");
  const dl = $("presence");
  const items = [["connected users", data.online]];
  for (const [s, n] of Object.entries(data.byStatus)) items.push([s, n]);
  dl.replaceChildren(...items.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
}

async function refreshPolicies() {
  const data = await api("GET", "/api/policies");
  if (!data.enabled) { fill("policies", [], "policy modules are disabled (REALTIME_ENABLE_PLUGINS=false)"); return; }
  fill("policies", data.modules.map((m) => row([
    m.name || m.file, m.version || "", { text: m.status, cls: m.serving ? "good" : "error" }, m.mode,
    (m.events || []).join(", "), { text: m.calls, cls: "num" }, { text: m.rejects, cls: "num" },
    { text: m.failures, cls: "num" }, { text: m.p99Us == null ? "" : m.p99Us + " µs", cls: "num" },
  ])), "no policy modules loaded");
}

async function refreshEvents() {
  const data = await api("GET", "/api/events?limit=30");
  fill("events", data.events.map((e) => row([
    time(e.createdAt), e.eventType, e.userId || "", { text: e.socketId || "", cls: "mono" },
    { text: JSON.stringify(e.payload), cls: "payload mono" },
  ])), "no audit events");
}

function start() {
  signedIn(true);
  const every = (fn, ms) => { guarded(fn); timers.push(setInterval(() => guarded(fn), ms)); };
  every(refreshNodes, 1000);
  every(refreshConnections, 1000);
  every(refreshRooms, 2000);
  every(refreshPresence, 2000);
  every(refreshPolicies, 5000);
  every(refreshEvents, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    key = $("key").value.trim();
    $("key").value = "";
    api("GET", "/api/nodes").then(() => {
      sessionStorage.setItem(KEY, key);
      $("login-error").textContent = "";
      start();
    }).catch((e) => signOut(e instanceof Unauthorized ? "The key was refused." : "Error: " + e.message));
  });
  $("signout").addEventListener("click", () => signOut(""));
  $("disconnect-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const user = $("disconnect-user-id").value.trim();
    guarded(async () => {
      const r = await api("POST", "/api/disconnect", { userId: user });
      $("disconnect-result").textContent = "user " + user + ": " + r.disconnected + " socket(s) disconnected";
      await refreshConnections();
    });
  });
  $("publish-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const event = $("publish-event").value.trim();
    const raw = $("publish-data").value;
    let data;
    try { data = raw.trim() === "" ? null : JSON.parse(raw); }
    catch (_) {
      if (event !== "message:new") { $("publish-result").textContent = "data is not valid JSON"; return; }
      data = raw;
    }
    const body = { room: $("publish-room").value, event, data };
    const user = $("publish-user").value.trim();
    if (user) body.userId = user;
    api("POST", "/api/publish", body).then((r) => {
      $("publish-result").textContent = "published " + r.event + " to " + r.room + (r.messageId ? " (messageId " + r.messageId + ")" : "");
    }).catch((e) => {
      if (e instanceof Unauthorized) signOut("The key was refused.");
      else $("publish-result").textContent = e.message;
    });
  });
  if (key) start(); else signedIn(false);
});
