// RTSPStreamClient: the browser (and Wails) client of the framebroker gateway.
//
// A plain script with the original Go server's client API, so that a page
// written for the original works unchanged:
//
//   <script src="js_client.js"></script>            <!-- or /static/js_client.js -->
//   <script>
//     const client = new RTSPStreamClient('ws://localhost:8091');
//     client.setupCanvas(document.querySelector('canvas'));   // frames are drawn there
//     const r = await client.startStreamWithURL('rtsp://camera/stream1', 640, 480);
//     if (r.success) client.connect();
//     ...
//     const s = await client.stopStream();   // { success: false, conflict: true, clientCount } while others watch
//     if (s.conflict) await client.forceStopStream();
//   </script>
//
// From an ES module: `import '/web/js_client.js';` then use `RTSPStreamClient`
// (the script defines it on the global object; it exports nothing). CommonJS:
// `require('./js_client.js').RTSPStreamClient`.
//
// Methods of the original, with its arguments and results: setupCanvas,
// startStreamWithURL, startStream, stopStream, forceStopStream, getStreamStats,
// listStreams, connect, disconnect, onFrame, onError, onConnect, onDisconnect,
// getStats, resetStats, getConnectionStatus, handleFrame, renderToCanvas,
// startHeartbeat, stopHeartbeat, scheduleReconnect. onFrame's callback gets
// (frameData, width, height, stats) as before, and the frame object as a fifth
// argument. The start methods also take width 'native' (the camera's own size;
// the original's default stays 640x480). Ours besides: options (token, format,
// quality, scale), pollFrame()
// (HTTP, paced with ?after=), onStatus, drawTo, parseJpegMessage.
//
// Frames arrive over `WS /ws/{id}`: by default the raw BGR24 pixels, as the
// original sent them; with `format: 'jpeg'` each message is an FBJ1 header + a
// JPEG (see web-gateway/README.md), a tenth of the bytes. The socket is reopened
// with backoff when it drops (not after the stream was stopped, close code
// 1000), until disconnect() or maxReconnectAttempts failures in a row.

