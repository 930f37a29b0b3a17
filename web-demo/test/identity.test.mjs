// The client's `token` option against a real eventgate in identity mode `token`: tokens in
// the header, automatic Refresh before expiry, and two tenants receiving disjoint events.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import {
  EventGateClient, buildConnectUrl, base64DecodeUtf8, tokenExpiry,
} from '../eventgate-client.js';
import { startEventgate, publish, eventSink, quietLogger } from './helpers.mjs';

const SECRET = 'a node-test HMAC secret of at least 32 bytes';

const b64url = (data) => Buffer.from(data).toString('base64url');

/** An HS256 JWT for `tenant`, valid for `seconds`. */
function sign(tenant, seconds) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const claims = b64url(JSON.stringify({ sub: `user-${tenant}`, tenant, exp: Math.floor(Date.now() / 1000) + seconds }));
  const signature = createHmac('sha256', SECRET).update(`${header}.${claims}`).digest('base64url');
  return `${header}.${claims}.${signature}`;
}

describe('token helpers', () => {
  test('tokenExpiry reads exp; the header carries Token only when given', () => {
    const token = sign('t1', 100);
    const exp = tokenExpiry(token);
    assert.ok(Math.abs(exp - (Date.now() / 1000 + 100)) < 5, `exp ${exp}`);
    assert.equal(tokenExpiry('not a token'), null);
    assert.equal(tokenExpiry('a.e30.b'), null);
    const header = (url) => JSON.parse(base64DecodeUtf8(decodeURIComponent(url.split('header=')[1])));
    assert.equal(header(buildConnectUrl('ws://h/', 'k', 'id', token)).Token, token);
    assert.equal('Token' in header(buildConnectUrl('ws://h/', 'k', 'id')), false);
    assert.throws(() => new EventGateClient('ws://h/', { apiKey: 'k' }, { WebSocket, token: 5, logger: null }), TypeError);
  });
});

describe('against eventgate with identity mode token', () => {
  let server;
  before(async () => {
    server = await startEventgate({
      keepAlive: '1s',
      env: {
        EVENTGATE_IDENTITY_MODE: 'token',
        EVENTGATE_IDENTITY_HMAC_SECRET: SECRET,
        EVENTGATE_IDENTITY_SCOPE: '{"detail":{"tenant":["${tenant}"]}}',
        EVENTGATE_IDENTITY_LEEWAY: '0s',
        EVENTGATE_IDENTITY_EXPIRY_GRACE: '0s',
      },
    });
  });
  after(async () => {
    await server?.stop();
  });

  test('two tenants, one refreshing short tokens, receive disjoint events on one connection each', async () => {
    let calls = 0;
    const shortLived = async () => {
      calls++;
      return sign('t1', 3);
    };
    const opts = (token) => ({ WebSocket, logger: quietLogger, ackTimeout: 5000, token });
    const t1 = new EventGateClient(server.url, { apiKey: server.apiKey }, opts(shortLived));
    const t2 = new EventGateClient(server.url, { apiKey: server.apiKey }, opts(sign('t2', 600)));
    const errors = [];
    t1.on('error', (err) => errors.push(err));
    try {
      const one = eventSink();
      const two = eventSink();
      await t1.subscribe('all', { source: ['identity.test'] }, one.handler);
      await t2.subscribe('all', { source: ['identity.test'] }, two.handler);
      const round = async (n) => {
        for (const tenant of ['t1', 't2']) {
          await publish(server.httpUrl, { source: 'identity.test', 'detail-type': 'x', detail: { tenant, n } });
        }
        assert.deepEqual((await one.next()).event.detail, { tenant: 't1', n });
        assert.deepEqual((await two.next()).event.detail, { tenant: 't2', n });
      };
      await round(1);
      // Past two lifetimes of t1's token: it refreshed on the open connection.
      await sleep(6500);
      await round(2);
      assert.ok(calls >= 3, `token function called ${calls} times`);
      assert.equal(t1.stats.connects, 1, 'no reconnect: Refresh kept the connection');
      assert.deepEqual(errors, []);
      assert.equal(one.items.length, 0);
      assert.equal(two.items.length, 0);
    } finally {
      t1.close();
      t2.close();
    }
  });

  test('a connection without a token is refused and retried', async () => {
    const client = new EventGateClient(server.url, { apiKey: server.apiKey }, {
      WebSocket, logger: quietLogger, backoff: { initial: 50, max: 100 },
    });
    try {
      await sleep(500);
      assert.equal(client.stats.connects, 0);
      assert.ok(client.stats.reconnects >= 1);
    } finally {
      client.close();
    }
  });
});
