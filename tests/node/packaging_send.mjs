// Used by the packaging test (host/tests/packaging.rs): against a server started by the nself
// plugin's `server start`, a sender (user id SENDER_ID, which may be hostile text) and a
// receiver join ROOM_NAME and the receiver gets the sender's message:new, verbatim.
import { check, connect, emitAck, nextEvent, run, userToken, waitConnect } from './lib.mjs';

const ROOM = process.env.ROOM_NAME || 'general';
const SENDER = process.env.SENDER_ID || 'sender';

await run('packaging_send', async () => {
  const receiver = connect({ auth: { token: userToken('receiver') } });
  await waitConnect(receiver);
  const rj = await emitAck(receiver, 'room:join', { roomName: ROOM });
  check(`receiver joins ${ROOM}`, rj && rj.success === true, rj);

  const sender = connect({ auth: { token: userToken(SENDER) } });
  await waitConnect(sender);
  const sj = await emitAck(sender, 'room:join', { roomName: ROOM });
  check(`sender joins ${ROOM}`, sj && sj.success === true, sj);

  const gets = nextEvent(receiver, 'message:new', 5000);
  const content = `hello from the plugin test; '"$(x)\`y\``;
  const ack = await emitAck(sender, 'message:send', { roomName: ROOM, content, clientMessageId: 'p-1' });
  check('message:send acked', ack && ack.success === true && typeof ack.data.messageId === 'string', ack);
  const m = await gets;
  check('receiver gets message:new in the room', m.roomName === ROOM, m);
  check('content arrives verbatim', m.content === content, m);
  check('sender id arrives verbatim', m.userId === SENDER, m);
});
