// End-to-end: two tabs of the demo page, each connected as another tenant with a dev-mode
// token, both subscribed to everything; each receives only its own tenant's events.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startEventgate, publish, ARTIFACTS, CHROMIUM, CHROMIUM_ARGS as ARGS } from './helpers.mjs';


let server;
let context;
let profileDir;
const pageErrors = [];

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  server = await startEventgate({
    keepAlive: '2s',
    env: {
      EVENTGATE_IDENTITY_MODE: 'token',
      EVENTGATE_IDENTITY_HMAC_SECRET: 'the demo e2e HMAC secret, 32 bytes or more',
      EVENTGATE_IDENTITY_SCOPE: '{"detail":{"tenant":["${tenant}"]}}',
    },
  });
  profileDir = fs.mkdtempSync(path.join(os.tmpdir(), 'eventgate-chromium-'));
  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM, args: ARGS, headless: true, viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1,
  });
});

after(async () => {
  await context?.close();
  await server?.stop();
  if (profileDir) fs.rmSync(profileDir, { recursive: true, force: true });
});

async function tab(tenant) {
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(String(err)));
  // The tenant is typed in before connecting, so the page must not connect by itself.
  await page.goto(`${server.demoUrl}?tenant=${tenant}&autoconnect=0`);
  await page.waitForSelector('body[data-ready="true"]');
  assert.equal(await page.inputValue('[data-testid="tenant"]'), tenant);
  await page.click('[data-testid="connect"]');
  await page.waitForSelector('[data-testid="state"][data-state="open"]', { timeout: 10_000 });
  assert.equal(await page.textContent('[data-testid="whoami"]'), `tenant ${tenant}`);
  await page.fill('[data-testid="rule"]', 'everything');
  await page.fill('[data-testid="pattern"]', '{"source":["tenants.demo"]}');
  await page.click('[data-testid="subscribe"]');
  await page.waitForSelector('[data-testid="rules"] li[data-rule="everything"] .rule-status.active');
  return page;
}

test('two tabs of two tenants receive disjoint events', async () => {
  const one = await tab('t1');
  const two = await tab('t2');
  for (const [tenant, n] of [['t1', 1], ['t2', 2], ['t1', 3], ['t2', 4]]) {
    await publish(server.httpUrl, { source: 'tenants.demo', 'detail-type': 'update', detail: { tenant, n } });
  }
  for (const [page, tenant] of [[one, 't1'], [two, 't2']]) {
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="events"] > li').length >= 2);
    await page.waitForTimeout(300);
    const texts = await page.locator('[data-testid="events"] > li pre.event-detail').allTextContents();
    assert.equal(texts.length, 2, `${tenant}: ${texts}`);
    for (const text of texts) assert.equal(JSON.parse(text).tenant, tenant);
  }
  await one.waitForTimeout(1400); // let the highlight animation settle
  await one.screenshot({ path: path.join(ARTIFACTS, 'demo-tenant-t1.png') });
  assert.deepEqual(pageErrors, []);
});
