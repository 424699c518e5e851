// connect_error messages as the official client sees them (err.message), on both transports.
import { check, connect, run, sign, userToken, waitConnectError } from './lib.mjs';

const now = Math.floor(Date.now() / 1000);
const cases = [
  ['no auth at all', {}, 'Authentication required'],
  ['empty auth object', { auth: {} }, 'Authentication required'],
  ['garbage token', { auth: { token: 'not-a-jwt' } }, 'Invalid token'],
  ['wrong secret', { auth: { token: sign({ userId: 'u', exp: now + 3600 }, 'another-secret') } }, 'Invalid token'],
  ['expired token', { auth: { token: sign({ userId: 'u', iat: now - 7200, exp: now - 3600 }) } }, 'Invalid token'],
];

await run('auth_errors', async () => {
  for (const transports of [['websocket'], ['polling']]) {
    for (const [name, opts, expected] of cases) {
      const socket = connect({ ...opts, transports });
      const err = await waitConnectError(socket);
      check(`${transports[0]}: ${name} -> connect_error "${expected}"`, err.message === expected, err.message);
      socket.disconnect();
    }
    const ok = connect({ auth: { token: userToken('auth-ok') }, transports });
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('valid token did not connect')), 5000);
      ok.once('connect', () => { clearTimeout(timer); resolve(); });
      ok.once('connect_error', (e) => { clearTimeout(timer); reject(e); });
    });
    check(`${transports[0]}: a valid token connects`, ok.connected);
    ok.disconnect();
  }
});
