// RTSPStreamClient: the browser (and Wails) client of the framebroker gateway.
//
// An ES module with the original Go server's client API:
//
//   import { RTSPStreamClient } from '/web/js_client.js';
//   const client = new RTSPStreamClient('ws://localhost:8091', 'camera1');
//   await client.startStream('rtsp://camera/stream1', 640, 480);
//   client.onFrame((frame) => client.drawTo(canvas, frame));
//   client.connect();
//   ...
//   client.disconnect();
//
// Frames arrive over `WS /ws/{id}`. With `format: 'jpeg'` (the default here)
// each message is an FBJ1 header + JPEG (see web-gateway/README.md); with
// `format: 'raw'` each message is the raw BGR24 pixels, as the original server
// sent them. The socket is reopened with exponential backoff when it drops,
// until disconnect() is called.

const FBJ1 = 0x314a4246; // "FBJ1" read as a little-endian u32

export class RTSPStreamClient {
  /**
   * @param {string} serverUrl ws(s):// or http(s):// base of the gateway, e.g. ws://localhost:8091
   * @param {string} streamId
   * @param {object} [options]
   * @param {'jpeg'|'raw'} [options.format='jpeg']
   * @param {number} [options.quality] JPEG quality 1-100
   * @param {number} [options.scale] JPEG downscale: 1, 0.5, 0.25, 0.125
   * @param {string} [options.token] access token of the gateway
   * @param {number} [options.width] raw frame width (else asked from the stats)
   * @param {number} [options.height]
   * @param {boolean} [options.reconnect=true] reopen the socket when it drops
   * @param {number} [options.minBackoffMs=500]
   * @param {number} [options.maxBackoffMs=10000]
   */
  constructor(serverUrl, streamId, options = {}) {
    const base = String(serverUrl || '').replace(/\/+$/, '');
    if (!/^(ws|wss|http|https):\/\//.test(base)) {
      throw new Error(`serverUrl must start with ws://, wss://, http:// or https://, got ${serverUrl}`);
    }
    this.serverUrl = base;
    this.streamId = streamId;
    this.options = {
      format: 'jpeg',
      reconnect: true,
      minBackoffMs: 500,
      maxBackoffMs: 10000,
      ...options,
    };
    this.width = options.width || 0;
    this.height = options.height || 0;
    this.ws = null;
    this.frameHandlers = new Set();
    this.statusHandlers = new Set();
    this.wanted = false;
    this.backoffMs = this.options.minBackoffMs;
    this.retryTimer = null;
    this.framesReceived = 0;
    this.lastFrameNumber = 0;
    this.status = 'idle';
  }

  /** http(s):// base of the gateway. */
  httpBase() {
    return this.serverUrl.replace(/^ws/, 'http');
  }

  /** ws(s):// base of the gateway. */
  wsBase() {
    return this.serverUrl.replace(/^http/, 'ws');
  }

  headers(extra = {}) {
    const h = { ...extra };
    if (this.options.token) h.Authorization = `Bearer ${this.options.token}`;
    return h;
  }

