// Shared helpers for the web-demo tests: start/stop/restart the real eventgate binary.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
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

/**
 * A TCP proxy to `port` on 127.0.0.1 that can cut every connection and refuse new ones for a
 * while, and switch to another upstream (a load balancer moving clients to another node).
 */
export async function startProxy(port) {
  const sockets = new Set();
  let down = false;
  let upstream = port;
  const server = net.createServer((inbound) => {
    if (down) {
      inbound.destroy();
      return;
    }
    const outbound = net.connect(upstream, '127.0.0.1');
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => sockets.delete(s));
    }
    inbound.pipe(outbound);
    outbound.pipe(inbound);
    inbound.on('close', () => outbound.destroy());
    outbound.on('close', () => inbound.destroy());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `ws://127.0.0.1:${server.address().port}/`,
    /** Cut every connection and refuse new ones until `up()`. */
    down() {
      down = true;
      for (const s of sockets) s.destroy();
    },
    up() {
      down = false;
    },
    /** New connections go to `port` from now on (open ones stay where they are). */
    switchTo(port) {
      upstream = port;
    },
    close: () => new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(resolve);
    }),
  };
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

/**
 * Publishes `{source, detail: {seq}}` events, numbered from 0, in batches of `batch` every
 * `every` ms to `target()` (an http URL), in order, until stopped. A batch is sent again only
 * when it was refused as a whole (connection refused, or an HTTP error status such as 503
 * while a new process loads the log), so no number is published twice or skipped. `pause()`
 * resolves once no request is in flight, so a gateway can be stopped without leaving a
 * request whose outcome is unknown.
 */
export function sequencePublisher(target, { source, batch = 5, every = 20 } = {}) {
  let next = 0;
  let stopped = false;
  let paused = null; // a promise while paused
  let release = null;
  let idle = null; // resolves when the loop reaches a pause point
  const refusals = [];
  const done = (async () => {
    while (!stopped) {
      if (paused) {
        idle?.();
        await paused;
        continue;
      }
      try {
        await publish(target(), Array.from({ length: batch }, (_, i) => ({
          source, 'detail-type': 'tick', detail: { seq: next + i },
        })));
        next += batch;
      } catch (err) {
        refusals.push(String(err.cause?.code ?? err.message).slice(0, 80));
      }
      await sleep(every);
    }
  })();
  return {
    get published() {
      return next;
    },
    refusals,
    pause() {
      paused = new Promise((r) => (release = r));
      return new Promise((r) => (idle = r));
    },
    resume() {
      paused = null;
      idle = null;
      release?.();
    },
    async stop() {
      stopped = true;
      this.resume();
      await done;
      return next;
    },
  };
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

// ------------------------------------------------------------------ shared log (Redis)

/** The Redis the shared-log tests use (`host:port`), as for the Rust tests. */
export const REDIS = process.env.EVENTGATE_TEST_REDIS ?? '127.0.0.1:6379';

/**
 * One Redis command over RESP on a fresh connection (enough for PING and DEL; the tests need
 * no Redis client package). Resolves with the reply's first line, rejects when Redis does not
 * answer within `timeout` ms.
 */
export function redisCommand(args, { timeout = 2000 } = {}) {
  const [host, port] = [REDIS.slice(0, REDIS.lastIndexOf(':')), Number(REDIS.slice(REDIS.lastIndexOf(':') + 1))];
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, host);
    let reply = '';
    const timer = setTimeout(() => finish(new Error(`redis at ${REDIS}: no answer within ${timeout} ms`)), timeout);
    const finish = (err, value) => {
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    socket.setEncoding('utf8');
    socket.on('error', (err) => finish(err));
    socket.on('connect', () => {
      socket.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join('')}`);
    });
    socket.on('data', (d) => {
      reply += d;
      const end = reply.indexOf('\r\n');
      if (end < 0) return;
      const line = reply.slice(0, end);
      if (line.startsWith('-')) finish(new Error(`redis: ${line.slice(1)}`));
      else finish(null, line);
    });
  });
}

const inCi = () => /^true$/i.test(process.env.CI ?? '');

/**
 * True when Redis answers. When it does not: with CI=true the test fails; elsewhere it is
 * skipped (`t.skip`, shown by the spec reporter) and, when EVENTGATE_TEST_SKIPS names a file,
 * one line is appended to it, so scripts/test.sh and run-tests.sh list it in their summary
 * (the same contract as the Rust tests' `broker_available`).
 */
export async function redisAvailable(t) {
  try {
    if ((await redisCommand(['PING'])) === '+PONG') return true;
  } catch {
    /* not reachable: below */
  }
  if (inCi()) throw new Error(`redis not reachable at ${REDIS}, and brokers are mandatory in CI (CI=true)`);
  const line = `web-demo: ${t.fullName ?? t.name}: redis not reachable at ${REDIS}`;
  console.error(`\n*** SKIPPED ${line} ***\n`);
  if (process.env.EVENTGATE_TEST_SKIPS) fs.appendFileSync(process.env.EVENTGATE_TEST_SKIPS, `${line}\n`);
  t.skip(`redis not reachable at ${REDIS}`);
  return false;
}

/**
 * A fresh Redis stream key for one test (deleted again by `dropStream`), and the environment
 * that puts a gateway on it as its shared log (`cluster.backend = "redis_stream"`).
 */
export function sharedLog(name) {
  const key = `eventgate.webdemo-test.${name}.${process.pid}.${Date.now().toString(36)}.${Math.random().toString(36).slice(2, 8)}`;
  return {
    key,
    env: {
      EVENTGATE_CLUSTER_BACKEND: 'redis_stream',
      EVENTGATE_CLUSTER_URL: `redis://${REDIS}/`,
      EVENTGATE_CLUSTER_CHANNEL: key,
    },
    drop: () => redisCommand(['DEL', key]).catch(() => {}),
  };
}

/** Wait until the gateway's /readyz is 200 (with a shared log: the log's tail is loaded). */
export async function waitReady(httpUrl, timeout = 15_000) {
  let last = '';
  try {
    await waitFor(async () => {
      try {
        const res = await fetch(`${httpUrl}/readyz`);
        last = `${res.status} ${await res.text()}`;
        return res.status === 200;
      } catch (err) {
        last = String(err);
        return false;
      }
    }, { timeout, interval: 50, what: `${httpUrl}/readyz` });
  } catch (err) {
    err.message += ` (last answer: ${last})`;
    throw err;
  }
}
