// End-to-end: the demo page in real headless Chromium against a real eventgate.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startEventgate, publish, ARTIFACTS, WEB_DEMO, CHROMIUM, CHROMIUM_ARGS as ARGS } from './helpers.mjs';


let server;
let context;
let profileDir;
let page;
const pageErrors = [];

const DEMO_FILES = ['index.html', 'eventgate-client.js', 'eventgate-client.d.ts', 'demo.js', 'demo.css'];
let staleDemo = [];

/**
 * The server embeds the demo files at build time (include_str!). When the binary is older than
 * the working tree, the /demo/ tests below exercise the embedded copies, not the files on disk
 * (the static-server test at the end always uses the files on disk): say so loudly.
 * (Serving the disk copies through page routes is no way out: Chromium's local network access
 * checks then block the page's WebSocket to 127.0.0.1.)
 */
async function checkEmbeddedDemo() {
  staleDemo = [];
  for (const f of DEMO_FILES) {
    const served = await (await fetch(`${server.httpUrl}/demo/${f}`)).text();
    if (served !== fs.readFileSync(path.join(WEB_DEMO, f), 'utf8')) staleDemo.push(f);
  }
  if (staleDemo.length) {
    console.error(`\n!!! ${server.httpUrl}/demo/ serves older copies of ${staleDemo.join(', ')} than web-demo/: ` +
      'rebuild eventgate (cargo build --release --bin eventgate) to test the current files in dev mode !!!\n');
  }
}

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  server = await startEventgate({ keepAlive: '2s' });
  // A fresh, throw-away profile (--user-data-dir) for every run.
  profileDir = fs.mkdtempSync(path.join(os.tmpdir(), 'eventgate-chromium-'));
  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM, args: ARGS, headless: true, viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1,
  });
  page = context.pages()[0] ?? await context.newPage();
  await checkEmbeddedDemo();
  page.on('pageerror', (err) => pageErrors.push(String(err)));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !/WebSocket connection|ERR_CONNECTION_REFUSED|Failed to load resource/.test(msg.text())) {
      pageErrors.push(`console: ${msg.text()}`);
    }
  });
});

after(async () => {
  await context?.close();
  await server?.stop();
  if (profileDir) fs.rmSync(profileDir, { recursive: true, force: true });
});

const state = () => page.getAttribute('[data-testid="state"]', 'data-state');
const events = () => page.locator('[data-testid="events"] > li');

test('demo page is served, pre-filled from /demo/config.json and connects by itself', async (t) => {
  if (staleDemo.length) t.diagnostic(`embedded demo files older than web-demo/: ${staleDemo.join(', ')}`);
  const res = await page.goto(server.demoUrl);
  assert.equal(res.status(), 200);
  await page.waitForSelector('body[data-ready="true"]');
  assert.equal(await page.inputValue('[data-testid="url"]'), server.url);
  assert.equal(await page.inputValue('[data-testid="apikey"]'), server.apiKey);
  assert.match(await page.inputValue('[data-testid="ingest"]'), /\/events$/);
  for (const f of ['eventgate-client.js', 'eventgate-client.d.ts', 'demo.js', 'demo.css']) {
    const r = await page.request.get(`${server.httpUrl}/demo/${f}`);
    assert.equal(r.status(), 200, f);
  }
  // Dev mode: the fields are filled, so the page connects without a click.
  await page.waitForSelector('[data-testid="state"][data-state="open"]', { timeout: 10_000 });
});

