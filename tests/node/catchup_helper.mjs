// The client helper (clients/js, built with tsc) with the official socket.io-client against a
// real server with history: the transport is cut while another client sends 30 messages;
// socket.io-client reconnects by itself, the helper rejoins with the room's last position,
// and the application's `message:new` handler sees every message once, in order.
import { io } from 'socket.io-client';
import { withCatchUp } from '../../clients/js/dist/index.js';
import { SERVER_URL, check, connect, emitAck, run, userToken, waitConnect } from './lib.mjs';

run('catch-up helper', async () => {
  const reader = io(SERVER_URL, {
    auth: { token: userToken('rita') },
    transports: ['websocket'],
    reconnectionDelay: 100,
    reconnectionDelayMax: 200,
  });
  const seen = [];
  reader.on('message:new', (m) => seen.push(m.offset));
  const rejoined = [];
  const helper = withCatchUp(reader, { onRejoin: (room, answer) => rejoined.push({ room, answer }) });
  await waitConnect(reader);
  const first = await helper.join('general');
  check('joined with a position', first.success && first.data.position && first.data.position.offset === 0, first);

  const sender = connect({ auth: { token: userToken('sam') } });
  await waitConnect(sender);
  await emitAck(sender, 'room:join', { roomName: 'general' });
  for (let i = 0; i < 5; i++) await emitAck(sender, 'message:send', { roomName: 'general', content: `a${i}` });
  const until = async (cond, ms, what) => {
    const end = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > end) throw new Error(`timeout waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  await until(() => seen.length === 5, 3000, 'the first 5');
  check('the helper tracks the position', helper.position('general').offset === 5, helper.position('general'));

  // Cut the transport (no disconnect packet): socket.io-client reconnects by itself.
  const reconnected = new Promise((resolve) => reader.io.once('reconnect', resolve));
  reader.io.engine.close();
  for (let i = 0; i < 30; i++) await emitAck(sender, 'message:send', { roomName: 'general', content: `b${i}` });
  await reconnected;
  await until(() => rejoined.length === 1, 5000, 'the rejoin');
  check('rejoined with recovered: true', rejoined[0].answer.success && rejoined[0].answer.data.recovered === true, rejoined[0].answer);
  check('messages sent while it was away were recovered', rejoined[0].answer.data.position.offset > 5, rejoined[0].answer.data);
  await emitAck(sender, 'message:send', { roomName: 'general', content: 'live' });
  await until(() => seen.length >= 36, 5000, 'all 36 messages');
  await new Promise((r) => setTimeout(r, 200));
  const expected = Array.from({ length: 36 }, (_, i) => i + 1);
  check('every message once, in order', JSON.stringify(seen) === JSON.stringify(expected), seen);
  helper.close();
  reader.disconnect();
});
