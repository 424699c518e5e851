// Two nself-realtime instances over Redis, official clients on each (one long-polling only, one
// websocket only): a room message, user:joined, typing and presence cross instances, and the
// clients never see anything of the scale-out layer.
import { check, connect, emitAck, nextEvent, run, userToken, waitConnect } from './lib.mjs';

const SECOND_URL = process.env.SERVER_URL_2;

await run('cluster', async () => {
  check('SERVER_URL_2 is set', Boolean(SECOND_URL));
  const ann = connect({ auth: { token: userToken('ann') }, transports: ['polling'] });
  await waitConnect(ann);
  check('ann connects to instance 1 over long-polling', ann.connected);
  check('ann joins general', (await emitAck(ann, 'room:join', { roomName: 'general' })).success === true);

  const benOnline = nextEvent(ann, 'presence:changed', 5000, (d) => d.userId === 'ben' && d.status === 'online');
  const benJoined = nextEvent(ann, 'user:joined', 5000, (d) => d.userId === 'ben');
  const ben = connect({ url: SECOND_URL, auth: { token: userToken('ben') }, transports: ['websocket'] });
  await waitConnect(ben);
  check('ben connects to instance 2 over websocket', ben.connected);
  check('ben joins general', (await emitAck(ben, 'room:join', { roomName: 'general' })).success === true);
  const online = await benOnline;
  check('ann (instance 1) gets presence:changed online for ben (instance 2)',
    online.status === 'online' && online.customStatus === null, online);
  check('ann gets user:joined for ben', (await benJoined).roomName === 'general');

  const annGets = nextEvent(ann, 'message:new', 5000);
  const sent = await emitAck(ben, 'message:send', { roomName: 'general', content: 'across instances', clientMessageId: 'c-1' });
  check('ben message:send acked', sent.success === true && typeof sent.data.messageId === 'string', sent);
  const got = await annGets;
  check('ann gets ben\'s message:new with the same messageId',
    got.content === 'across instances' && got.messageId === sent.data.messageId && got.userId === 'ben', got);

  const typing = nextEvent(ann, 'typing:event', 5000, (d) => d.users.length === 1);
  ben.emit('typing:start', { roomName: 'general' });
  const t = await typing;
  check('ann gets typing:event for ben', t.roomName === 'general' && t.users[0].userId === 'ben', t);

  const benOffline = nextEvent(ann, 'presence:changed', 5000, (d) => d.userId === 'ben' && d.status === 'offline');
  ben.disconnect();
  check('ann gets presence:changed offline when ben leaves instance 2', (await benOffline).status === 'offline');
});
