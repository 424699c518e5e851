// The README flow with the official client: connect with auth.token, emit room:join with an ack
// at once (no waiting for connect), send a message, another client receives it; plus the shapes
// of connected/authenticated/user:joined/message:new/typing:event/presence:changed/pong.
import { check, connect, emitAck, nextEvent, run, userToken, waitConnect } from './lib.mjs';

const isIso = (s) => typeof s === 'string' && /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}/.test(s) && !Number.isNaN(Date.parse(s));

await run('readme_flow', async () => {
  const alice = connect({ auth: { token: userToken('alice') } });
  const aliceConnected = nextEvent(alice, 'connected', 5000);
  const aliceAuthenticated = nextEvent(alice, 'authenticated', 5000);
  // Immediately, as in the README: socket.io-client buffers this until the connect completes.
  const aliceJoin = emitAck(alice, 'room:join', { roomName: 'general' });
  await waitConnect(alice);
  check('alice connects with auth.token', alice.connected);

  const joined = await aliceJoin;
  check('room:join emitted before connect is acked', joined && joined.success === true, joined);
  check('join ack data.roomName', joined.data && joined.data.roomName === 'general', joined);
  check('join ack data.memberCount is a number', typeof joined.data.memberCount === 'number', joined);

  const connected = await aliceConnected;
  check('connected.socketId is the socket id', connected.socketId === alice.id, connected);
  check('connected.serverTime is ISO 8601', isIso(connected.serverTime), connected);
  check('connected.protocolVersion is "1.0"', connected.protocolVersion === '1.0', connected);
  const auth = await aliceAuthenticated;
  check('authenticated.userId', auth.userId === 'alice', auth);
  check('authenticated.sessionId', auth.sessionId === 'sess-alice', auth);
  check('authenticated.rooms is an array', Array.isArray(auth.rooms), auth);

  const bob = connect({ auth: { token: userToken('bob') } });
  const bobJoin = emitAck(bob, 'room:join', { roomName: 'general' });
  const userJoined = nextEvent(alice, 'user:joined', 5000, (d) => d.userId === 'bob');
  check('bob join acked', (await bobJoin).success === true);
  const uj = await userJoined;
  check('alice gets user:joined {roomName, userId}', uj.roomName === 'general' && uj.userId === 'bob', uj);

  const aliceGets = nextEvent(alice, 'message:new', 5000);
  const bobGets = nextEvent(bob, 'message:new', 5000);
  const sent = await emitAck(bob, 'message:send', { roomName: 'general', content: 'Hello, world!' });
  check('message:send ack success', sent.success === true, sent);
  check('message:send ack data.messageId', sent.data && typeof sent.data.messageId === 'string', sent);
  check('message:send ack data.timestamp', sent.data && sent.data.timestamp !== undefined, sent);
  const msg = await aliceGets;
  check('alice receives message:new', msg.content === 'Hello, world!' && msg.userId === 'bob' && msg.roomName === 'general', msg);
  check('message:new.messageId matches the ack', msg.messageId === sent.data.messageId, { msg, sent });
  check('message:new.timestamp is ISO 8601', isIso(msg.timestamp), msg);
  check('message:new has threadId and metadata keys', 'threadId' in msg && 'metadata' in msg, msg);
  const own = await bobGets;
  check('sender receives its own message:new', own.messageId === sent.data.messageId, own);

  const typing = nextEvent(bob, 'typing:event', 3000);
  alice.emit('typing:start', { roomName: 'general' });
  const t = await typing;
  check('typing:event lists alice once', t.roomName === 'general' && Array.isArray(t.users)
    && t.users.length === 1 && t.users[0].userId === 'alice' && t.users[0].startedAt !== undefined, t);
  const typingStop = nextEvent(bob, 'typing:event', 3000);
  alice.emit('typing:stop', { roomName: 'general' });
  const ts = await typingStop;
  check('typing:stop empties the list', Array.isArray(ts.users) && ts.users.length === 0, ts);

  const presence = nextEvent(bob, 'presence:changed', 3000, (d) => d.userId === 'alice' && d.status === 'away');
  alice.emit('presence:update', { status: 'away', customStatus: { text: 'brb', emoji: '☕' } });
  const p = await presence;
  check('presence:changed carries customStatus text and emoji', p.customStatus === 'brb' && p.customEmoji === '☕', p);

  const before = Date.now();
  const pong = nextEvent(alice, 'pong', 3000);
  alice.emit('ping');
  const pg = await pong;
  check('pong.timestamp is epoch ms', typeof pg.timestamp === 'number' && pg.timestamp >= before - 2000 && pg.timestamp <= Date.now() + 2000, pg);

  const left = nextEvent(alice, 'user:left', 3000, (d) => d.userId === 'bob');
  const leave = await emitAck(bob, 'room:leave', { roomName: 'general' });
  check('room:leave ack success', leave.success === true, leave);
  const ul = await left;
  check('alice gets user:left', ul.roomName === 'general' && ul.userId === 'bob', ul);

  const offline = nextEvent(bob, 'presence:changed', 3000, (d) => d.userId === 'alice' && d.status === 'offline');
  alice.disconnect();
  check('bob sees alice go offline', (await offline).status === 'offline');
});
