// A server behind on wiring new connections (REALTIME_MAX_PENDING_CONNECTS reached) refuses new
// sessions with HTTP 503 and Retry-After; the official client takes it as a transport error and
// retries with its backoff until it gets in, on both transports. The server under test runs
// with REALTIME_MAX_PENDING_CONNECTS=1 and REALTIME_CONNECT_TIMEOUT=1500.
import { check, connect, run, SERVER_URL, userToken } from './lib.mjs';

const handshake = () => fetch(`${SERVER_URL}/socket.io/?EIO=4&transport=polling`);

await run('busy_retry', async () => {
  for (const transports of [['polling'], ['websocket']]) {
    // A session that opens and never connects to the namespace holds the one pending place
    // until the connect timeout ends it.
    const holder = await handshake();
    check(`${transports[0]}: the first session opens`, holder.status === 200, holder.status);
    await holder.text();
    const refused = await handshake();
    const body = await refused.text();
    check(`${transports[0]}: the next one gets 503`, refused.status === 503, refused.status);
    check(`${transports[0]}: with Retry-After`, refused.headers.get('retry-after') === '1');
    check(`${transports[0]}: and a JSON reason`, JSON.parse(body).code === 'SERVICE_UNAVAILABLE', body);

    const socket = connect({
      auth: { token: userToken(`busy-${transports[0]}`) },
      transports,
      reconnection: true,
      reconnectionDelay: 200,
      reconnectionDelayMax: 500,
    });
    let errors = 0;
    let activeAfterError = true;
    socket.on('connect_error', () => {
      errors += 1;
      activeAfterError = activeAfterError && socket.active;
    });
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('never connected after the refusals')), 10000);
      socket.once('connect', () => { clearTimeout(timer); resolve(); });
    });
    check(`${transports[0]}: refused at first (${errors} connect_error)`, errors >= 1, errors);
    check(`${transports[0]}: the client kept retrying by itself`, activeAfterError);
    check(`${transports[0]}: then connected`, socket.connected);
    socket.disconnect();
    // Let the pending place free up for the next round.
    await new Promise((r) => setTimeout(r, 1600));
  }
});
