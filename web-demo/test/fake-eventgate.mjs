#!/usr/bin/env node
// A tiny stand-in for eventgate, for tests that need to misbehave on purpose
// (e.g. a server that acks but never sends KeepAlive, for the client watchdog) and for
// developing the page without the Rust binary. It implements the same wire protocol
// with a small subset of EventBridge patterns. It is NOT the reference: the real tests
// run against target/release/eventgate.
//
// Library:  const srv = await startFakeServer({ keepAliveMs: 0 }); ... await srv.close();
// CLI:      node test/fake-eventgate.mjs serve --dev --listen 127.0.0.1:0 [--stack-id S]
//                 [--keepalive-interval 1s]   (prints the same banner as eventgate)

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { WebSocketServer } from 'ws';

const WEB_DEMO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DEMO_FILES = {
  'index.html': 'text/html; charset=utf-8',
  'eventgate-client.js': 'text/javascript; charset=utf-8',
  'eventgate-client.d.ts': 'text/plain; charset=utf-8',
  'demo.js': 'text/javascript; charset=utf-8',
  'demo.css': 'text/css; charset=utf-8',
};

function matchValue(cond, value) {
  if (cond === null || typeof cond !== 'object') return value === cond;
  if ('prefix' in cond) return typeof value === 'string' && value.startsWith(cond.prefix);
  if ('suffix' in cond) return typeof value === 'string' && value.endsWith(cond.suffix);
  if ('anything-but' in cond) {
    const v = cond['anything-but'];
    return value !== undefined && !(Array.isArray(v) ? v : [v]).includes(value);
  }
  if ('numeric' in cond) {
    if (typeof value !== 'number') return false;
    const n = cond.numeric;
    for (let i = 0; i < n.length; i += 2) {
      const [op, x] = [n[i], n[i + 1]];
      const ok = { '<': value < x, '<=': value <= x, '>': value > x, '>=': value >= x, '=': value === x }[op];
      if (!ok) return false;
    }
    return true;
  }
  return false;
}

export function matches(pattern, event) {
  for (const [key, cond] of Object.entries(pattern)) {
    const value = event == null ? undefined : event[key];
    if (Array.isArray(cond)) {
      const exists = cond.find((c) => c && typeof c === 'object' && 'exists' in c);
      if (exists) {
        if ((value !== undefined) !== exists.exists) return false;
        continue;
      }
      const values = Array.isArray(value) ? value : [value];
      if (!cond.some((c) => values.some((v) => matchValue(c, v)))) return false;
    } else if (!matches(cond, value)) return false;
  }
  return true;
}

