// The JS client as users consume it: `npm pack`, the tarball installed into a scratch project,
// imported by name from Node (with the `ws` package, as on Node 20, and with Node's global
// WebSocket, as on Node 22) and bundled for browsers with esbuild; each one then subscribes to a
// real eventgate and receives an event.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startEventgate, publish, WEB_DEMO } from './helpers.mjs';

const NODE_MAJOR = Number(process.versions.node.split('.')[0]);

let server;
let scratch;
let tarball;

const npm = (args, cwd) => execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

before(async () => {
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'eventgate-client-pkg-'));
  const packed = JSON.parse(npm(['pack', '--json', '--pack-destination', scratch], WEB_DEMO));
  tarball = path.join(scratch, packed[0].filename);
  fs.writeFileSync(path.join(scratch, 'package.json'), JSON.stringify({ name: 'scratch', private: true, type: 'module' }));
  // The tarball has no dependencies; `ws` comes from the cache `npm ci` filled.
  npm(['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', tarball, 'ws@8'], scratch);
  server = await startEventgate();
});

after(async () => {
  await server?.stop();
  if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
});

test('the tarball holds the module and its types, and package.json points at them', () => {
  const listing = JSON.parse(npm(['pack', '--dry-run', '--json'], WEB_DEMO))[0].files.map((f) => f.path).sort();
  assert.ok(listing.includes('eventgate-client.js'), listing.join(', '));
  assert.ok(listing.includes('eventgate-client.d.ts'), listing.join(', '));
  assert.ok(!listing.some((f) => f.startsWith('test/') || f === 'demo.js' || f.startsWith('node_modules/')), listing.join(', '));
  const installed = path.join(scratch, 'node_modules', 'eventgate-client');
  const manifest = JSON.parse(fs.readFileSync(path.join(installed, 'package.json'), 'utf8'));
  assert.equal(manifest.type, 'module');
  assert.equal(manifest.exports['.'].types, './eventgate-client.d.ts');
  assert.ok(fs.existsSync(path.join(installed, manifest.exports['.'].default)));
  assert.ok(fs.existsSync(path.join(installed, manifest.types)));
});

/**
 * A script that connects with the installed package, subscribes, tells the test it is ready,
 * then prints the first event it receives.
 */
function consumerScript(importLine, webSocketOption) {
  return `${importLine}
const [url, apiKey, source] = process.argv.slice(2);
const client = new EventGateClient(url, { apiKey }, { ${webSocketOption} });
const timer = setTimeout(() => { console.error('no event within 20 s'); process.exit(2); }, 20_000);
await client.subscribe('pkg', { source: [source] }, (event) => {
  console.log(JSON.stringify({ event }));
  clearTimeout(timer);
  client.close();
});
console.log(JSON.stringify({ ready: true }));
`;
}

/** Runs `file` with node, publishes once it is subscribed, returns the event it printed. */
async function runConsumer(file, nodeArgs, source) {
  const child = spawn(process.execPath, [...nodeArgs, file, server.url, server.apiKey, source], {
    cwd: scratch, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d) => { stderr += d; });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const ready = new Promise((resolve) => {
    child.stdout.setEncoding('utf8').on('data', (d) => {
      stdout += d;
      if (stdout.includes('"ready":true')) resolve();
    });
  });
  await Promise.race([ready, exited]);
  await publish(server.httpUrl, { source, 'detail-type': 'package-test', detail: { n: 1 } });
  const code = await exited;
  assert.equal(code, 0, `exit ${code}\n${stdout}\n${stderr}`);
  const line = stdout.split('\n').find((l) => l.includes('"event"'));
  assert.ok(line, `no event printed\n${stdout}\n${stderr}`);
  return JSON.parse(line).event;
}

test('Node with the ws package (Node 20): import by package name, receive an event', async () => {
  const file = path.join(scratch, 'with-ws.mjs');
  fs.writeFileSync(file, consumerScript(
    "import { EventGateClient } from 'eventgate-client';\nimport WebSocket from 'ws';",
    'WebSocket,',
  ));
  const event = await runConsumer(file, [], 'pkg.ws');
  assert.equal(event.source, 'pkg.ws');
  assert.equal(event['detail-type'], 'package-test');
});

test("Node's global WebSocket (Node 22; Node 20 with --experimental-websocket): no options needed", async () => {
  const file = path.join(scratch, 'global.mjs');
  fs.writeFileSync(file, consumerScript("import EventGateClient from 'eventgate-client';", ''));
  const flags = NODE_MAJOR >= 22 ? [] : ['--experimental-websocket'];
  const event = await runConsumer(file, flags, 'pkg.global');
  assert.equal(event.source, 'pkg.global');
});

test('bundled for browsers with esbuild: one self-contained ESM file that works', async () => {
  const entry = path.join(scratch, 'entry.mjs');
  fs.writeFileSync(entry, consumerScript("import { EventGateClient } from 'eventgate-client';", ''));
  const bundle = path.join(scratch, 'bundle.mjs');
  const esbuild = path.join(WEB_DEMO, 'node_modules', '.bin', 'esbuild');
  execFileSync(esbuild, [entry, '--bundle', '--format=esm', '--platform=browser', '--target=es2022',
    `--outfile=${bundle}`, '--log-level=warning'], { cwd: scratch, stdio: ['ignore', 'pipe', 'pipe'] });
  const text = fs.readFileSync(bundle, 'utf8');
  assert.doesNotMatch(text, /from\s*["']eventgate-client["']/, 'the package is inlined');
  assert.doesNotMatch(text, /require\(|from\s*["'](ws|node:[a-z]+)["']/, 'no Node-only imports in a browser bundle');
  assert.match(text, /EventGateClient = class|class EventGateClient/, 'the client class is in the bundle');
  // The browser bundle runs wherever a standard WebSocket exists.
  const flags = NODE_MAJOR >= 22 ? [] : ['--experimental-websocket'];
  const event = await runConsumer(bundle, flags, 'pkg.bundle');
  assert.equal(event.source, 'pkg.bundle');
});
