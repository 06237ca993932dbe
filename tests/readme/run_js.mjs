// Runs the README's ```js block in headless Chromium against a running gateway.
//
//   node run_js.mjs <gateway base, http://127.0.0.1:PORT> <file with the block> <frames wanted> <timeout ms>
//
// The block runs as a <script type="module"> of a page on the gateway's origin
// (a blank page with one <canvas>; /web/js_client.js, the API and the WebSocket
// are the real gateway's). The test
// (test_readme.py) has already substituted the gateway address and the camera URL
// and appended `window.readmeClient = client;`. Succeeds (exit 0, one JSON line
// on stdout) once the client has received <frames wanted> frames and the canvas
// shows a non-black picture of the frame's size; fails on any page error.
// playwright-core and the Chromium flags are those of web-gateway/tests/browser.

import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const browserTests = path.resolve(here, '../../web-gateway/tests/browser');
const require = createRequire(path.join(browserTests, 'package.json'));
const { chromium } = require('playwright-core');
const { chromiumArgs } = await import(path.join(browserTests, 'harness.mjs'));

const [base, blockFile, wantedArg, timeoutArg] = process.argv.slice(2);
const block = readFileSync(blockFile, 'utf8');
const wanted = Number(wantedArg || 5);
const timeoutMs = Number(timeoutArg || 30000);

const userData = mkdtempSync(path.join(os.tmpdir(), 'fb-readme-chromium-'));
const context = await chromium.launchPersistentContext(userData, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: chromiumArgs(userData).filter((a) => !a.startsWith('--user-data-dir') && a !== '--headless'),
  timeout: 30000,
});
const errors = [];
let result = null;
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on('pageerror', (e) => errors.push(`page error: ${e.stack || e}`));
  page.on('console', (m) => {
    // A failed request is reported below with its URL.
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) {
      errors.push(`console error: ${m.text()}`);
    }
  });
  page.on('response', (r) => {
    if (r.status() >= 400 && !r.url().endsWith('/favicon.ico')) errors.push(`HTTP ${r.status()} for ${r.url()}`);
  });
  // A document of the gateway's origin (loaded from the gateway itself, so
  // Chromium's local-network checks see a loopback page), then a blank page
  // with one canvas written into it.
  await page.goto(`${base}/healthz`, { timeout: 15000 });
  await page.setContent('<!doctype html><html><body><canvas></canvas></body></html>');
  await page.addScriptTag({ type: 'module', content: block });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    result = await page.evaluate((n) => {
      const c = window.readmeClient;
      const canvas = document.querySelector('canvas');
      if (!c || c.framesReceived < n || !canvas.width) return null;
      const ctx = canvas.getContext('2d');
      const d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
      let sum = 0;
      for (let i = 0; i < d.length; i += 4) sum += d[i] + d[i + 1] + d[i + 2];
      return {
        frames: c.framesReceived,
        lastFrameNumber: c.lastFrameNumber,
        status: c.status,
        canvasWidth: canvas.width,
        canvasHeight: canvas.height,
        mean: sum / (3 * (d.length / 4)),
      };
    }, wanted);
    if (result && result.mean > 5) break;
    if (errors.length || Date.now() > deadline) {
      const state = await page.evaluate(() => (window.readmeClient
        ? { frames: window.readmeClient.framesReceived, status: window.readmeClient.status }
        : 'window.readmeClient is not set: the block did not run to its end'));
      throw new Error(`no ${wanted} frames drawn within ${timeoutMs} ms: `
        + `${JSON.stringify(state)} ${JSON.stringify(result)}`);
    }
    await page.waitForTimeout(100);
  }
  await page.evaluate(() => window.readmeClient.disconnect());
} catch (e) {
  errors.push(String(e.stack || e));
} finally {
  await context.close();
  rmSync(userData, { recursive: true, force: true });
}
if (errors.length) {
  console.error(errors.join('\n'));
  process.exit(1);
}
console.log(JSON.stringify(result));
