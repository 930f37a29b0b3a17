// End-to-end: the demo page in headless Chromium, on a gateway whose history is a Redis
// stream (`cluster.backend = "redis_stream"`), receives a numbered sequence of events while
// the gateway restarts in the middle, and ends up showing every number exactly once, in
// order: the page's client resumes from its last position on the restarted gateway. Without
// Redis the test is skipped (listed in EVENTGATE_TEST_SKIPS), with CI=true it fails.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';
import {
  startEventgate, sequencePublisher, waitFor, waitReady, redisAvailable, sharedLog, ARTIFACTS, CHROMIUM, CHROMIUM_ARGS as ARGS,
} from './helpers.mjs';

const SOURCE = 'demo.sequence';

test('demo page: a numbered sequence across a gateway restart (Redis log) shows every number exactly once', async (t) => {
  if (!(await redisAvailable(t))) return;
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const log = sharedLog('browser');
  let server = await startEventgate({ keepAlive: '2s', env: log.env });
  await waitReady(server.httpUrl);
  const port = server.port;
  const profileDir = fs.mkdtempSync(path.join(os.tmpdir(), 'eventgate-chromium-'));
  const context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM, args: ARGS, headless: true, viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1,
  });
  const pageErrors = [];
  let pub;
  try {
    const page = context.pages()[0] ?? await context.newPage();
    page.on('pageerror', (err) => pageErrors.push(String(err)));
    page.on('console', (msg) => {
      if (msg.type() === 'error' && !/WebSocket connection|ERR_CONNECTION_REFUSED|Failed to load resource/.test(msg.text())) {
        pageErrors.push(`console: ${msg.text()}`);
      }
    });
    await page.goto(server.demoUrl);
    await page.waitForSelector('[data-testid="state"][data-state="open"]', { timeout: 10_000 });
    // What the page's client tells the app about the resume (the page exposes its client).
    await page.evaluate(() => {
      window.resumeLog = { recovered: [], gaps: [] };
      const { client } = window.eventgateDemo;
      client.on('recovered', (n) => window.resumeLog.recovered.push(n));
      client.on('gap', (reason) => window.resumeLog.gaps.push(reason));
    });
    await page.fill('[data-testid="rule"]', 'sequence');
    await page.fill('[data-testid="pattern"]', JSON.stringify({ source: [SOURCE] }));
    await page.click('[data-testid="subscribe"]');
    await page.waitForSelector('[data-testid="rules"] li[data-rule="sequence"] .rule-status.active');

    // The numbers the page shows, oldest first (the list shows the newest on top).
    const shown = () => page.$$eval('[data-testid="events"] > li pre.event-detail',
      (pres) => pres.map((pre) => JSON.parse(pre.textContent).seq).reverse());
    const count = () => page.$$eval('[data-testid="events"] > li', (lis) => lis.length);

    pub = sequencePublisher(() => server.httpUrl, { source: SOURCE, batch: 2, every: 25 });
    await waitFor(async () => (await count()) >= 40, { what: 'the first 40 events on the page', timeout: 15_000 });

    // Restart: no request in flight, stop, and keep publishing as soon as the new process accepts.
    await pub.pause();
    const beforeStop = pub.published;
    await server.stop('SIGTERM');
    await page.waitForSelector('[data-testid="state"][data-state="reconnecting"]', { timeout: 10_000 });
    pub.resume();
    server = await startEventgate({ port, keepAlive: '2s', env: log.env });
    await page.waitForSelector('[data-testid="state"][data-state="open"]', { timeout: 20_000 });
    await waitFor(() => page.evaluate(() => window.resumeLog.recovered.length + window.resumeLog.gaps.length > 0),
      { what: 'the page\'s resume', timeout: 10_000 });
    const afterResume = pub.published;
    await waitFor(() => pub.published >= afterResume + 40, { what: '40 more events after the resume', timeout: 15_000 });
    const total = await pub.stop();
    await waitFor(async () => (await count()) >= total, { what: `all ${total} events on the page`, timeout: 15_000 });
    await sleep(300);

    const resume = await page.evaluate(() => window.resumeLog);
    t.diagnostic(`${total} events (${beforeStop} before the stop), page resumed with ${JSON.stringify(resume)}; ` +
      `publisher refused ${pub.refusals.length}× while the gateway restarted`);
    assert.deepEqual(resume.gaps, [], 'no gap');
    assert.equal(resume.recovered.length, 1);
    const numbers = await shown();
    const missing = [];
    for (let seq = 0; seq < total; seq++) if (!numbers.includes(seq)) missing.push(seq);
    assert.deepEqual(missing, [], 'no missing sequence numbers');
    assert.equal(numbers.length, total, 'no duplicates');
    assert.deepEqual(numbers, Array.from({ length: total }, (_, i) => i), 'in order');
    assert.equal(await page.textContent('[data-testid="total"]'), String(total));
    assert.ok(total > beforeStop + 40, 'events were published on both sides of the restart');
    await page.screenshot({ path: path.join(ARTIFACTS, 'demo-resume-redis.png') });
    assert.deepEqual(pageErrors, []);
  } finally {
    await pub?.stop();
    await context.close();
    await server.stop();
    fs.rmSync(profileDir, { recursive: true, force: true });
    await log.drop();
  }
});
