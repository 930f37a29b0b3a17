// EventGateClient against a real eventgate (target/release/eventgate, or $EVENTGATE_BIN).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import {
  EventGateClient,
  buildConnectUrl,
  resolveApiKey,
  base64EncodeUtf8,
  base64DecodeUtf8,
  randomUuid,
} from '../eventgate-client.js';
import {
  startEventgate, publish, waitFor, waitForState, eventSink, quietLogger, WEB_DEMO, STACK_ID,
} from './helpers.mjs';

const clientOpts = (extra = {}) => ({ WebSocket, logger: quietLogger, ackTimeout: 5000, ...extra });

describe('header and api key', () => {
  test('apiKey is used as-is, stackKey/appVersionId is combined', () => {
    assert.equal(resolveApiKey({ apiKey: 'abc=' }), 'abc=');
    const stackKey = base64EncodeUtf8('my-stack');
    assert.equal(resolveApiKey({ stackKey, appVersionId: 'v1' }), base64EncodeUtf8('v1:my-stack'));
    assert.equal(base64DecodeUtf8(resolveApiKey({ stackKey, appVersionId: 'v1' })), 'v1:my-stack');
    assert.throws(() => resolveApiKey({}), TypeError);
  });

  test('header is URL-encoded base64 JSON with Host (no port), ApiKey and Id', () => {
    const id = randomUuid();
    assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    const url = buildConnectUrl('ws://example.test:8080/', 'k+/=ü', id);
    const u = new URL(url);
    assert.equal(u.origin + u.pathname, 'ws://example.test:8080/');
    const raw = url.slice(url.indexOf('header=') + 7);
    assert.doesNotMatch(raw, /[+/=]/, 'base64 must be URL-encoded');
    const header = JSON.parse(base64DecodeUtf8(decodeURIComponent(raw)));
    assert.deepEqual(header, { Host: 'example.test', ApiKey: 'k+/=ü', Id: id });
    assert.match(buildConnectUrl('wss://h/path?x=1', 'k', id), /^wss:\/\/h\/path\?x=1&header=/);
  });

  test('each client instance gets its own Id', () => {
    const Fake = class { constructor() { this.readyState = 0; } close() {} };
    const a = new EventGateClient('ws://h/', { apiKey: 'k' }, { WebSocket: Fake, logger: null });
    const b = new EventGateClient('ws://h/', { apiKey: 'k' }, { WebSocket: Fake, logger: null });
    assert.notEqual(a.id, b.id);
    a.close();
    b.close();
  });
});