(function (root) {
  'use strict';

  const FBJ1 = 0x314a4246; // "FBJ1" read as a little-endian u32

  function freshStats() {
    return {
      framesReceived: 0,
      bytesReceived: 0,
      lastFrameTime: null,
      averageFps: 0,
      startTime: Date.now(),
      reconnectCount: 0,
    };
  }

  // A start request's size fields: width 'native' asks for the camera's own
  // size (native_size); otherwise width and height as given, 0 or absent
  // leaving the gateway's default (640x480, the original's).
  function sized(body, width, height) {
    if (width === 'native') return { ...body, native_size: true };
    const out = { ...body };
    if (width) out.width = width;
    if (height) out.height = height;
    return out;
  }

  class RTSPStreamClient {
    /**
     * @param {string} [serverUrl='ws://localhost:8091'] ws(s):// or http(s):// base of the gateway
     * @param {string} [streamId='camera1']
     * @param {object} [options]
     * @param {'raw'|'jpeg'} [options.format='raw'] what the WebSocket carries
     * @param {number} [options.quality] JPEG quality 1-100
     * @param {number} [options.scale] JPEG downscale: 1, 0.5, 0.25, 0.125
     * @param {string} [options.token] access token of the gateway
     * @param {number} [options.width] raw frame width (else asked from the stats)
     * @param {number} [options.height]
     * @param {boolean} [options.reconnect=true] reopen the socket when it drops
     * @param {number} [options.maxReconnectAttempts=Infinity] failures in a row before giving up
     */
    constructor(serverUrl = 'ws://localhost:8091', streamId = 'camera1', options = {}) {
      const base = String(serverUrl || '').replace(/\/+$/, '');
      if (!/^(ws|wss|http|https):\/\//.test(base)) {
        throw new Error(`serverUrl must start with ws://, wss://, http:// or https://, got ${serverUrl}`);
      }
      this.options = { format: 'raw', reconnect: true, minBackoffMs: 500, maxBackoffMs: 10000, ...options };
      // The original's fields.
      this.serverUrl = base.replace(/^http/, 'ws');
      this.httpServerUrl = base.replace(/^ws/, 'http');
      this.streamId = streamId;
      this.ws = null;
      this.canvas = null;
      this.ctx = null;
      this.width = options.width || 0;
      this.height = options.height || 0;
      this.isConnected = false;
      this.isReconnecting = false;
      this.frameCallback = null;
      this.errorCallback = null;
      this.connectCallback = null;
      this.disconnectCallback = null;
      this.reconnectAttempts = 0;
      this.maxReconnectAttempts = this.options.maxReconnectAttempts ?? Infinity;
      this.reconnectDelay = this.options.minBackoffMs;
      this.heartbeatInterval = null;
      this.stats = freshStats();
      // Ours.
      this.frameHandlers = new Set();
      this.statusHandlers = new Set();
      this.wanted = false;
      this.retryTimer = null;
      this.sizeAsked = false;
      this.framesReceived = 0;
      this.lastFrameNumber = 0;
      this.status = 'idle';
    }

    /** http(s):// base of the gateway. */
    httpBase() {
      return this.httpServerUrl;
    }

    /** ws(s):// base of the gateway. */
    wsBase() {
      return this.serverUrl;
    }

    headers(extra = {}) {
      const h = { ...extra };
      if (this.options.token) h.Authorization = `Bearer ${this.options.token}`;
      return h;
    }

    streamPath(suffix = '') {
      return `/api/streams/${encodeURIComponent(this.streamId)}${suffix}`;
    }

    /** fetch() of the API: { status, ok, data } (data: the JSON answer, or { error: text }). */
    async call(method, path, body, timeoutMs = 10000) {
      const init = {
        method,
        headers: this.headers(body ? { 'Content-Type': 'application/json' } : {}),
        signal: AbortSignal.timeout(timeoutMs),
      };
      if (body) init.body = JSON.stringify(body);
      const res = await fetch(this.httpServerUrl + path, init);
      const text = await res.text();
      let data = null;
      try {
        data = text ? JSON.parse(text) : null;
      } catch (_) {
        data = { error: text };
      }
      return { status: res.status, ok: res.ok, data };
    }

    fail(what, message) {
      const msg = `${what}: ${message}`;
      if (this.errorCallback) this.errorCallback(msg);
      this.setStatus('error', msg);
      return { success: false, error: message };
    }

    /** Sets the canvas frames are drawn on. */
    setupCanvas(canvasElement) {
      this.canvas = canvasElement;
      this.ctx = canvasElement.getContext('2d');
      if (this.width && this.height) {
        this.canvas.width = this.width;
        this.canvas.height = this.height;
      }
    }

    rememberSize(width, height) {
      if (!(Number.isInteger(width) && width > 0 && Number.isInteger(height) && height > 0)) return;
      this.width = width;
      this.height = height;
      if (this.canvas && (this.canvas.width !== width || this.canvas.height !== height)) {
        this.canvas.width = width;
        this.canvas.height = height;
      }
    }

    async start(path, payload, width, height) {
      this.rememberSize(width, height);
      try {
        const r = await this.call('POST', path, payload);
        if (!r.ok) throw new Error(`HTTP ${r.status}: ${(r.data && r.data.error) || ''}`);
        const s = r.data;
        this.streamId = s.stream_id;
        this.rememberSize(s.width, s.height);
        return {
          ...s,
          success: true,
          streamId: s.stream_id,
          message: s.message,
          rtspUrl: s.rtsp_url,
          width: s.width,
          height: s.height,
        };
      } catch (e) {
        return this.fail('Failed to start stream', e.message);
      }
    }

    /**
     * Starts a stream under the id the gateway derives from the URL (the
     * original's "stream_" + MD5 scheme); this client then uses that id.
     * Size as for startStream.
     * @param {string} rtspUrl
     * @param {number|'native'} [width=640]
     * @param {number} [height=480]
     * @returns {Promise<{success, streamId, message, rtspUrl, width, height}|{success: false, error}>}
     */
    async startStreamWithURL(rtspUrl, width = 640, height = 480) {
      return this.start('/api/streams/start-with-url', sized({ rtsp_url: rtspUrl }, width, height), width, height);
    }

    /**
     * Starts the stream under this client's id (an already running one is fine).
     * As the original: width or height 0 is the gateway's default (640 or 480);
     * width 'native' (height left out): the camera's own size.
     * @param {string} rtspUrl
     * @param {number|'native'} [width=640]
     * @param {number} [height=480]
     * @returns {Promise<{success, message, streamId}|{success: false, error}>}
     */
    async startStream(rtspUrl, width = 640, height = 480) {
      const body = sized({ stream_id: this.streamId, rtsp_url: rtspUrl }, width, height);
      return this.start('/api/streams', body, width, height);
    }

    /**
     * Stops the stream unless someone else watches it.
     * @returns {Promise<{success, message}|{success: false, error, clientCount, conflict: true}|{success: false, error}>}
     */
    async stopStream() {
      try {
        const r = await this.call('DELETE', this.streamPath(), null, 5000);
        if (r.ok) return { success: true, message: r.data.message };
        if (r.status === 409) {
          return { success: false, error: r.data.error, clientCount: r.data.client_count, conflict: true };
        }
        if (r.status === 404) return { success: true, message: 'Stream not found (may have been stopped already)' };
        throw new Error(`HTTP ${r.status}: ${(r.data && r.data.error) || ''}`);
      } catch (e) {
        return { success: false, error: e.message };
      }
    }

    /** Stops the stream whoever watches (their sockets get a close frame). */
    async forceStopStream() {
      try {
        const r = await this.call('DELETE', this.streamPath('/force'), null, 5000);
        if (r.ok) return { success: true, message: r.data.message };
        if (r.status === 404) return { success: true, message: 'Stream not found' };
        throw new Error(`HTTP ${r.status}: ${(r.data && r.data.error) || ''}`);
      } catch (e) {
        return { success: false, error: e.message };
      }
    }

    /** The gateway's stats of the stream (is_running, frame_count, client_count, ...), or null. */
    async getStreamStats() {
      try {
        const r = await this.call('GET', this.streamPath('/stats'), null, 5000);
        if (!r.ok) return null;
        return r.data;
      } catch (_) {
        return null;
      }
    }

    /** Every stream on the gateway ([] on error). */
    async listStreams() {
      try {
        const r = await this.call('GET', '/api/streams', null, 5000);
        return (r.ok && r.data && r.data.streams) || [];
      } catch (_) {
        return [];
      }
    }

    /**
     * One frame over HTTP, the next one this client has not had (GET /frame?after=N):
     * { data, width, height, frameNumber, captureTimeNs, format }, or null when
     * none came within the gateway's wait (5 s).
     */
    async pollFrame() {
      const q = new URLSearchParams({ after: String(this.lastFrameNumber) });
      if (this.options.token) q.set('token', this.options.token);
      const res = await fetch(`${this.httpServerUrl}${this.streamPath('/frame')}?${q}`, {
        signal: AbortSignal.timeout(10000),
      });
      if (res.status === 204) return null;
      if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
      const data = new Uint8Array(await res.arrayBuffer());
      const frame = {
        format: res.headers.get('X-Pixel-Format') || 'bgr24',
        width: Number(res.headers.get('X-Frame-Width')),
        height: Number(res.headers.get('X-Frame-Height')),
        frameNumber: Number(res.headers.get('X-Frame-Number')),
        captureTimeNs: BigInt(res.headers.get('X-Frame-Timestamp') || '0'),
        data,
      };
      frame.captureTimeMs = Number(frame.captureTimeNs / 1000000n);
      this.rememberSize(frame.width, frame.height);
      this.deliver(frame);
      return frame;
    }

    /**
     * Calls `callback(frameData, width, height, stats, frame)` for each frame.
     * Returns a function that removes it.
     */
    onFrame(callback) {
      this.frameCallback = callback;
      this.frameHandlers.add(callback);
      return () => {
        this.frameHandlers.delete(callback);
        if (this.frameCallback === callback) this.frameCallback = null;
      };
    }

    onError(callback) {
      this.errorCallback = callback;
    }

    onConnect(callback) {
      this.connectCallback = callback;
    }

    onDisconnect(callback) {
      this.disconnectCallback = callback;
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
      return `${this.serverUrl}/ws/${encodeURIComponent(this.streamId)}${qs ? `?${qs}` : ''}`;
    }

    /** Opens the WebSocket (and keeps it open until disconnect()). */
    connect() {
      this.wanted = true;
      clearTimeout(this.retryTimer);
      if (this.ws && this.ws.readyState <= 1) return;
      if (this.options.format !== 'jpeg' && !(this.width && this.height)) {
        // Raw messages carry no size: learn it first.
        this.learnSize();
      }
      this.setStatus('connecting');
      const ws = new WebSocket(this.socketUrl());
      ws.binaryType = 'arraybuffer';
      this.ws = ws;
      ws.onopen = (event) => {
        this.isConnected = true;
        this.isReconnecting = false;
        this.startHeartbeat();
        this.setStatus('open');
        if (this.connectCallback) this.connectCallback(event);
      };
      ws.onmessage = (event) => this.handleFrame(event.data);
      ws.onerror = () => {
        this.setStatus('error', 'websocket error');
        if (this.errorCallback) this.errorCallback('WebSocket error: Connection failed');
      };
      ws.onclose = (event) => {
        if (this.ws !== ws) {
          // A socket disconnect() already let go of, closing late: the callback
          // hears of it (as the original's did), but the state, the heartbeat
          // and the reconnecting belong to the socket that replaced it, if any.
          if (this.disconnectCallback) this.disconnectCallback(event);
          return;
        }
        this.ws = null;
        this.isConnected = false;
        this.stopHeartbeat();
        const reason = event.reason || `code ${event.code}`;
        // 1000: the stream was stopped (or we closed): nothing to come back to.
        const again = this.wanted && this.options.reconnect && event.code !== 1000
          && this.reconnectAttempts < this.maxReconnectAttempts;
        if (again) this.isReconnecting = true;
        if (this.disconnectCallback) this.disconnectCallback(event);
        if (!again) {
          this.isReconnecting = false;
          this.setStatus('closed', reason);
          if (this.wanted && this.reconnectAttempts >= this.maxReconnectAttempts && this.errorCallback) {
            this.errorCallback('Max reconnection attempts reached');
          }
          return;
        }
        this.setStatus('reconnecting', `${reason}; retrying in ${this.reconnectDelay} ms`);
        this.scheduleReconnect();
      };
    }

    /** Reopens the socket after reconnectDelay, which then grows (up to maxBackoffMs). */
    scheduleReconnect() {
      clearTimeout(this.retryTimer);
      this.isReconnecting = true;
      this.reconnectAttempts += 1;
      this.stats.reconnectCount += 1;
      const wait = this.reconnectDelay;
      this.reconnectDelay = Math.min(this.reconnectDelay * 2, this.options.maxBackoffMs);
      this.retryTimer = setTimeout(() => {
        if (this.wanted) this.connect();
      }, wait);
    }

    /** Sends an empty message every 30 s (the original's heartbeat; the gateway pings too). */
    startHeartbeat() {
      this.stopHeartbeat();
      this.heartbeatInterval = setInterval(() => {
        if (this.ws && this.ws.readyState === 1) this.ws.send(new ArrayBuffer(0));
      }, 30000);
    }

    stopHeartbeat() {
      clearInterval(this.heartbeatInterval);
      this.heartbeatInterval = null;
    }

    /** Closes the socket and stops reconnecting. */
    disconnect() {
      this.wanted = false;
      this.isReconnecting = false;
      clearTimeout(this.retryTimer);
      this.stopHeartbeat();
      if (this.ws) {
        const ws = this.ws;
        this.ws = null;
        if (ws.readyState <= 1) ws.close(1000, 'Client disconnecting');
      }
      this.isConnected = false;
      this.setStatus('closed', 'disconnected');
    }

    /** Asks the stream's size (once at a time). */
    learnSize() {
      if (this.sizeAsked) return;
      this.sizeAsked = true;
      this.getStreamStats().then((s) => {
        this.sizeAsked = false;
        if (s) this.rememberSize(s.width, s.height);
      });
    }

    /** Handles one WebSocket message. */
    handleFrame(arrayBuffer) {
      if (!(arrayBuffer instanceof ArrayBuffer) || arrayBuffer.byteLength === 0) return;
      const frame = this.parse(arrayBuffer);
      if (frame) this.deliver(frame);
    }

    deliver(frame) {
      this.reconnectAttempts = 0;
      this.reconnectDelay = this.options.minBackoffMs;
      this.framesReceived += 1;
      if (frame.frameNumber) this.lastFrameNumber = frame.frameNumber;
      const now = Date.now();
      this.stats.framesReceived += 1;
      this.stats.bytesReceived += frame.data.length;
      this.stats.lastFrameTime = now;
      const elapsed = (now - this.stats.startTime) / 1000;
      if (elapsed > 0) this.stats.averageFps = this.stats.framesReceived / elapsed;
      if (this.canvas) {
        this.drawTo(this.canvas, frame).catch((e) => {
          if (this.errorCallback) this.errorCallback(`Frame rendering failed: ${e.message}`);
        });
      }
      for (const h of this.frameHandlers) {
        try {
          h(frame.data, frame.width, frame.height, this.stats, frame);
        } catch (e) {
          console.error('Frame callback error:', e);
        }
      }
    }

    /** A frame object from one WebSocket message; null for one of an unexpected size. */
    parse(buf) {
      const jpeg = RTSPStreamClient.parseJpegMessage(buf);
      if (jpeg) return jpeg;
      const data = new Uint8Array(buf);
      if (!(this.width && this.height) || data.length !== this.width * this.height * 3) {
        // The size changed (or was never known): ask again, skip this one.
        this.learnSize();
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

    /** The original's client statistics, with the connection's state. */
    getStats() {
      return {
        ...this.stats,
        isConnected: this.isConnected,
        isReconnecting: this.isReconnecting,
        reconnectAttempts: this.reconnectAttempts,
        streamId: this.streamId,
      };
    }

    resetStats() {
      this.stats = freshStats();
    }

    getConnectionStatus() {
      return {
        isConnected: this.isConnected,
        isReconnecting: this.isReconnecting,
        reconnectAttempts: this.reconnectAttempts,
        maxReconnectAttempts: this.maxReconnectAttempts,
        streamId: this.streamId,
        wsState: this.ws ? this.ws.readyState : null,
      };
    }

    /** Draws packed BGR24 pixels of this client's size on its canvas. */
    renderToCanvas(bgrData) {
      if (!this.ctx || !this.canvas) throw new Error('Canvas not initialized');
      this.ctx.putImageData(RTSPStreamClient.bgrToImageData(bgrData, this.width, this.height), 0, 0);
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
      const ctx = canvas === this.canvas && this.ctx ? this.ctx : canvas.getContext('2d');
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

  // The original's React hook, when React is loaded as a global.
  if (root.React && root.React.useState) {
    const { useState, useEffect, useRef, useCallback } = root.React;
    root.useRTSPStream = function useRTSPStream(serverUrl, streamId, options) {
      const [client] = useState(() => new RTSPStreamClient(serverUrl, streamId, options));
      const [isConnected, setIsConnected] = useState(false);
      const [error, setError] = useState(null);
      const [stats, setStats] = useState(null);
      const [serverStats, setServerStats] = useState(null);
      const canvasRef = useRef(null);
      useEffect(() => {
        if (canvasRef.current) client.setupCanvas(canvasRef.current);
        client.onConnect(() => { setIsConnected(true); setError(null); });
        client.onDisconnect(() => setIsConnected(false));
        client.onError((e) => setError(e));
        client.onFrame(() => setStats(client.getStats()));
        const t = setInterval(async () => {
          if (client.isConnected) setServerStats(await client.getStreamStats());
        }, 5000);
        return () => { clearInterval(t); client.disconnect(); };
      }, [client]);
      const startStream = useCallback(async (rtspUrl, width = 640, height = 480) => {
        const r = await client.startStreamWithURL(rtspUrl, width, height);
        if (r.success) client.connect(); else setError(r.error);
        return r;
      }, [client]);
      const stopStream = useCallback(async (force = false) => {
        client.disconnect();
        const r = force ? await client.forceStopStream() : await client.stopStream();
        if (!r.success) setError(r.error);
        return r;
      }, [client]);
      const reconnect = useCallback(() => { client.disconnect(); client.connect(); }, [client]);
      const getConnectionStatus = useCallback(() => client.getConnectionStatus(), [client]);
      const listStreams = useCallback(() => client.listStreams(), [client]);
      return {
        canvasRef, isConnected, isReconnecting: client.isReconnecting, error, stats, serverStats,
        startStream, stopStream, reconnect, getConnectionStatus, listStreams, client,
      };
    };
  }

  root.RTSPStreamClient = RTSPStreamClient;
  if (typeof module !== 'undefined' && module.exports) module.exports = { RTSPStreamClient };
}(typeof globalThis !== 'undefined' ? globalThis : window));
