// Headless Chromium (the system's /usr/bin/chromium, driven by playwright-core)
// against the real gateway and broker:
//  - the page at / shows every stream live (WebSocket JPEG on a canvas), its
//    frames change, its stats update;
//  - a stream added through the form appears and plays;
//  - MJPEG mode plays in an <img>;
//  - removing a stream through the page stops it; one someone else watches is
//    refused with who watches, and the page's force stops it;
//  - the original server's clients, re-created: client_example.html opened
//    from a file (Origin: null) against a gateway with --cors-origin '*' (start
//    with URL, both stats panels, list, stop refused while another client
//    watches, force), and a page written for the original js_client.js API
//    calling each of its methods; the React viewer's server-stats panel;
//  - a screenshot is saved to tests/browser/artifacts/.
// Run: cargo build --workspace --bins && (cd web-gateway/tests/browser && npm install && npm test)

import { chromium } from 'playwright-core';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import os from 'node:os';
import path from 'node:path';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { build } from 'vite';
import { startStack, chromiumArgs, freePort, serveStatic } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const artifacts = path.join(here, 'artifacts');
mkdirSync(artifacts, { recursive: true });
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const TOKEN = 'browser-test-token';
let failures = 0;
async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failures += 1;
    console.log(`FAIL ${name}: ${e.stack || e}`);
  }
}

/** A small fingerprint of what a canvas or img shows right now. */
async function pixels(page, selector) {
  return page.evaluate((sel) => {
    const el = document.querySelector(sel);
    if (!el) return null;
    const w = el.naturalWidth || el.width;
    const h = el.naturalHeight || el.height;
    if (!w || !h) return null;
    const c = document.createElement('canvas');
    c.width = 64; c.height = 48;
    const ctx = c.getContext('2d');
    ctx.drawImage(el, 0, 0, w, h, 0, 0, 64, 48);
    const d = ctx.getImageData(0, 0, 64, 48).data;
    let sum = 0; let hash = 0;
    for (let i = 0; i < d.length; i += 1) { sum += d[i]; hash = (hash * 31 + d[i]) >>> 0; }
    return { w, h, mean: sum / d.length, hash };
  }, selector);
}

async function changes(page, selector, what) {
  const a = await pixels(page, selector);
  assert.ok(a, `${what}: nothing drawn`);
  assert.ok(a.mean > 5, `${what}: black (${JSON.stringify(a)})`);
  for (let i = 0; i < 30; i += 1) {
    await page.waitForTimeout(100);
    const b = await pixels(page, selector);
    if (b && b.hash !== a.hash) return b;
  }
  throw new Error(`${what}: the picture does not change`);
}

// The React component, built by Vite 7 into a page served from another origin.
await build({ configFile: path.join(here, 'react', 'vite.config.js') });
const reactPort = await freePort();
const reactOrigin = `http://127.0.0.1:${reactPort}`;
const reactServer = await serveStatic(path.join(here, 'react', 'dist'), reactPort);

const stack = await startStack({
  streams: ['demo=testsrc://?size=640x480&rate=30', 'second=testsrc://?size=320x240&rate=15'],
  token: TOKEN,
  corsOrigins: [reactOrigin],
});
// A gateway as the original's users run it: every origin allowed, no token.
const open = await startStack({ corsOrigins: ['*'] });
const webDir = path.resolve(here, '../../web');
const scratch = mkdtempSync(path.join(os.tmpdir(), 'fbgw-pages-'));

