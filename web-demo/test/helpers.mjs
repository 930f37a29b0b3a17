// Shared helpers for the web-demo tests: start/stop/restart the real eventgate binary.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

export const WEB_DEMO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO_ROOT = path.resolve(WEB_DEMO, '..');
export const EVENTGATE_BIN = process.env.EVENTGATE_BIN
  ? path.resolve(process.env.EVENTGATE_BIN)
  : path.join(REPO_ROOT, 'target', 'release', 'eventgate');
export const ARTIFACTS = path.join(REPO_ROOT, 'test-artifacts');

/** Debian's Chromium and the flags it needs here: headless, as root, on a closed network. */
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/** A fixed stack id, so that a restarted server hands out the same api key. */
export const STACK_ID = '6f1c1c4e-4b7a-4f6e-9a57-2f0d7f0c0e11';

export function assertBinary() {
  if (!fs.existsSync(EVENTGATE_BIN)) {
    throw new Error(
      `eventgate binary not found at ${EVENTGATE_BIN}: run \`cargo build --release --bin eventgate\` in ${REPO_ROOT} ` +
        'or set EVENTGATE_BIN',
    );
  }
}

/**
 * Spawn `eventgate serve --dev` and parse its banner.
 * @returns {Promise<{proc, port:number, url:string, apiKey:string, httpUrl:string, demoUrl:string,
 *   output:()=>string, stop:(signal?:string)=>Promise<void>}>}
 */
export async function startEventgate({ port = 0, stackId = STACK_ID, keepAlive, extraArgs = [], env = {} } = {}) {
  assertBinary();
  const args = ['serve', '--dev', '--listen', `127.0.0.1:${port}`, '--stack-id', stackId];
  if (keepAlive) args.push('--keepalive-interval', keepAlive);
  args.push(...extraArgs);
  // Binding the same port right after a kill can briefly fail: retry a few times.
  let lastErr;
  for (let attempt = 0; attempt < 20; attempt++) {
    try {
      return await spawnOnce(args, env);
    } catch (err) {
      lastErr = err;
      if (port === 0) break;
      await sleep(250);
    }
  }
  throw lastErr;
}

/**
 * The test process's environment without any EVENTGATE_* variable: eventgate refuses unknown
 * ones (EVENTGATE_BIN, EVENTGATE_VECTORS are for the tests) and the servers the tests start
 * must not pick up a developer's configuration either. Tests pass what they need in `env`.
 */
function inheritedEnv() {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('EVENTGATE_')));
}

function spawnOnce(args, extraEnv = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(EVENTGATE_BIN, args, {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...inheritedEnv(), RUST_LOG: process.env.RUST_LOG ?? 'warn', NO_COLOR: '1', ...extraEnv },
    });
    let stdout = '';
    let stderr = '';
    let done = false;
    const info = {};
    const timer = setTimeout(() => fail(new Error('eventgate did not print its banner within 20 s')), 20_000);
    const fail = (err) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      proc.kill('SIGKILL');
      err.message += `\n--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`;
      reject(err);
    };
    proc.stdout.setEncoding('utf8');
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (d) => {
      stderr += d;
      if (stderr.length > 200_000) stderr = stderr.slice(-100_000);
    });
    proc.stdout.on('data', (d) => {
      stdout += d;
      if (done) return;
      let m;
      if ((m = /listening on (http:\/\/\S+?:(\d+))\/?\s*$/m.exec(stdout))) {
        info.httpUrl = m[1];
        info.port = Number(m[2]);
      }
      if ((m = /^websocket url: (\S+)\s*$/m.exec(stdout))) info.url = m[1];
      if ((m = /^api key: (\S+)\s*$/m.exec(stdout))) info.apiKey = m[1];
      if ((m = /^demo: (\S+)\s*$/m.exec(stdout))) info.demoUrl = m[1];
      if (info.port && info.url && info.apiKey) {
        done = true;
        clearTimeout(timer);
        const exited = new Promise((r) => proc.once('exit', r));
        resolve({
          proc,
          ...info,
          demoUrl: info.demoUrl ?? `${info.httpUrl}/demo/`,
          output: () => `--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`,
          async stop(signal = 'SIGTERM') {
            if (proc.exitCode === null && proc.signalCode === null) {
              proc.kill(signal);
              const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
              await exited;
              clearTimeout(t);
            }
          },
        });
      }
    });
    proc.once('error', fail);
    proc.once('exit', (code, sig) => fail(new Error(`eventgate exited early (code ${code}, signal ${sig})`)));
  });
}

/** POST one event (or an array) to /events. */
export async function publish(httpUrl, event) {
  const res = await fetch(`${httpUrl}/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(event),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`POST /events -> ${res.status}: ${text}`);
  return JSON.parse(text);
}

/** Poll `fn` until it returns a truthy value. */
export async function waitFor(fn, { timeout = 10_000, interval = 25, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(interval);
  }
}

/** Resolve with the next state equal to `state` (or immediately if already there). */
export function waitForState(client, state, timeout = 15_000) {
  if (client.state === state) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for state '${state}' (now '${client.state}')`));
    }, timeout);
    const off = client.on('state', (s) => {
      if (s === state) {
        clearTimeout(timer);
        off();
        resolve();
      }
    });
  });
}

/** A queue of received events with an awaitable `next()`. */
export function eventSink() {
  const items = [];
  const waiters = [];
  return {
    items,
    handler(event, rules) {
      const item = { event, rules };
      const w = waiters.shift();
      if (w) w.resolve(item);
      else items.push(item);
    },
    next(timeout = 10_000) {
      if (items.length) return Promise.resolve(items.shift());
      return new Promise((resolve, reject) => {
        const w = { resolve: (v) => (clearTimeout(t), resolve(v)) };
        const t = setTimeout(() => {
          waiters.splice(waiters.indexOf(w), 1);
          reject(new Error(`no event within ${timeout} ms`));
        }, timeout);
        waiters.push(w);
      });
    },
  };
}

export const quietLogger = { debug() {}, info() {}, warn() {}, error() {} };