describe('against eventgate', () => {
  let server;
  before(async () => {
    server = await startEventgate({ keepAlive: '1s' });
  });
  after(async () => {
    await server?.stop();
  });

  test('wrong api key is rejected at upgrade (401/403 + JSON body)', async () => {
    const header = encodeURIComponent(
      base64EncodeUtf8(JSON.stringify({ Host: '127.0.0.1', ApiKey: 'nope', Id: randomUuid() })),
    );
    const status = await new Promise((resolve) => {
      const ws = new WebSocket(`${server.url}?header=${header}`);
      ws.on('unexpected-response', (_req, res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ code: res.statusCode, body }));
      });
      ws.on('open', () => {
        ws.terminate();
        resolve({ code: 101 });
      });
      ws.on('error', () => {});
    });
    assert.ok([401, 403].includes(status.code), `status ${status.code}`);
    assert.equal(typeof JSON.parse(status.body).error, 'string');
  });

  test('subscribe, receive, matched rules, unsubscribe', async () => {
    const client = new EventGateClient(server.url, { apiKey: server.apiKey }, clientOpts());
    const states = [];
    client.on('state', (s) => states.push(s));
    try {
      const users = eventSink();
      const all = eventSink();
      await client.subscribe(
        'users',
        { source: ['supermq.users'], 'detail-type': [{ prefix: 'user.' }] },
        users.handler,
      );
      // a pattern given as a JSON string works the same
      await client.subscribe('all-supermq', '{"source":[{"prefix":"supermq."}]}', all.handler);
      assert.equal(client.state, 'open');
      assert.deepEqual(states, ['open']);
      assert.deepEqual(client.rules.map((r) => [r.rule, r.status]), [['users', 'active'], ['all-supermq', 'active']]);

      const res = await publish(server.httpUrl, {
        source: 'supermq.users', 'detail-type': 'user.created', detail: { id: 'u-1', name: 'Ada' },
      });
      assert.equal(res.FailedEntryCount, 0);
      const got = await users.next();
      assert.equal(got.event.source, 'supermq.users');
      assert.equal(got.event['detail-type'], 'user.created');
      assert.deepEqual(got.event.detail, { id: 'u-1', name: 'Ada' });
      assert.deepEqual([...got.rules].sort(), ['all-supermq', 'users']);
      const got2 = await all.next();
      assert.deepEqual(got2.event.detail, { id: 'u-1', name: 'Ada' });

      // non-matching detail-type only reaches the broad rule
      await publish(server.httpUrl, { source: 'supermq.users', 'detail-type': 'group.created', detail: {} });
      const g = await all.next();
      assert.deepEqual(g.rules, ['all-supermq']);
      assert.equal(users.items.length, 0);

      await client.unsubscribe('users');
      assert.deepEqual(client.rules.map((r) => r.rule), ['all-supermq']);
      await publish(server.httpUrl, { source: 'supermq.users', 'detail-type': 'user.deleted', detail: { id: 'u-1' } });
      const after = await all.next();
      assert.deepEqual(after.rules, ['all-supermq']);
      await sleep(200);
      assert.equal(users.items.length, 0, 'unsubscribed rule must not receive events');
    } finally {
      client.close();
    }
    assert.equal(client.state, 'closed');
  });

  test('ack error rejects with the server message; rule is not active', async () => {
    const client = new EventGateClient(server.url, { apiKey: server.apiKey }, clientOpts());
    try {
      await assert.rejects(
        client.subscribe('bad', { detail: { x: 'not-an-array' } }, () => {}),
        (err) => {
          assert.match(err.message, /invalid pattern/i);
          assert.match(err.message, /detail\.x/);
          assert.equal(err.code, 'rejected');
          assert.equal(err.rule, 'bad');
          return true;
        },
      );
      await assert.rejects(client.subscribe('bad2', '{not json', () => {}), /invalid pattern/i);
      assert.deepEqual(client.rules, []);
      // the connection is still usable
      const sink = eventSink();
      await client.subscribe('ok', { source: ['after.error'] }, sink.handler);
      await publish(server.httpUrl, { source: 'after.error', 'detail-type': 't', detail: { n: 1 } });
      assert.deepEqual((await sink.next()).event.detail, { n: 1 });
    } finally {
      client.close();
    }
  });

  test('numeric range pattern on a detail field', async () => {
    const client = new EventGateClient(server.url, { apiKey: server.apiKey }, clientOpts());
    try {
      const sink = eventSink();
      await client.subscribe(
        'warm',
        { source: ['iot.sensors'], detail: { temperature: [{ numeric: ['>=', 20, '<', 30] }] } },
        sink.handler,
      );
      for (const t of [10, 25, 30, 20]) {
        await publish(server.httpUrl, { source: 'iot.sensors', 'detail-type': 'reading', detail: { temperature: t } });
      }
      assert.equal((await sink.next()).event.detail.temperature, 25);
      assert.equal((await sink.next()).event.detail.temperature, 20);
      await sleep(200);
      assert.equal(sink.items.length, 0);
    } finally {
      client.close();
    }
  });

  test('subscriptions made before the socket opens are queued and sent on open', async () => {
    const client = new EventGateClient(server.url, { apiKey: server.apiKey }, clientOpts());
    try {
      assert.equal(client.state, 'connecting');
      const sink = eventSink();
      const p = client.subscribe('early', { source: ['early.bird'] }, sink.handler);
      assert.deepEqual(client.rules.map((r) => r.status), ['pending']);
      await p;
      await publish(server.httpUrl, { source: 'early.bird', 'detail-type': 'x', detail: {} });
      assert.deepEqual((await sink.next()).rules, ['early']);
    } finally {
      client.close();
    }
  });

  test('stackKey + appVersionId credentials (LambdaSharp style) connect', async () => {
    // A server that accepts base64("<AppVersionId>:<StackId>") for a configured app version.
    const appVersionId = '5c1e0a9e-0000-4000-8000-00000000abcd';
    const versioned = await startEventgate({ env: { EVENTGATE_APP_VERSION_IDS: appVersionId } });
    const stackKey = base64EncodeUtf8(STACK_ID);
    const client = new EventGateClient(versioned.url, { stackKey, appVersionId }, clientOpts());
    try {
      assert.equal(client.apiKey, base64EncodeUtf8(`${appVersionId}:${STACK_ID}`));
      await client.subscribe('r', { source: ['stack.key'] }, () => {});
      assert.equal(client.state, 'open');
    } finally {
      client.close();
      await versioned.stop();
    }
  });

  test('wrong credentials: the client keeps retrying with backoff, never opens', async () => {
    const client = new EventGateClient(
      server.url,
      { stackKey: base64EncodeUtf8('other-stack'), appVersionId: 'v1' },
      clientOpts({ backoff: { initial: 50, max: 200 } }),
    );
    try {
      await waitForState(client, 'reconnecting', 5000);
      await sleep(600);
      assert.equal(client.stats.connects, 0);
      assert.ok(client.stats.reconnects >= 2, `reconnects: ${client.stats.reconnects}`);
    } finally {
      client.close();
    }
  });
});