/** Opens a WebSocket to `url` in a page of its own; `close()` resolves to its close code. */
async function watcher(ctx, origin, url) {
  const wp = await ctx.newPage();
  await wp.goto(`${origin}/health`);
  await wp.evaluate((u) => new Promise((resolve, reject) => {
    const ws = new WebSocket(u);
    ws.binaryType = 'arraybuffer';
    window.frames_ = 0;
    window.closed_ = null;
    ws.onmessage = () => { window.frames_ += 1; if (window.frames_ === 1) resolve(); };
    ws.onclose = (e) => { window.closed_ = e.code; reject(new Error(`closed ${e.code}`)); };
    setTimeout(() => reject(new Error('no frame in 15 s')), 15000);
  }), url);
  return {
    page: wp,
    async closedWith() {
      await wp.waitForFunction(() => window.closed_ !== null, null, { timeout: 10000 });
      return wp.evaluate(() => window.closed_);
    },
  };
}
const userDataDir = mkdtempSync(path.join(os.tmpdir(), 'fbgw-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  args: chromiumArgs(userDataDir).filter((a) => !a.startsWith('--user-data-dir') && a !== '--headless'),
  viewport: { width: 1400, height: 1000 },
});
const page = context.pages()[0] || (await context.newPage());
const consoleErrors = [];
page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
page.on('pageerror', (e) => consoleErrors.push(String(e)));

