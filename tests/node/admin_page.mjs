// The admin page in a real headless Chromium (Debian's `chromium`, driven by playwright-core):
// sign in with the API key, see a connection made by the official client within 2 s, publish
// to a room from the page and disconnect a user from the page (both seen by the client), a
// hostile user id shown as text, a wrong key refused. Env: SERVER_URL, JWT_SECRET, API_KEY,
// CHROMIUM (executable), SCREENSHOT (PNG path to write).
import { existsSync, statSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { check, connect, emitAck, fail, nextEvent, run, SERVER_URL, userToken, waitConnect } from './lib.mjs';

const API_KEY = process.env.API_KEY;
const EXECUTABLE = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOT = process.env.SCREENSHOT;
if (!API_KEY || !SCREENSHOT) fail('API_KEY and SCREENSHOT must be set');
if (!existsSync(EXECUTABLE)) fail(`no Chromium at ${EXECUTABLE}`);

const HOSTILE = '<img src=x id=pwned onerror=window.__pwned=1>';

let browser;
run('admin page in headless Chromium', async () => {
  browser = await chromium.launch({ executablePath: EXECUTABLE, headless: true, args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 1400 } });
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));

    // A wrong key is refused and the dashboard stays hidden.
    await page.goto(`${SERVER_URL}/admin`);
    await page.fill('#key', 'not-the-key');
    await page.click('#signin');
    await page.waitForFunction(() => document.getElementById('login-error').textContent.length > 0, null, { timeout: 5000 });
    check('a wrong key is refused', await page.isHidden('#dashboard'));

    // The right key: the dashboard shows this node.
    await page.fill('#key', API_KEY);
    await page.click('#signin');
    await page.waitForSelector('#nodes tbody tr td.mono', { timeout: 5000 });
    check('signed in, nodes listed', await page.isVisible('#dashboard'));
    const stored = await page.evaluate(() => sessionStorage.getItem('nself-realtime.api-key'));
    check('the key is kept in session storage', stored === API_KEY);

    // A client connects after the page loaded: its row appears within 2 s.
    const alice = connect({ auth: { token: userToken('alice') } });
    await waitConnect(alice);
    const joined = await emitAck(alice, 'room:join', { roomName: 'general' });
    check('alice joined general', joined.success === true, joined);
    const connectedAt = Date.now();
    await page.waitForSelector(`#connections tr[data-socket-id="${alice.id}"]`, { timeout: 2000 });
    check(`the connection is shown within 2 s (${Date.now() - connectedAt} ms)`, true);
    const rowText = await page.textContent(`#connections tr[data-socket-id="${alice.id}"]`);
    check('the row names the user and the room', rowText.includes('alice') && rowText.includes('general'), rowText);

    // A hostile user id is shown as text, never run.
    const hostile = connect({ auth: { token: userToken(HOSTILE) } });
    await waitConnect(hostile);
    await page.waitForSelector(`#connections tr[data-socket-id="${hostile.id}"]`, { timeout: 3000 });
    const hostileText = await page.textContent(`#connections tr[data-socket-id="${hostile.id}"]`);
    check('a hostile user id is shown as text', hostileText.includes(HOSTILE), hostileText);
    check('and not run', (await page.evaluate(() => window.__pwned)) === undefined && (await page.$('#pwned')) === null);
    hostile.disconnect();

    // Publish from the page: the client in the room gets it.
    await page.waitForSelector('#publish-room option[value="general"]', { state: 'attached', timeout: 5000 });
    await page.selectOption('#publish-room', 'general');
    await page.fill('#publish-event', 'admin:notice');
    await page.fill('#publish-data', '{"text":"maintenance at noon"}');
    const notice = nextEvent(alice, 'admin:notice', 3000);
    await page.click('#publish');
    const got = await notice;
    check('a publication from the page reaches the client', got && got.text === 'maintenance at noon', got);
    await page.waitForFunction(() => document.getElementById('publish-result').textContent.startsWith('published'), null, { timeout: 3000 });

    // The live chart has drawn points from the events above.
    await page.waitForFunction(() => Number(document.getElementById('rate').textContent) >= 0, null, { timeout: 3000 });

    // The tables follow: alice online in general, the publication in the audit log, the
    // policy module loaded.
    await page.waitForFunction(([f, t, c, x]) => [...document.querySelectorAll(`#${t} tbody tr`)]
      .some((tr) => tr.cells.length > c && tr.cells[0].textContent.startsWith(f) && tr.cells[c].textContent === x),
      ['general', 'rooms', 4, '1'], { timeout: 5000 });
    check('the rooms table shows one user online in general', true);
    await page.waitForFunction(() => [...document.querySelectorAll('#events tbody tr')]
      .some((tr) => tr.cells.length > 1 && tr.cells[1].textContent === 'api:publish'), null, { timeout: 8000 });
    check('the publication is in the audit table', true);
    await page.waitForFunction(() => [...document.querySelectorAll('#policies tbody tr')]
      .some((tr) => tr.cells.length > 2 && tr.cells[0].textContent === 'sanitizer' && tr.cells[2].textContent === 'loaded'), null, { timeout: 6000 });
    check('the policy module is listed as loaded', true);

    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    check('screenshot written', existsSync(SCREENSHOT) && statSync(SCREENSHOT).size > 10_000);

    // Disconnect the user from the page: the client is disconnected by the server.
    const gone = new Promise((resolve) => alice.once('disconnect', resolve));
    await page.fill('#disconnect-user-id', 'alice');
    await page.click('#disconnect-user');
    const reason = await Promise.race([gone, new Promise((r) => setTimeout(() => r('timeout'), 3000))]);
    check('the page disconnected alice', reason === 'io server disconnect', reason);
    await page.waitForFunction(() => document.getElementById('disconnect-result').textContent.includes('1 socket'), null, { timeout: 3000 });
    await page.waitForSelector(`#connections tr[data-socket-id="${alice.id}"]`, { state: 'detached', timeout: 3000 });
    check('and her row is gone', true);

    // Signing out forgets the key.
    await page.click('#signout');
    check('signed out', (await page.evaluate(() => sessionStorage.getItem('nself-realtime.api-key'))) === null);
    check('no script errors on the page', errors.length === 0, errors);
  } finally {
    await browser.close();
  }
});
