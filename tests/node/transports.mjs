// Transports with the official client: polling only, websocket only, polling upgraded to
// websocket, and a polling client and a websocket client talking in one room.
import { check, connect, emitAck, nextEvent, run, userToken, waitConnect } from './lib.mjs';

async function roundTrip(label, socket, room = 'general') {
  const join = await emitAck(socket, 'room:join', { roomName: room });
  check(`${label}: room:join acked`, join.success === true, join);
  const own = nextEvent(socket, 'message:new', 5000, (m) => m.content === `hi from ${label}`);
  const sent = await emitAck(socket, 'message:send', { roomName: room, content: `hi from ${label}` });
  check(`${label}: message:send acked`, sent.success === true, sent);
  check(`${label}: own message:new received`, (await own).messageId === sent.data.messageId);
}

await run('transports', async () => {
  const polling = connect({ auth: { token: userToken('poller') }, transports: ['polling'] });
  const pollConnected = nextEvent(polling, 'connected', 5000);
  await waitConnect(polling);
  check('polling only: connected', polling.io.engine.transport.name === 'polling', polling.io.engine.transport.name);
  check('polling only: connected event', (await pollConnected).socketId === polling.id);
  await roundTrip('polling', polling);

  const ws = connect({ auth: { token: userToken('wsuser') }, transports: ['websocket'] });
  const wsConnected = nextEvent(ws, 'connected', 5000);
  await waitConnect(ws);
  check('websocket only: connected', ws.io.engine.transport.name === 'websocket', ws.io.engine.transport.name);
  check('websocket only: connected event', (await wsConnected).socketId === ws.id);
  await roundTrip('websocket', ws);

  const fromWs = nextEvent(polling, 'message:new', 5000, (m) => m.userId === 'wsuser' && m.content === 'cross');
  await emitAck(ws, 'message:send', { roomName: 'general', content: 'cross' });
  check('polling client receives a websocket client message', (await fromWs).content === 'cross');
  const fromPoll = nextEvent(ws, 'message:new', 5000, (m) => m.userId === 'poller' && m.content === 'cross back');
  await emitAck(polling, 'message:send', { roomName: 'general', content: 'cross back' });
  check('websocket client receives a polling client message', (await fromPoll).content === 'cross back');

  const up = connect({ auth: { token: userToken('upgrader') }, transports: ['polling', 'websocket'], upgrade: true });
  const upgraded = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no upgrade to websocket within 5000 ms')), 5000);
    // autoConnect creates the engine synchronously, before any probe can start.
    up.io.engine.on('upgrade', (transport) => { clearTimeout(timer); resolve(transport.name); });
  });
  await waitConnect(up);
  check('upgrade: starts on polling or upgrades at once', ['polling', 'websocket'].includes(up.io.engine.transport.name));
  check('upgrade: upgraded to websocket', (await upgraded) === 'websocket');
  check('upgrade: engine transport is websocket', up.io.engine.transport.name === 'websocket');
  await roundTrip('upgraded', up);
});