try {
  await step('the page asks for the token without one', async () => {
    await page.goto(`${stack.base}/`);
    await page.waitForFunction(() => /token/.test(document.querySelector('#message').textContent), null, { timeout: 10000 });
  });

  await step('every stream plays on a canvas over WebSocket', async () => {
    await page.goto(`${stack.base}/?token=${TOKEN}&mode=ws`);
    for (const id of ['demo', 'second']) {
      const sel = `section[data-stream-id="${id}"] canvas`;
      await page.waitForFunction((s) => Number(document.querySelector(s)?.dataset.frames || 0) > 5, sel, { timeout: 15000 });
      const p = await changes(page, sel, id);
      assert.deepEqual([p.w, p.h], id === 'demo' ? [640, 480] : [320, 240]);
    }
  });

  await step('stats update', async () => {
    const sel = 'section[data-stream-id="demo"] .stats';
    await page.waitForFunction((s) => /fps/.test(document.querySelector(s)?.textContent || ''), sel, { timeout: 5000 });
    const a = await page.textContent(sel);
    await page.waitForFunction(([s, before]) => document.querySelector(s).textContent !== before, [sel, a], { timeout: 5000 });
    assert.match(await page.textContent('section[data-stream-id="demo"] .state'), /live/);
    assert.match(await page.textContent(sel), /ws 1/);
  });

  await step('a stream added through the form plays', async () => {
    await page.fill('#add input[name=stream_id]', 'added');
    await page.fill('#add input[name=rtsp_url]', 'testsrc://?size=352x288&rate=25');
    await page.fill('#add input[name=width]', '176');
    await page.fill('#add input[name=height]', '144');
    await page.click('#add button[type=submit]');
    await page.waitForFunction(() => /started: added/.test(document.querySelector('#message').textContent), null, { timeout: 10000 });
    const sel = 'section[data-stream-id="added"] canvas';
    await page.waitForFunction((s) => Number(document.querySelector(s)?.dataset.frames || 0) > 3, sel, { timeout: 20000 });
    const p = await changes(page, sel, 'added');
    assert.deepEqual([p.w, p.h], [176, 144]);
  });

  await step('a stream added without a size plays at the camera\'s own size', async () => {
    await page.fill('#add input[name=stream_id]', 'added_native');
    await page.fill('#add input[name=rtsp_url]', 'testsrc://?size=352x288&rate=24');
    await page.click('#add button[type=submit]');
    await page.waitForFunction(() => /started: added_native/.test(document.querySelector('#message').textContent), null, { timeout: 10000 });
    const sel = 'section[data-stream-id="added_native"] canvas';
    await page.waitForFunction((s) => Number(document.querySelector(s)?.dataset.frames || 0) > 3, sel, { timeout: 20000 });
    const p = await changes(page, sel, 'added_native');
    assert.deepEqual([p.w, p.h], [352, 288]);
  });

  await step('a bad URL in the form shows the broker\'s reason', async () => {
    await page.fill('#add input[name=stream_id]', 'bad');
    await page.fill('#add input[name=rtsp_url]', 'file:///etc/passwd');
    await page.click('#add button[type=submit]');
    await page.waitForFunction(() => document.querySelector('#message').className === 'error' && /not allowed/.test(document.querySelector('#message').textContent), null, { timeout: 5000 });
    // The reason names the broker ("start the broker with --allow-files"): the
    // page's list refresh (every 2 s) must not take it for its own error and clear it.
    await page.waitForTimeout(2500);
    assert.match(await page.textContent('#message'), /local files are not allowed/);
    assert.equal(await page.getAttribute('#message', 'class'), 'error');
  });

  await page.screenshot({ path: path.join(artifacts, 'page-websocket.png'), fullPage: true });

  await step('MJPEG mode plays in <img>', async () => {
    await page.selectOption('#mode', 'mjpeg');
    const sel = 'section[data-stream-id="demo"] img';
    await page.waitForFunction((s) => (document.querySelector(s)?.naturalWidth || 0) > 0, sel, { timeout: 10000 });
    const p = await changes(page, sel, 'mjpeg');
    assert.deepEqual([p.w, p.h], [640, 480]);
    await page.waitForFunction(() => /mjpeg 1/.test(document.querySelector('section[data-stream-id="demo"] .stats').textContent), null, { timeout: 5000 });
  });

  await page.screenshot({ path: path.join(artifacts, 'page-mjpeg.png'), fullPage: true });

  await step('removing a stream someone else watches says so, and the force stops it', async () => {
    const w = await watcher(context, stack.base, `${stack.base.replace(/^http/, 'ws')}/ws/second?token=${TOKEN}`);
    page.once('dialog', (d) => d.accept());
    await page.click('section[data-stream-id="second"] button.remove');
    const sel = 'section[data-stream-id="second"] .watchers';
    await page.waitForFunction((s) => !document.querySelector(s)?.hidden, sel, { timeout: 15000 });
    assert.match(await page.textContent(sel), /\d+ other client\(s\) watching second/);
    // Refused: it still runs.
    let res = await fetch(`${stack.base}/api/streams/second/stats`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    assert.equal(res.status, 200);
    await page.click(`${sel} button.force`);
    await page.waitForFunction(() => !document.querySelector('section[data-stream-id="second"]'), null, { timeout: 5000 });
    assert.equal(await w.closedWith(), 1000);
    res = await fetch(`${stack.base}/api/streams/second/stats`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    assert.equal(res.status, 404);
    await w.page.close();
  });

  await step('removing a stream through the page stops it', async () => {
    page.once('dialog', (d) => d.accept());
    await page.click('section[data-stream-id="added"] button.remove');
    await page.waitForFunction(() => !document.querySelector('section[data-stream-id="added"]'), null, { timeout: 5000 });
    const res = await fetch(`${stack.base}/api/streams/added`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    assert.equal(res.status, 404);
  });

  await step('client_example.html from a file, as the original users open it', async () => {
    const ex = await context.newPage();
    const q = new URLSearchParams({
      serverUrl: open.base.replace(/^http/, 'ws'),
      rtspUrl: 'testsrc://?size=320x240&rate=30',
      width: '320',
      height: '240',
    });
    await ex.goto(`${pathToFileURL(path.join(webDir, 'client_example.html'))}?${q}`);
    await ex.click('#startBtn');
    await ex.waitForFunction(() => /Connected and receiving frames/.test(document.querySelector('#status').textContent), null, { timeout: 20000 });
    await ex.waitForFunction(() => Number(document.querySelector('#framesReceived').textContent.replace(/\D/g, '')) > 5, null, { timeout: 15000 });
    await changes(ex, '#videoCanvas', 'client_example');
    // The server panel fills in from the stats (every 2 s).
    await ex.waitForFunction(() => document.querySelector('#serverIsRunning').textContent === 'Yes', null, { timeout: 10000 });
    const id = await ex.textContent('#serverStreamId');
    assert.match(id, /^stream_[0-9a-f]{9}$/);
    assert.ok(Number((await ex.textContent('#serverFrameCount')).replace(/\D/g, '')) > 0);
    assert.ok(Number(await ex.textContent('#serverClientCount')) >= 1);
    assert.ok(Number(await ex.textContent('#serverBufferSize')) > 0);
    assert.match(await ex.textContent('#serverLastFrame'), /^\d{4}-\d\d-\d\dT/);
    assert.ok(Number(await ex.textContent('#averageFps')) > 0);
    await ex.click('#listStreamsBtn');
    const li = `#streamsContent li[data-stream-id="${id}"]`;
    await ex.waitForSelector(li, { timeout: 5000 });
    assert.match(await ex.textContent(li), /Running: Yes, Clients: \d+, Frames: [\d,]+/);
    // Someone else watches: Stop is refused with the count...
    const w = await watcher(context, open.base, `${open.base.replace(/^http/, 'ws')}/ws/${id}`);
    // The page closes its own socket before it asks to stop, and that socket's
    // close event may come before or after the answer: either way the answer is
    // what the status line keeps. The close is held back here for 500 ms, so that
    // its event comes after the answer, the order that once lost the answer.
    const ownSocketClosed = () => ex.evaluate(() => {
      const ws = client.ws;
      const close = ws.close.bind(ws);
      ws.close = (...args) => setTimeout(() => close(...args), 500);
      window.ownSocketClosed = new Promise((done) => ws.addEventListener('close', () => done(true)));
    });
    await ownSocketClosed();
    await ex.click('#stopBtn');
    await ex.waitForFunction(() => /Cannot stop - \d+ clients connected/.test(document.querySelector('#status').textContent), null, { timeout: 10000 });
    assert.match(await ex.textContent('#error'), /still watching/);
    await ex.evaluate(() => window.ownSocketClosed);
    assert.match(await ex.textContent('#status'), /Cannot stop - \d+ clients connected/);
    // ...Force stops it for everybody.
    await ex.click('#startBtn');
    await ex.waitForFunction(() => !document.querySelector('#forceStopBtn').disabled, null, { timeout: 20000 });
    await ownSocketClosed();
    await ex.click('#forceStopBtn');
    await ex.waitForFunction(() => /Stream force-stopped/.test(document.querySelector('#status').textContent), null, { timeout: 10000 });
    await ex.evaluate(() => window.ownSocketClosed);
    assert.match(await ex.textContent('#status'), /Stream force-stopped/);
    assert.equal(await w.closedWith(), 1000);
    assert.equal((await fetch(`${open.base}/api/streams/${id}/stats`)).status, 404);
    await ex.screenshot({ path: path.join(artifacts, 'client-example-file.png'), fullPage: true });
    await w.page.close();
    await ex.close();
  });

  await step('a page written for the original js_client.js: every method', async () => {
    const file = path.join(scratch, 'original-api.html');
    writeFileSync(file, `<!doctype html><html><body><canvas width="10" height="10"></canvas>
<script src="${pathToFileURL(path.join(webDir, 'js_client.js'))}"></script></body></html>`);
    const op = await context.newPage();
    await op.goto(pathToFileURL(file).href);
    const r = await op.evaluate(async (server) => {
      const out = {};
      const sleep = (ms) => new Promise((res) => setTimeout(res, ms));
      const until = async (what, f, ms = 15000) => {
        const end = Date.now() + ms;
        while (!(await f())) {
          if (Date.now() > end) throw new Error(`timed out: ${what}`);
          await sleep(50);
        }
      };
      const client = new RTSPStreamClient(server);
      client.setupCanvas(document.querySelector('canvas'));
      const events = [];
      const frames = [];
      client.onConnect(() => events.push('connect'));
      client.onDisconnect((e) => events.push(`disconnect ${e.code}`));
      client.onError((e) => events.push(`error ${e}`));
      client.onFrame((frameData, width, height, stats) => frames.push([frameData.length, width, height, stats.framesReceived]));
      const url = 'testsrc://?size=320x240&rate=25';
      out.start = await client.startStreamWithURL(url, 320, 240);
      out.again = await client.startStreamWithURL(url, 320, 240);
      out.list = (await client.listStreams()).filter((s) => s.stream_id === client.streamId);
      client.connect();
      await until('5 frames', () => frames.length >= 5);
      out.frames = frames.slice(0, 5);
      out.canvas = [client.canvas.width, client.canvas.height];
      await until('a running stream with frames', async () => {
        out.serverStats = await client.getStreamStats();
        return out.serverStats && out.serverStats.is_running && out.serverStats.buffer_size > 0;
      });
      out.stats = client.getStats();
      out.connection = client.getConnectionStatus();
      const a = await client.pollFrame();
      const b = await client.pollFrame();
      out.polled = [a.width, a.height, a.data.length, b.frameNumber > a.frameNumber];
      out.stop = await client.stopStream();
      out.startAgain = await client.startStream(url, 320, 240);
      client.resetStats();
      out.reset = client.getStats().framesReceived;
      out.force = await client.forceStopStream();
      await until('the socket closed', () => events.some((e) => e.startsWith('disconnect')));
      out.events = events;
      out.after = await client.getStreamStats();
      out.stopGone = await client.stopStream();
      out.forceGone = await client.forceStopStream();
      client.disconnect();
      out.bad = await new RTSPStreamClient(server).startStreamWithURL('file:///etc/passwd');
      // Sizes: none named is the gateway's default, the original's 640x480;
      // width 'native' is the camera's own (these sources are 320x240).
      out.sizes = [];
      for (const [c, start] of [
        [new RTSPStreamClient(server, 'js_default'), (c) => c.startStream('testsrc://?size=320x240&rate=24')],
        [new RTSPStreamClient(server, 'js_native'), (c) => c.startStream('testsrc://?size=320x240&rate=23', 'native')],
        [new RTSPStreamClient(server), (c) => c.startStreamWithURL('testsrc://?size=320x240&rate=22', 'native')],
      ]) {
        const s = await start(c);
        await until(`${c.streamId} running`, async () => (await c.getStreamStats())?.is_running);
        const f = await c.pollFrame();
        out.sizes.push([s.success, f.width, f.height, f.data.length]);
        await c.forceStopStream();
      }
      return out;
    }, open.base.replace(/^http/, 'ws'));
    assert.equal(r.start.success, true, JSON.stringify(r.start));
    assert.match(r.start.streamId, /^stream_[0-9a-f]{9}$/);
    assert.equal(r.start.message, 'Stream started successfully');
    assert.deepEqual([r.start.width, r.start.height], [320, 240]);
    assert.equal(r.again.message, 'Stream already running');
    assert.equal(r.again.streamId, r.start.streamId);
    assert.equal(r.list.length, 1);
    assert.ok('is_running' in r.list[0] && 'client_count' in r.list[0] && 'frame_count' in r.list[0]);
    for (const [len, w, h, n] of r.frames) assert.deepEqual([len, w, h, n > 0], [320 * 240 * 3, 320, 240, true]);
    assert.deepEqual(r.canvas, [320, 240]);
    assert.equal(r.serverStats.stream_id, r.start.streamId);
    assert.ok(r.serverStats.frame_count > 0 && r.serverStats.client_count >= 1, JSON.stringify(r.serverStats));
    assert.match(r.serverStats.last_frame_time, /Z$/);
    assert.equal(r.stats.isConnected, true);
    assert.ok(r.stats.framesReceived >= 5 && r.stats.bytesReceived >= 5 * 320 * 240 * 3 && r.stats.averageFps > 0);
    assert.equal(r.connection.wsState, 1);
    assert.deepEqual(r.polled, [320, 240, 320 * 240 * 3, true]);
    // This page's own socket watches: a plain stop is refused.
    assert.deepEqual([r.stop.success, r.stop.conflict, r.stop.clientCount >= 1], [false, true, true], JSON.stringify(r.stop));
    assert.equal(r.startAgain.success, true);
    assert.equal(r.reset, 0);
    assert.deepEqual(r.force, { success: true, message: 'Stream force-stopped successfully' });
    assert.deepEqual(r.events.slice(0, 1), ['connect']);
    assert.ok(r.events.includes('disconnect 1000'), r.events.join());
    assert.equal(r.after, null);
    assert.equal(r.stopGone.success, true);
    assert.equal(r.forceGone.success, true);
    assert.equal(r.bad.success, false);
    assert.match(r.bad.error, /HTTP 400/);
    assert.deepEqual(r.sizes, [
      [true, 640, 480, 640 * 480 * 3],
      [true, 320, 240, 320 * 240 * 3],
      [true, 320, 240, 320 * 240 * 3],
    ]);
    await op.close();
  });

  await step('the React component (Vite 7 build, other origin) starts a stream and plays it', async () => {
    const rp = await context.newPage();
    const q = new URLSearchParams({
      server: stack.base.replace(/^http/, 'ws'),
      stream: 'reactcam',
      url: 'testsrc://?size=320x240&rate=20',
      width: '320',
      height: '240',
      token: TOKEN,
    });
    await rp.goto(`${reactOrigin}/?${q}`);
    const sel = '.rtsp-stream-viewer[data-stream-id="reactcam"] canvas';
    await rp.waitForFunction((s) => Number(document.querySelector(s)?.dataset.frameNumber || 0) > 3, sel, { timeout: 20000 });
    assert.equal(await rp.getAttribute('.rtsp-stream-viewer', 'data-status'), 'open');
    const p = await changes(rp, sel, 'react');
    assert.deepEqual([p.w, p.h], [320, 240]);
    // The original's panels: the client's counts, and the server's after "Refresh Stats".
    await rp.waitForFunction(() => Number(document.querySelector('.client-stats .stat-item span')?.textContent || 0) > 3, null, { timeout: 5000 });
    await rp.click('button.refresh-stats');
    await rp.waitForSelector('.server-stats', { timeout: 5000 });
    assert.equal(await rp.textContent('.server-stats .is-running'), 'Yes');
    assert.ok(Number(await rp.textContent('.server-stats .frame-count')) > 0);
    assert.ok(Number(await rp.textContent('.server-stats .client-count')) >= 1);
    assert.ok(Number(await rp.textContent('.server-stats .buffer-size')) > 0);
    // It really started the stream on the gateway (POST across origins, with CORS).
    const res = await fetch(`${stack.base}/api/streams/reactcam/stats`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    assert.equal(res.status, 200);
    assert.equal((await res.json()).width, 320);
    await rp.screenshot({ path: path.join(artifacts, 'react-viewer.png') });
    await rp.close();
  });

  await step('another web site can neither read frames nor start streams', async () => {
    const evilPort = await freePort();
    const evil = await serveStatic(path.join(here, 'react', 'dist'), evilPort);
    const ep = await context.newPage();
    try {
      await ep.goto(`http://127.0.0.1:${evilPort}/?server=none`);
      const result = await ep.evaluate(async ({ base, token }) => {
        const ws = await new Promise((resolve) => {
          const s = new WebSocket(`${base.replace(/^http/, 'ws')}/ws/demo?token=${token}`);
          s.binaryType = 'arraybuffer';
          s.onmessage = () => { resolve('got a frame'); s.close(); };
          s.onerror = () => resolve('refused');
          setTimeout(() => resolve('timeout'), 5000);
        });
        let post;
        try {
          await fetch(`${base}/api/streams`, { method: 'POST', body: JSON.stringify({ stream_id: 'evil', rtsp_url: 'testsrc://?size=64x64' }) });
          post = 'readable';
        } catch (e) {
          post = 'blocked';
        }
        return { ws, post };
      }, { base: stack.base, token: TOKEN });
      assert.deepEqual(result, { ws: 'refused', post: 'blocked' });
      const res = await fetch(`${stack.base}/api/streams/evil`, { headers: { Authorization: `Bearer ${TOKEN}` } });
      assert.equal(res.status, 404, 'the cross-site POST must not have started a stream');
    } finally {
      await ep.close();
      evil.close();
    }
  });

  await step('no script errors in the pages', async () => {
    // Failed requests (the 401 without token, the refused file:// URL, the
    // favicon) are logged by Chromium as resource errors: expected here.
    const unexpected = consoleErrors.filter((e) => !/^Failed to load resource/.test(e));
    assert.ok(consoleErrors.length < 20, consoleErrors.join('\n'));
    assert.deepEqual(unexpected, []);
  });
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
  rmSync(scratch, { recursive: true, force: true });
  await stack.stop();
  await open.stop();
  reactServer.close();
}

if (failures) {
  console.log(`\n${failures} failed; gateway/broker log tail:\n${stack.logs.slice(-30).join('')}`);
  process.exit(1);
}
console.log(`\nall passed; screenshots in ${artifacts}`);
