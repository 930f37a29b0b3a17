// End-to-end: the operator's console (/admin/) in real headless Chromium against a real
// eventgate with an admin token. A WebSocket client connects and subscribes, the page shows
// it, finds it by search, disconnects it, and the client gets the close code and reason the
// operator typed. Screenshots (1280 and 390 px wide) go to test-artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';
import { startEventgate, publish, waitFor, ARTIFACTS, CHROMIUM, CHROMIUM_ARGS as ARGS } from './helpers.mjs';
import { buildConnectUrl } from '../eventgate-client.js';

const ADMIN_TOKEN = 'browser-test-admin-token-0123';

let server;
let context;
let profileDir;
let page;
const pageErrors = [];

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  server = await startEventgate({ env: { EVENTGATE_ADMIN_TOKEN: ADMIN_TOKEN } });
  profileDir = fs.mkdtempSync(path.join(os.tmpdir(), 'eventgate-admin-chromium-'));
  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM, args: ARGS, headless: true, viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1,
  });
  page = context.pages()[0] ?? await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(String(err)));
  page.on('console', (msg) => {
    // A 401 before the token is typed is expected and logged by Chromium as a failed load.
    if (msg.type() === 'error' && !/Failed to load resource/.test(msg.text())) pageErrors.push(`console: ${msg.text()}`);
  });
});

after(async () => {
  await context?.close();
  await server?.stop();
  if (profileDir) fs.rmSync(profileDir, { recursive: true, force: true });
});

/** Opens a WebSocket, announces it and subscribes one rule; resolves once acknowledged. */
function connectClient(rule, pattern) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(buildConnectUrl(server.url, server.apiKey, randomUUID()));
    const closed = new Promise((done) => ws.on('close', (code, reason) => done({ code, reason: reason.toString() })));
    const timer = setTimeout(() => reject(new Error('the client was not acknowledged in time')), 10_000);
    ws.on('error', reject);
    ws.on('open', () => {
      ws.send(JSON.stringify({ Action: 'Hello', RequestId: 'hello' }));
      ws.send(JSON.stringify({ Action: 'Subscribe', RequestId: 'sub', Rule: rule, Pattern: JSON.stringify(pattern) }));
    });
    ws.on('message', (data) => {
      const message = JSON.parse(data.toString());
      if (message.Action === 'Ack' && message.RequestId === 'sub') {
        clearTimeout(timer);
        assert.equal(message.Status, 'Ok', JSON.stringify(message));
        resolve({ ws, closed });
      }
    });
  });
}

const rows = () => page.locator('[data-testid="connection"]');

test('the console needs the token, lists a client, finds it and disconnects it with a reason', async () => {
  const response = await page.goto(`${server.httpUrl}/admin/`);
  assert.equal(response.status(), 200);
  // No token yet: the API says 401 and the page asks for it.
  await page.waitForSelector('#token-dialog[open]');
  await page.fill('[data-testid="token"]', ADMIN_TOKEN);
  await page.click('[data-testid="token-ok"]');
  await waitFor(async () => (await page.getAttribute('[data-testid="status"]', 'data-state')) === 'ok', {
    what: 'the console to go live',
  });

  const client = await connectClient('orders-eu', { source: ['shop'], 'detail-type': ['order placed'], detail: { region: ['eu'] } });
  const other = await connectClient('users', { source: ['users'] });
  await publish(server.httpUrl, { source: 'shop', 'detail-type': 'order placed', detail: { region: 'eu' } });

  // The connection appears with its rule and pattern text.
  const row = rows().filter({ hasText: 'orders-eu' });
  await row.waitFor({ timeout: 10_000 });
  assert.match(await row.textContent(), /"region":\["eu"\]/);
  assert.equal(await rows().count(), 2);
  await waitFor(async () => (await page.textContent('[data-testid="t-connections"]')) === '2', { what: 'the totals' });
  await page.screenshot({ path: path.join(ARTIFACTS, 'admin-1280.png'), fullPage: true });

  // Search by pattern text keeps only that connection.
  await page.fill('[data-testid="search"]', 'ORDER PLACED');
  await waitFor(async () => (await rows().count()) === 1, { what: 'the search to narrow the table' });
  assert.match(await rows().first().textContent(), /orders-eu/);

  // Phone width: still readable, the row is a card, the button reachable.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: path.join(ARTIFACTS, 'admin-390.png'), fullPage: true });
  const id = await rows().first().getAttribute('data-id');
  const button = page.locator(`[data-testid="disconnect-${id}"]`);
  assert.ok(await button.isVisible());
  const box = await button.boundingBox();
  assert.ok(box.x >= 0 && box.x + box.width <= 390, `the button fits in 390 px: ${JSON.stringify(box)}`);

  // Disconnect with a custom code and reason: the client sees exactly those.
  await button.click();
  await page.waitForSelector('#disconnect-dialog[open]');
  await page.fill('#close-code', '4001');
  await page.fill('#close-reason', 'closed from the admin console');
  await page.click('[data-testid="disconnect-confirm"]');
  const closed = await Promise.race([
    client.closed,
    new Promise((_, reject) => setTimeout(() => reject(new Error('the client was not closed')), 10_000)),
  ]);
  assert.deepEqual(closed, { code: 4001, reason: 'closed from the admin console' });

  // The page drops it; the other client is untouched.
  await waitFor(async () => (await rows().count()) === 0, { what: 'the row to go' });
  await page.fill('[data-testid="search"]', '');
  await waitFor(async () => (await rows().count()) === 1, { what: 'the other connection to show' });
  assert.match(await rows().first().textContent(), /users/);
  assert.equal(other.ws.readyState, WebSocket.OPEN);
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.screenshot({ path: path.join(ARTIFACTS, 'admin-after-disconnect.png'), fullPage: true });
  other.ws.close();
  assert.deepEqual(pageErrors, []);
});
