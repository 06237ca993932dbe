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
// other clients.

import React, { useEffect, useRef, useState } from 'react';
import { RTSPStreamClient } from './js_client.js';

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
    const offFrame = client.onFrame(async (frame) => {
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
        if (autoStart && rtspUrl) await client.startStream(rtspUrl, width, height);
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
    </div>
  );
}