export function validatePattern(pattern, at = '') {
  if (pattern === null || typeof pattern !== 'object' || Array.isArray(pattern)) {
    throw new Error(`${at || 'pattern'}: must be an object`);
  }
  for (const [k, v] of Object.entries(pattern)) {
    const p = at ? `${at}.${k}` : k;
    if (Array.isArray(v)) {
      if (v.length === 0) throw new Error(`${p}: empty array`);
      for (const c of v) {
        if (c && typeof c === 'object') {
          const op = Object.keys(c)[0];
          if (!['prefix', 'suffix', 'anything-but', 'numeric', 'exists'].includes(op)) {
            throw new Error(`${p}: unknown operator ${op}`);
          }
        }
      }
    } else if (v && typeof v === 'object') validatePattern(v, p);
    else throw new Error(`${p}: must be an array or an object`);
  }
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sendJson(res, status, obj) {
  res.writeHead(status, { 'content-type': 'application/json', 'access-control-allow-origin': '*' });
  res.end(JSON.stringify(obj));
}

/**
 * @param {{host?: string, port?: number, stackId?: string, keepAliveMs?: number,
 *          ackDelayMs?: number, dropAcks?: boolean}} opts
 */
export async function startFakeServer(opts = {}) {
  const stackId = opts.stackId ?? 'fake-stack';
  const apiKey = Buffer.from(`dev:${stackId}`).toString('base64');
  const clients = new Set();
  const wss = new WebSocketServer({ noServer: true });
  let url = '';
  let port = 0;

  const server = http.createServer(async (req, res) => {
    try {
      const u = new URL(req.url, 'http://x');
      if (req.method === 'OPTIONS') {
        res.writeHead(204, {
          'access-control-allow-origin': '*',
          'access-control-allow-methods': 'POST, GET',
          'access-control-allow-headers': 'content-type',
        });
        return res.end();
      }
      if (req.method === 'POST' && u.pathname === '/events') {
        let body = JSON.parse(await readBody(req));
        if (!Array.isArray(body)) body = [body];
        const entries = body.map((ev) => {
          const full = {
            version: '0', id: crypto.randomUUID(), account: '000000000000', time: new Date().toISOString(),
            region: 'local', resources: [], detail: {}, ...ev,
          };
          for (const c of clients) c.deliver(full);
          return { EventId: full.id };
        });
        return sendJson(res, 200, { FailedEntryCount: 0, Entries: entries });
      }
      if (req.method === 'POST' && u.pathname === '/test-pattern') {
        const body = JSON.parse(await readBody(req));
        try {
          const p = typeof body.EventPattern === 'string' ? JSON.parse(body.EventPattern) : body.EventPattern;
          const e = typeof body.Event === 'string' ? JSON.parse(body.Event) : body.Event;
          validatePattern(p);
          return sendJson(res, 200, { Result: matches(p, e) });
        } catch (err) {
          return sendJson(res, 400, { Error: String(err.message) });
        }
      }
      if (req.method === 'GET' && u.pathname === '/demo') {
        res.writeHead(308, { location: '/demo/' });
        return res.end();
      }
      if (req.method === 'GET' && u.pathname.startsWith('/demo/')) {
        const name = u.pathname.slice(6) || 'index.html';
        if (name === 'config.json') {
          return sendJson(res, 200, { url, apiKey, ingestUrl: `http://127.0.0.1:${port}/events` });
        }
        if (DEMO_FILES[name]) {
          res.writeHead(200, { 'content-type': DEMO_FILES[name], 'cache-control': 'no-store' });
          return res.end(fs.readFileSync(path.join(WEB_DEMO, name)));
        }
      }
      sendJson(res, 404, { error: 'not found' });
    } catch (err) {
      sendJson(res, 400, { error: String(err.message) });
    }
  });

  server.on('upgrade', (req, socket, head) => {
    const reject = (status, error) => {
      const body = JSON.stringify({ error });
      socket.end(`HTTP/1.1 ${status} Rejected\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`);
    };
    let header;
    try {
      const raw = new URL(req.url, 'http://x').searchParams.get('header');
      header = JSON.parse(Buffer.from(raw, 'base64').toString('utf8'));
    } catch {
      return reject(400, 'missing or malformed header');
    }
    if (header.ApiKey !== apiKey) return reject(401, 'invalid api key');
    if (!header.Host || !header.Id) return reject(400, 'missing Host or Id');
    wss.handleUpgrade(req, socket, head, (ws) => onConnection(ws, header));
  });

  function onConnection(ws, header) {
    const rules = new Map();
    let hello = false;
    const send = (obj) => ws.readyState === 1 && ws.send(JSON.stringify(obj));
    const ack = (requestId, error) => {
      if (opts.dropAcks) return;
      const msg = error
        ? { Action: 'Ack', RequestId: requestId, Status: 'Error', Message: error }
        : { Action: 'Ack', RequestId: requestId, Status: 'Ok' };
      if (opts.ackDelayMs) setTimeout(() => send(msg), opts.ackDelayMs);
      else send(msg);
    };
    const client = {
      id: header.Id,
      ws,
      deliver(event) {
        const matched = [...rules].filter(([, p]) => matches(p, event)).map(([r]) => r);
        if (matched.length) {
          send({
            Action: 'Event', RequestId: crypto.randomUUID(), Rules: matched,
            Source: event.source, Type: event['detail-type'], Event: JSON.stringify(event),
          });
        }
      },
    };
    clients.add(client);
    const keepAlive = opts.keepAliveMs > 0
      ? setInterval(() => send({ Action: 'KeepAlive', RequestId: crypto.randomUUID() }), opts.keepAliveMs)
      : null;
    const helloTimer = setTimeout(() => !hello && ws.close(1008, 'no Hello'), 10_000);
    ws.on('message', (data) => {
      let msg;
      try {
        msg = JSON.parse(data.toString());
      } catch {
        return;
      }
      if (msg.Action === 'Hello') {
        hello = true;
        return ack(msg.RequestId);
      }
      if (!hello) return ws.close(1008, 'Hello first');
      if (msg.Action === 'Subscribe') {
        try {
          const p = JSON.parse(msg.Pattern);
          validatePattern(p);
          rules.set(msg.Rule, p);
          ack(msg.RequestId);
        } catch (err) {
          ack(msg.RequestId, `invalid pattern: ${err.message}`);
        }
      } else if (msg.Action === 'Unsubscribe') {
        rules.delete(msg.Rule);
        ack(msg.RequestId);
      }
    });
    ws.on('close', () => {
      clients.delete(client);
      clearInterval(keepAlive);
      clearTimeout(helloTimer);
    });
    ws.on('error', () => {});
  }

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', resolve);
  });
  port = server.address().port;
  url = `ws://127.0.0.1:${port}/`;
  return {
    url,
    port,
    apiKey,
    httpUrl: `http://127.0.0.1:${port}`,
    clients,
    /** Publish an event to every matching client. */
    publish(event) {
      for (const c of clients) c.deliver({ detail: {}, ...event });
    },
    async close() {
      for (const c of clients) c.ws.terminate();
      wss.close();
      server.closeAllConnections?.();
      await new Promise((r) => server.close(() => r()));
    },
  };
}

// CLI mode, mimicking `eventgate serve --dev ...`
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const opt = (name, dflt) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : dflt;
  };
  const listen = opt('--listen', '127.0.0.1:0');
  const [host, portText] = [listen.slice(0, listen.lastIndexOf(':')), listen.slice(listen.lastIndexOf(':') + 1)];
  const ka = opt('--keepalive-interval', '30s');
  const keepAliveMs = ka.endsWith('ms') ? Number(ka.slice(0, -2)) : Number(ka.replace(/s$/, '')) * 1000;
  const srv = await startFakeServer({ host, port: Number(portText), stackId: opt('--stack-id'), keepAliveMs });
  console.log(`listening on http://127.0.0.1:${srv.port}`);
  console.log(`websocket url: ${srv.url}`);
  console.log(`api key: ${srv.apiKey}`);
  console.log(`demo: http://127.0.0.1:${srv.port}/demo/`);
  console.log(`publish: curl -X POST http://127.0.0.1:${srv.port}/events -H 'content-type: application/json' -d '{"source":"demo","detail-type":"hello","detail":{}}'`);
  const stop = async () => {
    await srv.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