test('layout: a phone gets one column with no sideways scroll, a laptop sees the publish form', async () => {
  const p2 = await page.context().newPage();
  try {
    await p2.setViewportSize({ width: 390, height: 844 });
    await p2.goto(`${server.demoUrl}?autoconnect=0`);
    await p2.waitForSelector('body[data-ready="true"]');
    const phone = await p2.evaluate(() => {
      const sidebar = document.querySelector('.sidebar');
      return {
        scrollWidth: document.documentElement.scrollWidth,
        sidebarWidth: sidebar.getBoundingClientRect().width,
        sidebarScrolls: sidebar.scrollHeight > sidebar.clientHeight + 1,
        emptyText: document.getElementById('events-empty').textContent,
      };
    });
    assert.ok(phone.scrollWidth <= 390, `page is ${phone.scrollWidth} px wide at 390`);
    assert.ok(phone.sidebarWidth >= 340, `side panel squeezed to ${phone.sidebarWidth} px`);
    assert.equal(phone.sidebarScrolls, false, 'the side panel is not a scroll box on a phone');
    assert.doesNotMatch(phone.emptyText, /on the left/);
    await p2.screenshot({ path: path.join(ARTIFACTS, 'demo-390.png'), fullPage: true });

    await p2.setViewportSize({ width: 1280, height: 800 });
    await p2.goto(`${server.demoUrl}?autoconnect=0`);
    await p2.waitForSelector('body[data-ready="true"]');
    const laptop = await p2.evaluate(() => ({
      scrollWidth: document.documentElement.scrollWidth,
      publish: document.querySelector('[data-testid="publish"]').getBoundingClientRect().bottom,
      detail: document.querySelector('[data-testid="pub-detail"]').getBoundingClientRect().bottom,
      subscribe: document.querySelector('[data-testid="subscribe"]').getBoundingClientRect().bottom,
      connect: document.querySelector('[data-testid="connect"]').getBoundingClientRect().bottom,
    }));
    assert.ok(laptop.scrollWidth <= 1280, `page is ${laptop.scrollWidth} px wide at 1280`);
    for (const [name, bottom] of Object.entries(laptop)) {
      if (name !== 'scrollWidth') assert.ok(bottom <= 800, `${name} ends at ${bottom}, below the fold of 800`);
    }
    assert.equal(await p2.getAttribute('[data-testid="state"]', 'data-state'), 'idle', '?autoconnect=0 stays idle');
    await p2.screenshot({ path: path.join(ARTIFACTS, 'demo-1280.png') });
  } finally {
    await p2.close();
  }
});

test('connect, subscribe with an example, publish over HTTP, see the event', async () => {
  await page.waitForSelector('[data-testid="state"][data-state="open"]', { timeout: 10_000 });

  // an invalid pattern shows the server's Ack message inline
  await page.fill('[data-testid="rule"]', 'broken');
  await page.fill('[data-testid="pattern"]', '{"detail":{"x":"not-an-array"}}');
  await page.click('[data-testid="subscribe"]');
  const err = page.locator('[data-testid="pattern-error"]');
  await err.waitFor({ state: 'visible', timeout: 10_000 });
  assert.match(await err.textContent(), /invalid pattern/i);

  await page.click('[data-testid="example-lamassu"]');
  await page.click('[data-testid="subscribe"]');
  await page.waitForSelector('[data-testid="rules"] li[data-rule="lamassu-certs"] .rule-status.active');
  await page.click('[data-testid="example-supermq"]');
  assert.deepEqual(JSON.parse(await page.inputValue('[data-testid="pattern"]')),
    { source: ['supermq.users'], 'detail-type': [{ prefix: 'user.' }] });
  await page.click('[data-testid="subscribe"]');
  await page.waitForSelector('[data-testid="rules"] li[data-rule="supermq-users"] .rule-status.active');
  assert.ok(await err.isHidden());

  // published from outside (as a backend would)
  await publish(server.httpUrl, {
    source: 'supermq.users', 'detail-type': 'user.created',
    detail: { id: 'a1b2', name: 'Ada Lovelace', email: 'ada@example.com' },
  });
  await page.waitForSelector('[data-testid="events"] > li', { timeout: 10_000 });
  const first = events().first();
  assert.match(await first.textContent(), /user\.created/);
  assert.match(await first.locator('.event-rules').textContent(), /supermq-users/);
  assert.match(await first.locator('pre.event-detail').textContent(), /"name": "Ada Lovelace"/);

  // published from the page's own form (the example filled it with a matching event)
  await page.click('[data-testid="example-lamassu"]');
  await page.click('[data-testid="publish"]');
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="events"] > li').length >= 2);
  assert.match(await page.textContent('[data-testid="pub-result"]'), /published/);
  assert.match(await events().first().textContent(), /lamassu\.certificate\.issued/, 'newest first');
  assert.match(await events().first().locator('.event-rules').textContent(), /lamassu-certs/);
  assert.equal(await page.textContent('[data-testid="total"]'), '2');
  await page.waitForFunction(() => document.querySelector('[data-testid="eps"]').textContent !== '0.0');
});

