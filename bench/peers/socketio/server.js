// The side-by-side peer of bench/realtime (docs/performance.md, "Hub fan-out against
// Socket.IO"): one Socket.IO 4 server scaled out the usual way, with
// @socket.io/redis-adapter on a shared redis-server (each process its own pub and sub
// clients from the `redis` package). bench/realtime starts two of these on one Redis.
//
//   node server.js --port P --redis redis://127.0.0.1:R
//
// One HTTP server carries both:
//   - the Socket.IO endpoint (/socket.io/, WebSocket transport only, no per-message
//     compression), where a client's `join` event (with an ack) puts it in a room;
//   - the app's side, shaped like meshlet's local API so the load client posts the same
//     body to both: POST /broadcast {"to":{"room":R},"event":E,"data":D} → 202, emitted
//     to room R (or to everyone without a room) on every server through the adapter;
//     GET /stats → {"connections": sockets connected to this server}.
// Nothing is logged per connection or per message; errors go to stderr.
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

// Largest broadcast body accepted (the bench's are ~200 B).
const MAX_BODY = 1 << 20;

function arg(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  return at > 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

// The app's side of the server: broadcasts and the connection count.
function appHandler(io) {
  return (req, res) => {
    if (req.method === 'GET' && req.url === '/stats') {
      reply(res, 200, { connections: io.of('/').sockets.size });
      return;
    }
    if (req.method !== 'POST' || req.url !== '/broadcast') {
      reply(res, 404, { error: 'not found' });
      return;
    }
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      let msg;
      try {
        msg = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch (e) {
        reply(res, 400, { error: `body is not JSON: ${e.message}` });
        return;
      }
      const room = msg && msg.to && typeof msg.to.room === 'string' ? msg.to.room : null;
      const event = msg && typeof msg.event === 'string' ? msg.event : 'message';
      // Accepted first, then fanned out, as meshlet's 202 does: the app's next broadcast
      // is not held back while this one is written to every local socket, so both hubs
      // get the same offered rate and a fan-out's own delay shows in the latency.
      reply(res, 202, {});
      (room ? io.to(room) : io).emit(event, msg ? msg.data : null);
    });
  };
}

async function main() {
  const port = Number(arg('port', '0'));
  const redisUrl = arg('redis', 'redis://127.0.0.1:6379');
  const host = arg('host', '127.0.0.1');

  const pubClient = createClient({ url: redisUrl });
  const subClient = pubClient.duplicate();
  for (const c of [pubClient, subClient]) {
    c.on('error', (e) => console.error(`redis: ${e.message}`));
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);

  // Socket.IO takes over the server's request listener: it answers /socket.io/ and hands
  // every other request to the listener given here (the app's side).
  let io = null;
  const server = http.createServer((req, res) => appHandler(io)(req, res));
  io = new Server(server, {
    transports: ['websocket'],
    perMessageDeflate: false,
    httpCompression: false,
    serveClient: false,
    adapter: createAdapter(pubClient, subClient),
  });
  // The app's keep-alive connection may sit idle while thousands of clients come and go;
  // node's default closes it after 5 s.
  server.keepAliveTimeout = 0;
  io.on('connection', (socket) => {
    socket.on('join', (room, ack) => {
      if (typeof room !== 'string') return;
      socket.join(room);
      if (typeof ack === 'function') ack({ joined: room });
    });
  });

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  // The one line this server prints: where it listens (bench/realtime waits on /stats).
  console.log(JSON.stringify({ listening: server.address().port, pid: process.pid }));

  const stop = () => {
    io.close();
    Promise.allSettled([pubClient.quit(), subClient.quit()]).then(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => {
  console.error(`server: ${e.stack || e}`);
  process.exit(1);
});
