// RTSPStreamViewer: a React component showing one framebroker stream live.
//
// Props are the original Go server's component's:
//
//   <RTSPStreamViewer
//     serverUrl="ws://localhost:8091"
//     streamId="camera1"
//     rtspUrl="rtsp://admin:password@192.168.1.100:554/stream1"
//     width={640}
//     height={480}
//     autoStart={true}
//   />
//
// plus optional `token` (the gateway's access token), `format` ('jpeg', the
// default, or 'raw'), `quality`, `scale`, `onFrame(frame)` and `onError(error)`.
// With autoStart the component asks the gateway to start the stream (an already
// running one is fine), then shows its frames on a canvas over a WebSocket that
// reconnects with backoff. Unmounting disconnects; the stream keeps running for
// other clients. Below the picture, the original's two panels: the client's
// statistics (frames, bytes, average fps, last frame) and, after "Refresh
// stats", the server's (stream id, URL, running, client count, frame count,
// buffer size).

import React, { useEffect, useRef, useState } from 'react';
// A plain script: it defines globalThis.RTSPStreamClient (as the original's did).
import './js_client.js';

const { RTSPStreamClient } = globalThis;

function formatBytes(bytes) {
  if (!bytes) return '0 B';
  const units = ['B', 'KB', 'MB', 'GB'];
  const i = Math.min(units.length - 1, Math.floor(Math.log(bytes) / Math.log(1024)));
  return `${parseFloat((bytes / 1024 ** i).toFixed(2))} ${units[i]}`;
}

function Row({ label, children }) {
  return (
    <div className="stat-item" style={{ display: 'flex', justifyContent: 'space-between', gap: '1rem' }}>
      <label style={{ fontWeight: 'bold' }}>{label}</label>
      <span>{children}</span>
    </div>
  );
}

export default function RTSPStreamViewer({
  serverUrl,
  streamId,
  rtspUrl,
  width = 640,
  height = 480,
  autoStart = true,
  token,
  format = 'jpeg',
  quality,
  scale,
  onFrame,
  onError,
  style,
}) {
  const canvasRef = useRef(null);
  const clientRef = useRef(null);
  const [status, setStatus] = useState('idle');
  const [error, setError] = useState(null);
  const [frameNumber, setFrameNumber] = useState(0);
  const [fps, setFps] = useState(0);
  const [stats, setStats] = useState({ framesReceived: 0, bytesReceived: 0, averageFps: 0, lastFrameTime: null });
  const [serverStats, setServerStats] = useState(null);

  useEffect(() => {
    if (!serverUrl || !streamId) return undefined;
    let cancelled = false;
    let client;
    try {
      client = new RTSPStreamClient(serverUrl, streamId, { token, format, quality, scale, width, height });
    } catch (e) {
      setError(e.message);
      setStatus('error');
      if (onError) onError(e);
      return undefined;
    }
    clientRef.current = client;
    let drawing = false;
    let count = 0;
    let since = performance.now();
    const offFrame = client.onFrame(async (_data, _w, _h, clientStats, frame) => {
      if (!cancelled) setStats({ ...clientStats });
      if (cancelled || drawing || !canvasRef.current) return;
      drawing = true; // a slow page skips frames instead of queueing them
      try {
        await client.drawTo(canvasRef.current, frame);
        count += 1;
        const now = performance.now();
        if (now - since >= 1000) {
          setFps((count * 1000) / (now - since));
          count = 0;
          since = now;
        }
        setFrameNumber(frame.frameNumber);
        if (onFrame) onFrame(frame);
      } finally {
        drawing = false;
      }
    });
    const offStatus = client.onStatus((s, detail) => {
      if (cancelled) return;
      setStatus(s);
      if (s === 'reconnecting' || s === 'error') setError(detail || null);
      if (s === 'open') setError(null);
    });
    (async () => {
      try {
        if (autoStart && rtspUrl) {
          const r = await client.startStream(rtspUrl, width, height);
          if (!r.success) throw new Error(r.error);
        }
        if (!cancelled) client.connect();
      } catch (e) {
        if (cancelled) return;
        setError(e.message);
        setStatus('error');
        if (onError) onError(e);
      }
    })();
    return () => {
      cancelled = true;
      offFrame();
      offStatus();
      client.disconnect();
      clientRef.current = null;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [serverUrl, streamId, rtspUrl, width, height, autoStart, token, format, quality, scale]);

  const refreshServerStats = async () => {
    if (clientRef.current) setServerStats(await clientRef.current.getStreamStats());
  };
  const resetStats = () => {
    if (!clientRef.current) return;
    clientRef.current.resetStats();
    setStats({ framesReceived: 0, bytesReceived: 0, averageFps: 0, lastFrameTime: null });
  };

  return (
    <div className="rtsp-stream-viewer" data-stream-id={streamId} data-status={status} style={style}>
      <canvas
        ref={canvasRef}
        width={width}
        height={height}
        data-frame-number={frameNumber}
        style={{ width: '100%', maxWidth: width, background: '#000', display: 'block' }}
      />
      <div style={{ font: '12px monospace', padding: '4px 0' }}>
        {streamId}: {status}
        {frameNumber ? ` · frame ${frameNumber} · ${fps.toFixed(1)} fps` : ''}
        {error ? ` · ${error}` : ''}
      </div>
      <div className="control-buttons">
        <button type="button" className="refresh-stats" onClick={refreshServerStats}>Refresh Stats</button>
        <button type="button" className="reset-stats" onClick={resetStats}>Reset Client Stats</button>
      </div>
      <div className="stats-panels" style={{ display: 'grid', gridTemplateColumns: '1fr 1fr', gap: '1rem', font: '13px sans-serif' }}>
        <div className="stats-panel client-stats">
          <h4>Client Statistics</h4>
          <Row label="Frames Received:">{stats.framesReceived}</Row>
          <Row label="Data Received:">{formatBytes(stats.bytesReceived)}</Row>
          <Row label="Average FPS:">{stats.averageFps.toFixed(2)}</Row>
          <Row label="Last Frame:">{stats.lastFrameTime ? new Date(stats.lastFrameTime).toLocaleTimeString() : 'Never'}</Row>
        </div>
        {serverStats && (
          <div className="stats-panel server-stats">
            <h4>Server Statistics</h4>
            <Row label="Stream ID:">{serverStats.stream_id}</Row>
            <Row label="RTSP URL:"><span title={serverStats.rtsp_url}>{serverStats.rtsp_url}</span></Row>
            <Row label="Running:"><span className="is-running">{serverStats.is_running ? 'Yes' : 'No'}</span></Row>
            <Row label="Client Count:"><span className="client-count">{serverStats.client_count}</span></Row>
            <Row label="Frame Count:"><span className="frame-count">{serverStats.frame_count}</span></Row>
            <Row label="Buffer Size:"><span className="buffer-size">{serverStats.buffer_size}</span></Row>
          </div>
        )}
      </div>
    </div>
  );
}