  async request(method, path, body) {
    const init = { method, headers: this.headers(body ? { 'Content-Type': 'application/json' } : {}) };
    if (body) init.body = JSON.stringify(body);
    const res = await fetch(this.httpBase() + path, init);
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = { error: text };
    }
    if (!res.ok) {
      const err = new Error((data && data.error) || `${method} ${path}: HTTP ${res.status}`);
      err.status = res.status;
      throw err;
    }
    return data;
  }

  /**
   * Starts the stream on the gateway (an already running one is fine).
   * @returns {Promise<object>} the stream as the gateway answers it
   */
  async startStream(rtspUrl, width, height) {
    const body = { stream_id: this.streamId, rtsp_url: rtspUrl };
    if (width) body.width = width;
    if (height) body.height = height;
    const s = await this.request('POST', '/api/streams', body);
    if (s && s.width && s.height) {
      this.width = s.width;
      this.height = s.height;
    }
    return s;
  }

  /** Stops the stream on the gateway (for every client). */
  async stopStream() {
    return this.request('DELETE', `/api/streams/${encodeURIComponent(this.streamId)}`);
  }

  /** The stream's counters. */
  async getStats() {
    const s = await this.request('GET', `/api/streams/${encodeURIComponent(this.streamId)}/stats`);
    if (s && s.width && s.height) {
      this.width = s.width;
      this.height = s.height;
    }
    return s;
  }

  /** Calls `handler(frame)` for each frame; returns a function that unsubscribes. */
  onFrame(handler) {
    this.frameHandlers.add(handler);
    return () => this.frameHandlers.delete(handler);
  }

  /** Calls `handler(status, detail)` on 'connecting', 'open', 'closed', 'reconnecting', 'error'. */
  onStatus(handler) {
    this.statusHandlers.add(handler);
    return () => this.statusHandlers.delete(handler);
  }

  setStatus(status, detail) {
    this.status = status;
    for (const h of this.statusHandlers) {
      try {
        h(status, detail);
      } catch (e) {
        console.error(e);
      }
    }
  }

  socketUrl() {
    const q = new URLSearchParams();
    if (this.options.format === 'jpeg') q.set('format', 'jpeg');
    if (this.options.quality) q.set('quality', String(this.options.quality));
    if (this.options.scale) q.set('scale', String(this.options.scale));
    if (this.options.token) q.set('token', this.options.token);
    const qs = q.toString();
    return `${this.wsBase()}/ws/${encodeURIComponent(this.streamId)}${qs ? `?${qs}` : ''}`;
  }

  /** Opens the WebSocket (and keeps it open until disconnect()). */
  connect() {
    this.wanted = true;
    clearTimeout(this.retryTimer);
    if (this.ws && this.ws.readyState <= 1) return;
    if (this.options.format === 'raw' && !(this.width && this.height)) {
      // Raw messages carry no size: learn it first.
      this.getStats().catch(() => {});
    }
    this.setStatus('connecting');
    const ws = new WebSocket(this.socketUrl());
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    ws.onopen = () => this.setStatus('open');
    ws.onmessage = (ev) => {
      if (!(ev.data instanceof ArrayBuffer)) return;
      const frame = this.parse(ev.data);
      if (!frame) return;
      this.backoffMs = this.options.minBackoffMs;
      this.framesReceived += 1;
      if (frame.frameNumber) this.lastFrameNumber = frame.frameNumber;
      for (const h of this.frameHandlers) {
        try {
          h(frame);
        } catch (e) {
          console.error(e);
        }
      }
    };
    ws.onerror = () => this.setStatus('error', 'websocket error');
    ws.onclose = (ev) => {
      if (this.ws === ws) this.ws = null;
      const reason = ev.reason || `code ${ev.code}`;
      if (!this.wanted || !this.options.reconnect) {
        this.setStatus('closed', reason);
        return;
      }
      const wait = this.backoffMs;
      this.backoffMs = Math.min(this.backoffMs * 2, this.options.maxBackoffMs);
      this.setStatus('reconnecting', `${reason}; retrying in ${wait} ms`);
      this.retryTimer = setTimeout(() => {
        if (this.wanted) this.connect();
      }, wait);
    };
  }

  /** Closes the socket and stops reconnecting. */
  disconnect() {
    this.wanted = false;
    clearTimeout(this.retryTimer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000, 'client disconnect');
    }
    this.setStatus('closed', 'disconnected');
  }

  /** A frame object from one WebSocket message. */
  parse(buf) {
    const jpeg = RTSPStreamClient.parseJpegMessage(buf);
    if (jpeg) return jpeg;
    const data = new Uint8Array(buf);
    if (this.width && this.height && data.length !== this.width * this.height * 3) {
      // The size changed (or was never known): ask again, skip this one.
      this.getStats().catch(() => {});
      return null;
    }
    return {
      format: 'bgr24',
      width: this.width,
      height: this.height,
      frameNumber: 0,
      captureTimeNs: 0n,
      captureTimeMs: 0,
      data,
    };
  }

  /** Parses an FBJ1 message; null when `buf` is not one. */
  static parseJpegMessage(buf) {
    if (buf.byteLength < 40) return null;
    const v = new DataView(buf);
    if (v.getUint32(0, true) !== FBJ1) return null;
    const headerLen = v.getUint32(4, true);
    if (headerLen < 40 || headerLen > buf.byteLength) return null;
    const captureTimeNs = v.getBigUint64(16, true);
    const len = v.getUint32(36, true);
    if (headerLen + len !== buf.byteLength) return null;
    return {
      format: v.getUint32(32, true) === 1 ? 'jpeg' : 'unknown',
      frameNumber: Number(v.getBigUint64(8, true)),
      captureTimeNs,
      captureTimeMs: Number(captureTimeNs / 1000000n),
      width: v.getUint32(24, true),
      height: v.getUint32(28, true),
      data: new Uint8Array(buf, headerLen, len),
    };
  }

  /** RGBA ImageData of packed BGR24 pixels. */
  static bgrToImageData(bgr, width, height) {
    const out = new ImageData(width, height);
    const px = out.data;
    for (let i = 0, j = 0; i < bgr.length; i += 3, j += 4) {
      px[j] = bgr[i + 2];
      px[j + 1] = bgr[i + 1];
      px[j + 2] = bgr[i];
      px[j + 3] = 255;
    }
    return out;
  }

  /** Draws a frame on a canvas (resizing the canvas to the frame). */
  async drawTo(canvas, frame) {
    const ctx = canvas.getContext('2d');
    if (frame.format === 'jpeg') {
      const bitmap = await createImageBitmap(new Blob([frame.data], { type: 'image/jpeg' }));
      if (canvas.width !== bitmap.width) canvas.width = bitmap.width;
      if (canvas.height !== bitmap.height) canvas.height = bitmap.height;
      ctx.drawImage(bitmap, 0, 0);
      bitmap.close();
    } else if (frame.format === 'bgr24' && frame.width && frame.height) {
      if (canvas.width !== frame.width) canvas.width = frame.width;
      if (canvas.height !== frame.height) canvas.height = frame.height;
      ctx.putImageData(RTSPStreamClient.bgrToImageData(frame.data, frame.width, frame.height), 0, 0);
    }
  }
}

export default RTSPStreamClient;