describe('reconnect', () => {
  test('server killed and restarted on the same port: re-Hello, re-subscribe, events flow again', async () => {
    let server = await startEventgate({ keepAlive: '1s' });
    const port = server.port;
    const client = new EventGateClient(
      server.url,
      { apiKey: server.apiKey },
      clientOpts({ keepAliveInterval: 1000, backoff: { initial: 100, max: 500, factor: 2 } }),
    );
    const states = [];
    client.on('state', (s) => states.push(s));
    let sockets = 0;
    try {
      const sink = eventSink();
      const other = eventSink();
      await client.subscribe('lamassu', { source: ['lamassu.ca'], 'detail-type': [{ prefix: 'lamassu.certificate.' }] }, sink.handler);
      await client.subscribe('gone', { source: ['gone.rule'] }, other.handler);
      await client.unsubscribe('gone');
      await assert.rejects(client.subscribe('rejected', { source: 'not-an-array' }, () => {}));
      const firstId = client.id;
      await publish(server.httpUrl, { source: 'lamassu.ca', 'detail-type': 'lamassu.certificate.issued', detail: { serial: '01' } });
      assert.equal((await sink.next()).event.detail.serial, '01');

      await server.stop('SIGKILL');
      await waitForState(client, 'reconnecting', 5000);
      // a subscription made while the server is down is queued
      const queued = eventSink();
      const queuedP = client.subscribe('queued', { source: ['queued.rule'] }, queued.handler);

      server = await startEventgate({ port, keepAlive: '1s' });
      await waitForState(client, 'open', 15_000);
      await queuedP;
      assert.equal(client.id, firstId, 'the client keeps its Id across reconnects');
      assert.ok(client.stats.connects >= 2);
      assert.deepEqual(client.rules.map((r) => [r.rule, r.status]).sort(), [['lamassu', 'active'], ['queued', 'active']]);

      await publish(server.httpUrl, { source: 'lamassu.ca', 'detail-type': 'lamassu.certificate.revoked', detail: { serial: '02' } });
      const e = await sink.next();
      assert.equal(e.event.detail.serial, '02');
      assert.deepEqual(e.rules, ['lamassu']);
      await publish(server.httpUrl, { source: 'queued.rule', 'detail-type': 'x', detail: {} });
      assert.deepEqual((await queued.next()).rules, ['queued']);
      await publish(server.httpUrl, { source: 'gone.rule', 'detail-type': 'x', detail: {} });
      await sleep(300);
      assert.equal(other.items.length, 0, 'an unsubscribed rule is not re-subscribed');
      assert.deepEqual(states.slice(0, 3), ['open', 'reconnecting', 'open']);
      sockets = client.stats.connects;
    } finally {
      client.close();
      await server.stop();
    }
    assert.ok(sockets >= 2);
  });

  test('watchdog against eventgate: real KeepAlives keep it open; a frozen server (SIGSTOP) is left and rejoined', async () => {
    const server = await startEventgate({ keepAlive: '1s' });
    const client = new EventGateClient(
      server.url,
      { apiKey: server.apiKey },
      clientOpts({ keepAliveInterval: 1000, connectTimeout: 600, backoff: { initial: 100, max: 300 } }),
    );
    const states = [];
    client.on('state', (s) => states.push(s));
    let frozen = false;
    try {
      assert.equal(client.watchdogTimeout, 2500);
      const sink = eventSink();
      await client.subscribe('wd', { source: ['watchdog.real'] }, sink.handler);
      // Longer than the watchdog: only the server's KeepAlives keep this socket.
      await sleep(3500);
      assert.equal(client.state, 'open');
      assert.equal(client.stats.connects, 1, 'KeepAlive from eventgate must feed the watchdog');

      // Frozen, not dead: the TCP connection stays up, nothing arrives any more.
      server.proc.kill('SIGSTOP');
      frozen = true;
      const t0 = Date.now();
      await waitForState(client, 'reconnecting', 8000);
      const elapsed = Date.now() - t0;
      assert.ok(elapsed >= 1400 && elapsed < 5000, `watchdog fired after ${elapsed} ms`);
      // The kernel still accepts TCP for the frozen process, but the upgrade never completes:
      // the connect timeout abandons each attempt and the client keeps retrying.
      await sleep(1800);
      assert.equal(client.state, 'reconnecting');
      assert.ok(client.stats.reconnects >= 2, `reconnect attempts while frozen: ${client.stats.reconnects}`);
      assert.equal(client.stats.connects, 1);

      server.proc.kill('SIGCONT');
      frozen = false;
      await waitForState(client, 'open', 15_000);
      await waitFor(() => client.rules.every((r) => r.status === 'active'), { what: 'resubscribe' });
      assert.ok(client.stats.connects >= 2, 'a new socket was opened');
      await publish(server.httpUrl, { source: 'watchdog.real', 'detail-type': 'x', detail: { after: 'freeze' } });
      const e = await sink.next();
      assert.deepEqual(e.event.detail, { after: 'freeze' });
      assert.deepEqual(e.rules, ['wd']);
      assert.deepEqual(states.slice(0, 3), ['open', 'reconnecting', 'open']);
    } finally {
      if (frozen) server.proc.kill('SIGCONT');
      client.close();
      await server.stop();
    }
  });

  test('graceful shutdown (1001) also reconnects', async () => {
    let server = await startEventgate();
    const port = server.port;
    const client = new EventGateClient(
      server.url, { apiKey: server.apiKey }, clientOpts({ backoff: { initial: 100, max: 400 } }),
    );
    try {
      const sink = eventSink();
      await client.subscribe('r', { source: ['graceful'] }, sink.handler);
      await server.stop('SIGTERM');
      await waitForState(client, 'reconnecting', 5000);
      server = await startEventgate({ port });
      await waitForState(client, 'open', 15_000);
      await waitFor(() => client.rules.every((r) => r.status === 'active'), { what: 'resubscribe' });
      await publish(server.httpUrl, { source: 'graceful', 'detail-type': 'x', detail: { ok: true } });
      assert.deepEqual((await sink.next()).event.detail, { ok: true });
    } finally {
      client.close();
      await server.stop();
    }
  });
});