test('server restart: the page reconnects, re-subscribes and receives the next event', async () => {
  const port = server.port;
  await server.stop('SIGKILL');
  await page.waitForSelector('[data-testid="state"][data-state="reconnecting"]', { timeout: 10_000 });
  await page.screenshot({ path: path.join(ARTIFACTS, 'demo-reconnecting.png') });
  server = await startEventgate({ port, keepAlive: '2s' });
  await page.waitForSelector('[data-testid="state"][data-state="open"]', { timeout: 20_000 });
  await page.waitForSelector('[data-testid="rules"] li[data-rule="supermq-users"] .rule-status.active', { timeout: 10_000 });
  await page.waitForSelector('[data-testid="rules"] li[data-rule="lamassu-certs"] .rule-status.active', { timeout: 10_000 });
  const before = await events().count();
  await publish(server.httpUrl, [
    { source: 'supermq.users', 'detail-type': 'user.updated', detail: { id: 'a1b2', status: 'disabled', roles: ['admin', 'ops'] } },
    { source: 'lamassu.ca', 'detail-type': 'lamassu.certificate.revoked', detail: { serial_number: '3a:9f:12:7c', reason: 'keyCompromise', revoked_at: new Date().toISOString() } },
  ]);
  await page.waitForFunction((n) => document.querySelectorAll('[data-testid="events"] > li').length >= n + 2, before);
  const texts = await events().allTextContents();
  assert.ok(texts.some((t) => /user\.updated/.test(t)));
  assert.ok(texts.some((t) => /lamassu\.certificate\.revoked/.test(t)));
  assert.equal(await state(), 'open');
  await page.evaluate(() => {
    document.querySelector('.sidebar').scrollTop = 0;
    document.activeElement?.blur();
  });
  await page.waitForTimeout(1400); // let the highlight animation settle
  await page.screenshot({ path: path.join(ARTIFACTS, 'demo.png') });
  assert.deepEqual(pageErrors, []);
});

test('opened from a plain static server (no config.json): empty, editable fields, connects cross-origin', async () => {
  const http = await import('node:http');
  const { WEB_DEMO } = await import('./helpers.mjs');
  const types = { html: 'text/html', js: 'text/javascript', css: 'text/css', ts: 'text/plain' };
  const files = new Set(['index.html', 'eventgate-client.js', 'eventgate-client.d.ts', 'demo.js', 'demo.css']);
  const staticServer = http.createServer((req, res) => {
    const name = new URL(req.url, 'http://x').pathname.slice(1) || 'index.html';
    if (!files.has(name)) {
      res.writeHead(404);
      return res.end('not found');
    }
    res.writeHead(200, { 'content-type': types[name.split('.').pop()] });
    res.end(fs.readFileSync(path.join(WEB_DEMO, name)));
  });
  await new Promise((r) => staticServer.listen(0, '127.0.0.1', r));
  const p2 = await page.context().newPage();
  const errors = [];
  p2.on('pageerror', (err) => errors.push(String(err)));
  try {
    await p2.goto(`http://127.0.0.1:${staticServer.address().port}/`);
    await p2.waitForSelector('body[data-ready="true"]');
    assert.equal(await p2.inputValue('[data-testid="url"]'), '');
    assert.equal(await p2.inputValue('[data-testid="apikey"]'), '');
    await p2.fill('[data-testid="url"]', server.url);
    await p2.fill('[data-testid="apikey"]', server.apiKey);
    await p2.click('[data-testid="connect"]');
    await p2.waitForSelector('[data-testid="state"][data-state="open"]', { timeout: 10_000 });
    await p2.click('[data-testid="example-numeric"]');
    await p2.click('[data-testid="subscribe"]');
    await p2.waitForSelector('[data-testid="rules"] li[data-rule="warm-sensors"] .rule-status.active');
    await publish(server.httpUrl, { source: 'iot.sensors', 'detail-type': 'reading', detail: { sensor: 'lab-1', temperature: 12 } });
    await publish(server.httpUrl, { source: 'iot.sensors', 'detail-type': 'reading', detail: { sensor: 'lab-3', temperature: 23.5 } });
    await p2.waitForSelector('[data-testid="events"] > li');
    await p2.waitForTimeout(300);
    assert.equal(await p2.locator('[data-testid="events"] > li').count(), 1, 'only the in-range reading matches');
    assert.match(await p2.locator('[data-testid="events"] > li pre.event-detail').textContent(), /23\.5/);
    await p2.waitForTimeout(1400); // let the highlight animation settle
    await p2.screenshot({ path: path.join(ARTIFACTS, 'demo-static.png') }); // the files on disk, whatever the binary embeds
    await p2.click('[data-testid="disconnect"]');
    await p2.waitForSelector('[data-testid="state"][data-state="closed"]');
    assert.deepEqual(errors, []);
  } finally {
    await p2.close();
    // The browser may keep an idle keep-alive connection open; close it instead of
    // waiting for it to time out.
    staticServer.closeAllConnections();
    await new Promise((r) => staticServer.close(r));
  }
});
