// Resume (protocol §7) through the JS client against a real eventgate: the client keeps the
// last Position, resumes by itself after every reconnect and emits `recovered` or `gap`.
// Connections are cut through a small TCP proxy the test controls.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { EventGateClient } from '../eventgate-client.js';
import { startEventgate, startProxy, publish, waitFor, waitForState, quietLogger } from './helpers.mjs';

const clientOpts = (extra = {}) => ({
  WebSocket,
  logger: quietLogger,
  ackTimeout: 5000,
  backoff: { initial: 100, max: 300, factor: 2 },
  ...extra,
});

const seqEvents = (from, to) => {
  const events = [];
  for (let seq = from; seq < to; seq++) events.push({ source: 'resume.test', 'detail-type': 'tick', detail: { seq } });
  return events;
};

/** Collects `seq` of every event, plus `recovered` and `gap` emissions. */
function watch(client) {
  const seen = [];
  const recovered = [];
  const gaps = [];
  client.on('event', (event) => seen.push(event.detail.seq));
  client.on('recovered', (count) => recovered.push(count));
  client.on('gap', (reason) => gaps.push(reason));
  return { seen, recovered, gaps };
}

describe('resume', () => {
  let server;
  let proxy;
  before(async () => {
    server = await startEventgate({ keepAlive: '1s' });
    proxy = await startProxy(server.port);
  });
  after(async () => {
    await proxy?.close();
    await server?.stop();
  });

  test('a cut connection resumes: every event once, in order, and `recovered` with the count', async () => {
    const client = new EventGateClient(proxy.url, { apiKey: server.apiKey }, clientOpts({ keepAliveInterval: 1000 }));
    const log = watch(client);
    try {
      await client.subscribe('ticks', { source: ['resume.test'] });
      await publish(server.httpUrl, seqEvents(0, 5));
      await waitFor(() => log.seen.length === 5, { what: 'the first 5 events' });
      assert.match(client.position, /^[0-9a-f]{16}:\d+$/);

      proxy.down();
      await waitForState(client, 'reconnecting', 5000);
      await publish(server.httpUrl, seqEvents(5, 25));
      proxy.up();
      await waitFor(() => log.recovered.length === 1, { what: 'recovered' });
      assert.deepEqual(log.recovered, [20]);
      await publish(server.httpUrl, seqEvents(25, 30));
      await waitFor(() => log.seen.length >= 30, { what: 'all 30 events' });
      await sleep(200);
      assert.deepEqual(log.seen, [...Array(30).keys()], 'every event exactly once, in order');
      assert.deepEqual(log.gaps, []);
    } finally {
      client.close();
    }
  });

  test('the position survives a "page reload" through sessionStorage', async () => {
    const storage = new Map();
    const sessionStorage = {
      getItem: (k) => (storage.has(k) ? storage.get(k) : null),
      setItem: (k, v) => storage.set(k, String(v)),
      removeItem: (k) => storage.delete(k),
    };
    const opts = clientOpts({ positionStorage: sessionStorage, keepAliveInterval: 1000 });
    const first = new EventGateClient(proxy.url, { apiKey: server.apiKey }, opts);
    const firstLog = watch(first);
    await first.subscribe('ticks', { source: ['resume.test'] });
    await publish(server.httpUrl, seqEvents(100, 103));
    await waitFor(() => firstLog.seen.length === 3, { what: 'the first page\'s events' });
    first.close();
    assert.equal([...storage.values()][0], first.position);

    await publish(server.httpUrl, seqEvents(103, 107));
    const second = new EventGateClient(proxy.url, { apiKey: server.apiKey }, opts);
    const log = watch(second);
    try {
      second.subscribe('ticks', { source: ['resume.test'] });
      await waitFor(() => log.recovered.length === 1, { what: 'recovered after reload' });
      assert.deepEqual(log.recovered, [4]);
      await waitFor(() => log.seen.length === 4, { what: 'the missed events' });
      assert.deepEqual(log.seen, [103, 104, 105, 106]);
    } finally {
      second.close();
    }
  });
});

describe('gap', () => {
  test('after a gateway restart the old position is from another epoch: `gap`, then live events', async () => {
    let server = await startEventgate({ keepAlive: '1s' });
    const port = server.port;
    const client = new EventGateClient(server.url, { apiKey: server.apiKey }, clientOpts({ keepAliveInterval: 1000 }));
    const log = watch(client);
    try {
      await client.subscribe('ticks', { source: ['resume.test'] });
      await publish(server.httpUrl, seqEvents(0, 2));
      await waitFor(() => log.seen.length === 2, { what: 'events before the restart' });
      await server.stop('SIGKILL');
      await waitForState(client, 'reconnecting', 5000);
      server = await startEventgate({ port, keepAlive: '1s' });
      await waitFor(() => log.gaps.length === 1, { what: 'gap', timeout: 15_000 });
      assert.match(log.gaps[0], /^position expired: .*another epoch/);
      assert.deepEqual(log.recovered, []);
      await publish(server.httpUrl, seqEvents(2, 3));
      await waitFor(() => log.seen.length === 3, { what: 'a live event after the gap' });
      assert.match(client.position, /^[0-9a-f]{16}:1$/, 'the new epoch\'s position');
    } finally {
      client.close();
      await server.stop();
    }
  });

  test('more missed events than history.max_replay: `gap` with the reason', async () => {
    const server = await startEventgate({ keepAlive: '1s', env: { EVENTGATE_HISTORY_MAX_REPLAY: '3' } });
    const proxy = await startProxy(server.port);
    const client = new EventGateClient(proxy.url, { apiKey: server.apiKey }, clientOpts({ keepAliveInterval: 1000 }));
    const log = watch(client);
    try {
      await client.subscribe('ticks', { source: ['resume.test'] });
      await publish(server.httpUrl, seqEvents(0, 1));
      await waitFor(() => log.seen.length === 1, { what: 'the first event' });
      proxy.down();
      await waitForState(client, 'reconnecting', 5000);
      await publish(server.httpUrl, seqEvents(1, 6));
      proxy.up();
      await waitFor(() => log.gaps.length === 1, { what: 'gap' });
      assert.match(log.gaps[0], /^too many missed events: /);
      assert.deepEqual(log.seen, [0], 'never a partial replay');
    } finally {
      client.close();
      await proxy.close();
      await server.stop();
    }
  });
});
