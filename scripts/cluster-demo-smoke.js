// Cross-instance check for scripts/cluster-demo --smoke (run by it; not on its own).
//
// Client A connects to the first instance, client B to the last; both join "general"; A sends
// a message with an ack; B must receive it as message:new within 5 s, exactly once. Prints one
// line per step and exits 0 (pass) or 1 (fail).
//
// Environment: CLUSTER_URLS (space-separated instance URLs), JWT_SECRET (HS256),
// HEALTH_PATH (default /health). socket.io-client comes from tests/node/node_modules.
'use strict';

const { createHmac, randomBytes } = require('node:crypto');
const { createRequire } = require('node:module');
const path = require('node:path');

const { io } = createRequire(path.join(__dirname, '..', 'tests', 'node', 'package.json'))('socket.io-client');

const URLS = (process.env.CLUSTER_URLS || '').split(/\s+/).filter(Boolean);
const SECRET = process.env.JWT_SECRET;
const HEALTH_PATH = process.env.HEALTH_PATH || '/health';
const ROOM = 'general';
const CONTENT = 'hello across instances';
const DELIVERY_MS = 5000;
const DUPLICATE_WINDOW_MS = 1000;
const REDIS_WAIT_MS = 15000;
const GLOBAL_TIMEOUT_MS = 45000;

const sockets = [];
let redisStates = [];

function finish(ok, message) {
  for (const s of sockets) s.disconnect();
  if (ok) {
    console.log(`PASS ${message}`);
    process.exit(0);
  }
  console.error(`FAIL ${message}`);
  const notOk = redisStates.filter((r) => r.redis !== 'ok');
  if (notOk.length > 0) {
    console.error(`hint: ${notOk.map((r) => `${r.url} reports checks.redis = ${JSON.stringify(r.redis)}`).join('; ')}`
      + ' (cluster mode needs REALTIME_REDIS_URL and a build with the Redis adapter)');
  }
  process.exit(1);
}

function step(message) {
  console.log(`ok   ${message}`);
}

const b64url = (s) => Buffer.from(s).toString('base64url');

/** An HS256 JWT with the userId and sessionId claims, valid for an hour. */
function token(userId) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = b64url(JSON.stringify({ userId, sessionId: `sess-${userId}`, iat: now, exp: now + 3600 }));
  const sig = createHmac('sha256', SECRET).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${sig}`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** GET <url><HEALTH_PATH> as JSON, or null. */
async function health(url) {
  try {
    const res = await fetch(`${url}${HEALTH_PATH}`, { signal: AbortSignal.timeout(2000) });
    return await res.json();
  } catch {
    return null;
  }
}

/** Waits (bounded) until every instance reports checks.redis "ok"; prints what each says. */
async function waitRedis() {
  const deadline = Date.now() + REDIS_WAIT_MS;
  for (;;) {
    redisStates = await Promise.all(URLS.map(async (url) => {
      const h = await health(url);
      return { url, status: h && h.status, redis: h && h.checks ? h.checks.redis : undefined };
    }));
    if (redisStates.every((r) => r.redis === 'ok') || Date.now() >= deadline) break;
    await sleep(250);
  }
  for (const r of redisStates) {
    const line = `${r.url}${HEALTH_PATH}: status ${JSON.stringify(r.status)}, checks.redis ${JSON.stringify(r.redis)}`;
    if (r.redis === 'ok') step(line);
    else console.log(`warn ${line} (expected "ok"; trying the message anyway)`);
  }
}

function connect(url, userId) {
  const socket = io(url, {
    auth: { token: token(userId) },
    // Straight to one instance, so no sticky session is involved; websocket keeps it simple.
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
    timeout: 5000,
  });
  sockets.push(socket);
  return socket;
}

function waitConnect(socket, label) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${label}: no connect within 5000 ms`)), 5000);
    socket.once('connect', () => { clearTimeout(timer); resolve(); });
    socket.once('connect_error', (err) => { clearTimeout(timer); reject(new Error(`${label}: connect_error ${err.message}`)); });
  });
}

async function join(socket, label) {
  const ack = await socket.timeout(5000).emitWithAck('room:join', { roomName: ROOM });
  if (!ack || ack.success !== true) throw new Error(`${label}: room:join ${ROOM} refused: ${JSON.stringify(ack)}`);
  step(`${label} joined ${ROOM} (memberCount ${ack.data && ack.data.memberCount})`);
}

async function main() {
  if (URLS.length < 2 || !SECRET) finish(false, 'CLUSTER_URLS (two or more URLs) and JWT_SECRET must be set');
  const urlA = URLS[0];
  const urlB = URLS[URLS.length - 1];
  const run = randomBytes(4).toString('hex');
  const userA = `smoke-a-${run}`;
  const userB = `smoke-b-${run}`;

  await waitRedis();

  const a = connect(urlA, userA);
  const b = connect(urlB, userB);
  await Promise.all([waitConnect(a, `A (${userA})`), waitConnect(b, `B (${userB})`)]);
  step(`A connected to ${urlA}, B connected to ${urlB}`);

  await join(a, 'A');
  // Informational: A's instance learns of B's join through the cluster too.
  const joinedSeen = new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), 2000);
    a.on('user:joined', (d) => {
      if (d && d.userId === userB && d.roomName === ROOM) { clearTimeout(timer); resolve(true); }
    });
  });
  await join(b, 'B');

  const received = [];
  let firstAt = 0;
  let delivered;
  const gotIt = new Promise((resolve) => { delivered = resolve; });
  b.on('message:new', (m) => {
    if (!m || m.content !== CONTENT || m.userId !== userA) return;
    received.push(m);
    if (received.length === 1) {
      firstAt = Date.now();
      delivered();
    }
  });

  const sentAt = Date.now();
  const ack = await a.timeout(5000).emitWithAck('message:send', {
    roomName: ROOM,
    content: CONTENT,
    clientMessageId: `smoke-${run}`,
  });
  if (!ack || ack.success !== true || !ack.data || typeof ack.data.messageId !== 'string') {
    finish(false, `A: message:send not acked with success: ${JSON.stringify(ack)}`);
  }
  step(`A sent "${CONTENT}" to ${ROOM} on ${urlA} (messageId ${ack.data.messageId})`);

  const timedOut = await Promise.race([
    gotIt.then(() => false),
    sleep(DELIVERY_MS - (Date.now() - sentAt)).then(() => true),
  ]);
  if (timedOut) {
    finish(false, `B on ${urlB} got no message:new from A within ${DELIVERY_MS} ms: messages do not cross instances`);
  }
  const m = received[0];
  if (m.roomName !== ROOM || m.messageId !== ack.data.messageId) {
    finish(false, `B got a message:new that does not match the ack: ${JSON.stringify({ message: m, ack })}`);
  }
  step(`B received message:new on ${urlB} after ${firstAt - sentAt} ms (messageId matches the ack)`);

  await sleep(DUPLICATE_WINDOW_MS);
  if (received.length !== 1) {
    finish(false, `B received the message ${received.length} times, expected once`);
  }
  step(`B received it exactly once (${DUPLICATE_WINDOW_MS} ms later still one copy)`);

  if (await joinedSeen) step(`A saw user:joined for B across instances`);
  else console.log('info A saw no user:joined for B within 2 s (not part of the check)');

  finish(true, `cluster smoke: a message sent on ${urlA} reached a client on ${urlB}`);
}

setTimeout(() => finish(false, `global timeout of ${GLOBAL_TIMEOUT_MS} ms reached`), GLOBAL_TIMEOUT_MS);
main().catch((err) => finish(false, err && err.message ? err.message : String(err)));
