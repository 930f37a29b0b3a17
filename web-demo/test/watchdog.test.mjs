// Watchdog and ack-timeout behaviour, against a tiny fake server that misbehaves on purpose
// (the real eventgate always sends KeepAlive and always acks).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { EventGateClient } from '../eventgate-client.js';
import { startFakeServer } from './fake-eventgate.mjs';
import { waitFor, waitForState, eventSink, quietLogger } from './helpers.mjs';

test('watchdog: acks but no KeepAlive -> reconnect on a NEW socket, rules re-subscribed', async () => {
  const server = await startFakeServer({ keepAliveMs: 0 });
  const seen = new Set();
  const client = new EventGateClient(server.url, { apiKey: server.apiKey }, {
    WebSocket, logger: quietLogger, keepAliveInterval: 200, backoff: { initial: 20, max: 50 },
  });
  const states = [];
  client.on('state', (s) => states.push(s));
  try {
    const sink = eventSink();
    await client.subscribe('wd', { source: ['wd'] }, sink.handler);
    for (const c of server.clients) seen.add(c.ws);
    assert.equal(client.watchdogTimeout, 500);
    const t0 = Date.now();
    await waitForState(client, 'reconnecting', 3000);
    const elapsed = Date.now() - t0;
    assert.ok(elapsed >= 300 && elapsed < 1500, `watchdog fired after ${elapsed} ms`);
    await waitForState(client, 'open', 3000);
    await waitFor(() => client.rules.every((r) => r.status === 'active') &&
      [...server.clients].some((c) => !seen.has(c.ws)), { what: 're-subscribe on a new socket' });
    assert.ok(client.stats.connects >= 2);
    server.publish({ source: 'wd', 'detail-type': 'x', detail: { n: 2 } });
    assert.deepEqual((await sink.next()).event.detail, { n: 2 });
    assert.deepEqual(states.slice(0, 3), ['open', 'reconnecting', 'open']);
  } finally {
    client.close();
    await server.close();
  }
});

test('watchdog: KeepAlive and Events keep the connection alive', async () => {
  const server = await startFakeServer({ keepAliveMs: 100 });
  const client = new EventGateClient(server.url, { apiKey: server.apiKey }, {
    WebSocket, logger: quietLogger, keepAliveInterval: 200,
  });
  try {
    await client.subscribe('wd', { source: ['wd'] }, () => {});
    await sleep(1500);
    assert.equal(client.state, 'open');
    assert.equal(client.stats.connects, 1);
  } finally {
    client.close();
    await server.close();
  }
});

test('ack timeout rejects subscribe and unsubscribe; the rule is not active', async () => {
  const server = await startFakeServer({ keepAliveMs: 100, dropAcks: true });
  // Hello is not acked either: connect to a server that acks Hello only
  await server.close();
  const ackHelloOnly = await startFakeServer({ keepAliveMs: 100 });
  const client = new EventGateClient(ackHelloOnly.url, { apiKey: ackHelloOnly.apiKey }, {
    WebSocket, logger: quietLogger, keepAliveInterval: 1000, ackTimeout: 300,
  });
  try {
    await waitForState(client, 'open', 3000);
    // from now on, swallow Subscribe/Unsubscribe frames on the server side
    for (const c of ackHelloOnly.clients) c.ws.removeAllListeners('message');
    const t0 = Date.now();
    await assert.rejects(client.subscribe('slow', { source: ['x'] }, () => {}), (err) => {
      assert.equal(err.code, 'timeout');
      assert.match(err.message, /no ack/);
      return true;
    });
    assert.ok(Date.now() - t0 >= 250);
    assert.deepEqual(client.rules, []);
    await assert.rejects(client.unsubscribe('slow'), /no ack/);
  } finally {
    client.close();
    await ackHelloOnly.close();
  }
});

test('Hello never acked -> reconnect after ackTimeout', async () => {
  const server = await startFakeServer({ keepAliveMs: 50, dropAcks: true });
  const client = new EventGateClient(server.url, { apiKey: server.apiKey }, {
    WebSocket, logger: quietLogger, ackTimeout: 200, backoff: { initial: 20, max: 50 },
  });
  try {
    const p = client.subscribe('queued', { source: ['q'] }, () => {});
    await waitFor(() => client.stats.connects >= 2, { timeout: 3000, what: 'second connection' });
    assert.notEqual(client.state, 'open');
    client.close();
    await assert.rejects(p, /closed/);
  } finally {
    client.close();
    await server.close();
  }
});

test('backoff: capped exponential growth with jitter', async () => {
  const { backoffDelay } = await import('../eventgate-client.js');
  const b = { initial: 100, max: 1000, factor: 2, jitter: 0.5 };
  assert.deepEqual([0, 1, 2, 3, 4, 10].map((a) => backoffDelay(a, b, () => 1)), [100, 200, 400, 800, 1000, 1000]);
  assert.deepEqual([0, 1, 2, 3, 4, 10].map((a) => backoffDelay(a, b, () => 0)), [50, 100, 200, 400, 500, 500]);
  assert.equal(backoffDelay(3, { ...b, jitter: 0 }, () => 0.3), 800);
  for (let i = 0; i < 50; i++) {
    const d = backoffDelay(2, b);
    assert.ok(d >= 200 && d <= 400, String(d));
  }
});

test('a refused port: reconnecting with growing delays; onstatechange and on(state) both fire', async () => {
  const srv = await startFakeServer();
  const port = srv.port;
  await srv.close(); // nobody listens there any more
  const seen = [];
  const client = new EventGateClient(`ws://127.0.0.1:${port}/`, { apiKey: 'x' }, {
    WebSocket, logger: quietLogger, backoff: { initial: 20, max: 80, factor: 2, jitter: 0 },
  });
  client.onstatechange = (s, prev) => seen.push(`${prev}->${s}`);
  const viaOn = [];
  client.on('state', (s) => viaOn.push(s));
  try {
    await waitFor(() => client.stats.reconnects >= 5, { timeout: 5000, what: '5 attempts' });
    assert.equal(client.state, 'reconnecting');
    assert.deepEqual(seen, ['connecting->reconnecting']);
    assert.deepEqual(viaOn, ['reconnecting']);
  } finally {
    client.close();
  }
  assert.deepEqual(viaOn, ['reconnecting', 'closed']);
  await sleep(200);
  assert.equal(client.stats.connects, 0);
});
