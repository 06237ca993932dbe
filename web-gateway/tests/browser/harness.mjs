// Starts the real broker and gateway binaries (target/debug, built by
// `cargo build --workspace --bins`) on a private socket, segment prefix and
// loopback port, for the browser tests.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, readdirSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '../../..');
const targetDir = process.env.CARGO_TARGET_DIR
  ? path.resolve(process.env.CARGO_TARGET_DIR)
  : path.join(repoRoot, 'target');
export const bin = (name) => path.join(targetDir, process.env.PROFILE || 'debug', name);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

async function waitFor(what, fn, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (_) { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/**
 * Broker + gateway. `streams`: ID=URL strings started with the broker.
 * Returns { base, token, stop() }.
 */
export async function startStack({ streams = [], token = null, corsOrigins = [] } = {}) {
  for (const b of ['framebroker', 'framebroker-gateway']) {
    if (!existsSync(bin(b))) throw new Error(`${bin(b)} missing: run cargo build --workspace --bins`);
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fbgw-browser-'));
  const socket = path.join(dir, 'broker.sock');
  const prefix = `fbgwb${process.pid}-`;
  const logs = [];
  const broker = spawn(bin('framebroker'), ['serve', '--socket', socket, '--shm-prefix', prefix, ...streams.flatMap((s) => ['--stream', s])], { stdio: ['ignore', 'ignore', 'pipe'] });
  broker.stderr.on('data', (d) => logs.push(`[broker] ${d}`));
  await waitFor('the broker socket', () => existsSync(socket));
  const port = await freePort();
  const args = ['--socket', socket, '--listen', `127.0.0.1:${port}`, '--idle-ms', '2000'];
  if (token) args.push('--token', token);
  for (const o of corsOrigins) args.push('--cors-origin', o);
  const gateway = spawn(bin('framebroker-gateway'), args, { stdio: ['ignore', 'ignore', 'pipe'] });
  gateway.stderr.on('data', (d) => logs.push(`[gateway] ${d}`));
  const base = `http://127.0.0.1:${port}`;
  await waitFor('the gateway', async () => (await fetch(`${base}/healthz`)).ok);
  return {
    base,
    token,
    logs,
    async stop() {
      for (const p of [gateway, broker]) {
        if (p.exitCode === null) {
          p.kill('SIGTERM');
          await Promise.race([new Promise((r) => p.once('exit', r)), sleep(5000)]);
          if (p.exitCode === null) p.kill('SIGKILL');
        }
      }
      for (const f of readdirSync('/dev/shm')) if (f.startsWith(prefix)) { try { unlinkSync(`/dev/shm/${f}`); } catch (_) { /* gone */ } }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Chromium flags that work as root on a machine without network. */
export function chromiumArgs(userDataDir) {
  return [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    `--user-data-dir=${userDataDir}`,
  ];
}

/** Serves the files of `dir` on 127.0.0.1:`port` (for the Vite-built React page). */
export async function serveStatic(dir, port) {
  const http = await import('node:http');
  const { readFile } = await import('node:fs/promises');
  const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css' };
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    const file = path.join(dir, url.pathname === '/' ? 'index.html' : path.normalize(url.pathname));
    if (!file.startsWith(dir)) { res.writeHead(403).end(); return; }
    try {
      const body = await readFile(file);
      res.writeHead(200, { 'Content-Type': types[path.extname(file)] || 'application/octet-stream' }).end(body);
    } catch (_) {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return server;
}
