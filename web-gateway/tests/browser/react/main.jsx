// A page rendering the gateway's React component, as an app would. Props come
// from the page's query string: ?server=ws://host:port&stream=ID&url=SOURCE&width=W&height=H&token=T
import React from 'react';
import { createRoot } from 'react-dom/client';
import RTSPStreamViewer from '../../../web/RTSPStreamViewer.jsx';

const q = new URLSearchParams(location.search);
createRoot(document.getElementById('root')).render(
  <RTSPStreamViewer
    serverUrl={q.get('server')}
    streamId={q.get('stream')}
    rtspUrl={q.get('url') || undefined}
    width={Number(q.get('width') || 640)}
    height={Number(q.get('height') || 480)}
    autoStart={q.get('autostart') !== 'false'}
    token={q.get('token') || undefined}
  />,
);
