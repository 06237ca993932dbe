// Headless Chromium (the system's /usr/bin/chromium, driven by playwright-core)
// against the real gateway and broker:
//  - the page at / shows every stream live (WebSocket JPEG on a canvas), its
//    frames change, its stats update;
//  - a stream added through the form appears and plays;
//  - MJPEG mode plays in an <img>;
//  - the JS client example page plays;
//  - removing a stream through the page stops it;
//  - a screenshot is saved to tests/browser/artifacts/.
// Run: cargo build --workspace --bins && (cd web-gateway/tests/browser && npm install && npm test)

import { chromium } from 'playwright-core';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
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

  await step('a bad URL in the form shows the broker\'s reason', async () => {
    await page.fill('#add input[name=stream_id]', 'bad');
    await page.fill('#add input[name=rtsp_url]', 'file:///etc/passwd');
    await page.click('#add button[type=submit]');
    await page.waitForFunction(() => document.querySelector('#message').className === 'error' && /not allowed/.test(document.querySelector('#message').textContent), null, { timeout: 5000 });
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

  await step('removing a stream through the page stops it', async () => {
    page.once('dialog', (d) => d.accept());
    await page.click('section[data-stream-id="added"] button.remove');
    await page.waitForFunction(() => !document.querySelector('section[data-stream-id="added"]'), null, { timeout: 5000 });
    const res = await fetch(`${stack.base}/api/streams/added`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    assert.equal(res.status, 404);
  });

  await step('the JS client example page plays (raw BGR over WebSocket)', async () => {
    const ex = await context.newPage();
    await ex.goto(`${stack.base}/web/client_example.html`);
    await ex.fill('#stream', 'second');
    await ex.selectOption('#format', 'raw');
    await ex.fill('#token', TOKEN);
    await ex.fill('#width', '320');
    await ex.fill('#height', '240');
    await ex.click('#connect');
    await ex.waitForFunction(() => /frames ([5-9]|\d\d+)/.test(document.querySelector('#info').textContent), null, { timeout: 10000 });
    assert.match(await ex.textContent('#info'), /320x240 bgr24/);
    await changes(ex, '#canvas', 'example raw');
    await ex.click('#disconnect');
    await ex.close();
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
  await stack.stop();
  reactServer.close();
}

if (failures) {
  console.log(`\n${failures} failed; gateway/broker log tail:\n${stack.logs.slice(-30).join('')}`);
  process.exit(1);
}
console.log(`\nall passed; screenshots in ${artifacts}`);