describe('close()', () => {
  let server;
  before(async () => {
    server = await startEventgate();
  });
  after(async () => {
    await server?.stop();
  });

  // Each scenario runs in a fresh node process that must exit on its own with code 0
  // (an unhandled rejection would exit 1; a leftover timer or socket would keep it alive).
  for (const scenario of ['after-events', 'pending-subscribe', 'while-reconnecting', 'while-connecting']) {
    test(`process exits by itself: ${scenario}`, async () => {
      const script = path.join(WEB_DEMO, 'test', 'fixtures', 'close-exits.mjs');
      const child = spawn(process.execPath, [script, scenario], {
        env: { ...process.env, EG_URL: server.url, EG_KEY: server.apiKey, EG_HTTP: server.httpUrl },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (out += d));
      const start = Date.now();
      const result = await new Promise((resolve) => {
        const t = setTimeout(() => {
          child.kill('SIGKILL');
          resolve({ code: 'timeout' });
        }, 15_000);
        child.on('exit', (code) => {
          clearTimeout(t);
          resolve({ code });
        });
      });
      assert.equal(result.code, 0, `child did not exit cleanly:\n${out}`);
      assert.match(out, /closed-ok/);
      assert.ok(Date.now() - start < 10_000);
    });
  }

  test('no active handles remain in-process after close()', async () => {
    const before = process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap');
    const client = new EventGateClient(server.url, { apiKey: server.apiKey }, clientOpts());
    await client.subscribe('x', { source: ['x'] }, () => {});
    client.close();
    // ws's graceful close handshake finishes shortly after
    await waitFor(() => {
      const now = process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap');
      return now.length <= before.length;
    }, { timeout: 5000, what: 'handles to be released' });
    // subscribing after close rejects instead of queueing forever
    await assert.rejects(client.subscribe('y', { source: ['y'] }, () => {}), /closed/);
  });
});

export { STACK_ID };
