// Shared helpers for the compatibility scripts: env, HS256 tokens (node:crypto), checks with
// one printed line each, bounded waits, and a global timeout so a script always stops.
import { createHmac } from 'node:crypto';
import { io } from 'socket.io-client';

export const SERVER_URL = process.env.SERVER_URL;
export const JWT_SECRET = process.env.JWT_SECRET;
const GLOBAL_TIMEOUT_MS = Number(process.env.SCRIPT_TIMEOUT_MS || 30000);
const sockets = new Set();

if (!SERVER_URL || !JWT_SECRET) {
  console.error('FAIL SERVER_URL and JWT_SECRET must be set');
  process.exit(2);
}

const globalTimer = setTimeout(
  () => fail(`global timeout of ${GLOBAL_TIMEOUT_MS} ms reached`),
  GLOBAL_TIMEOUT_MS,
);

export function fail(message) {
  console.error(`FAIL ${message}`);
  for (const s of sockets) s.disconnect();
  process.exit(1);
}

/** Prints `ok   name` or fails the script with the detail. */
export function check(name, condition, detail) {
  if (!condition) {
    fail(`${name}${detail === undefined ? '' : `: ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`}`);
  }
  console.log(`ok   ${name}`);
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/** An HS256 JWT for `claims`. */
export function sign(claims, secret = JWT_SECRET) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${sig}`;
}

/** A valid token for `userId` (sessionId `sess-<userId>`, exp in one hour). */
export function userToken(userId, extra = {}) {
  const now = Math.floor(Date.now() / 1000);
  return sign({ userId, sessionId: `sess-${userId}`, iat: now, exp: now + 3600, ...extra });
}

/** A socket that never reconnects, tracked so a failure closes it (`url`: another server). */
export function connect({ url = SERVER_URL, ...opts } = {}) {
  const socket = io(url, { reconnection: false, forceNew: true, timeout: 5000, ...opts });
  sockets.add(socket);
  return socket;
}

/** Resolves on `connect`, rejects with the Error of `connect_error`, bounded. */
export function waitConnect(socket, ms = 5000) {
  if (socket.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no connect within ${ms} ms`)), ms);
    socket.once('connect', () => { clearTimeout(timer); resolve(); });
    socket.once('connect_error', (err) => { clearTimeout(timer); reject(err); });
  });
}

/** Resolves with the `connect_error` Error; fails if the socket connects instead. */
export function waitConnectError(socket, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no connect_error within ${ms} ms`)), ms);
    socket.once('connect', () => { clearTimeout(timer); reject(new Error('connected, expected connect_error')); });
    socket.once('connect_error', (err) => { clearTimeout(timer); resolve(err); });
  });
}

/** The first `event` payload matching `pred`, bounded. */
export function nextEvent(socket, event, ms = 3000, pred = () => true) {
  return new Promise((resolve, reject) => {
    const handler = (data) => {
      if (!pred(data)) return;
      clearTimeout(timer);
      socket.off(event, handler);
      resolve(data);
    };
    const timer = setTimeout(() => {
      socket.off(event, handler);
      reject(new Error(`no ${event} within ${ms} ms`));
    }, ms);
    socket.on(event, handler);
  });
}

/** Emits with an ack callback and resolves with the ack's first argument, bounded. */
export function emitAck(socket, event, data, ms = 5000) {
  return socket.timeout(ms).emitWithAck(event, data);
}

/** Runs the script body; prints `PASS <name>` and exits 0, or prints `FAIL` and exits 1. */
export async function run(name, body) {
  try {
    await body();
    for (const s of sockets) s.disconnect();
    clearTimeout(globalTimer);
    console.log(`PASS ${name}`);
    process.exit(0);
  } catch (err) {
    fail(err && err.stack ? err.stack : String(err));
  }
}
