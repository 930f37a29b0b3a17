// Shared pattern vectors (protocol/vectors/patterns.json) checked through POST /test-pattern.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import WebSocket from 'ws';
import { EventGateClient } from '../eventgate-client.js';
import { startEventgate, REPO_ROOT, quietLogger } from './helpers.mjs';

const VECTORS = process.env.EVENTGATE_VECTORS ?? path.join(REPO_ROOT, 'protocol', 'vectors', 'patterns.json');

if (!fs.existsSync(VECTORS)) {
  const msg = `\n!!! ${VECTORS} is missing: pattern vector check SKIPPED !!!\n`;
  console.error(msg);
  test('pattern vectors via POST /test-pattern', (t) => t.skip(msg.trim()));
} else {
  const text = fs.readFileSync(VECTORS, 'utf8');
  const cases = JSON.parse(text);
  // Re-serialising parsed JSON would round big integers (2^53+1 -> 2^53): send the raw text.
  const raw = splitValues(text, 0).map((r) => Object.fromEntries(splitMembers(text, r)));
  let server;
  before(async () => {
    server = await startEventgate();
  });
  after(async () => {
    await server?.stop();
  });

  test(`vector file has cases (${cases.length})`, () => {
    assert.ok(Array.isArray(cases) && cases.length > 0);
  });

  test('every vector case via POST /test-pattern', async (t) => {
    const failures = [];
    for (const [i, c] of cases.entries()) {
      const name = c.name ?? `case #${i}`;
      const r = raw[i];
      const body = `{"EventPattern":${r.pattern ?? JSON.stringify(c.pattern)},"Event":${r.event ?? '{}'}}`;
      const res = await fetch(`${server.httpUrl}/test-pattern`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
      });
      const text = await res.text();
      let json;
      try {
        json = JSON.parse(text);
      } catch {
        failures.push(`${name}: non-JSON response ${res.status}: ${text}`);
        continue;
      }
      if ('error' in c) {
        if (res.status !== 400 || typeof json.Error !== 'string') {
          failures.push(`${name}: expected 400 {Error} containing ${JSON.stringify(c.error)}, got ${res.status} ${text}`);
        } else if (!json.Error.includes(c.error)) {
          failures.push(`${name}: error ${JSON.stringify(json.Error)} does not contain ${JSON.stringify(c.error)}`);
        }
      } else if ('event_error' in c) {
        // The event (raw text in the vector) is refused: 400 naming the parse error.
        if (res.status !== 400 || typeof json.Error !== 'string' || !json.Error.includes(c.event_error)) {
          failures.push(`${name}: expected 400 {Error} containing ${JSON.stringify(c.event_error)}, got ${res.status} ${text}`);
        }
      } else if (res.status !== 200 || json.Result !== c.match) {
        failures.push(`${name}: expected 200 {Result: ${c.match}}, got ${res.status} ${text}`);
      }
    }
    t.diagnostic(`${cases.length - failures.length}/${cases.length} vector cases agree`);
    assert.deepEqual(failures, [], `${failures.length} of ${cases.length} vector cases disagree:\n${failures.join('\n')}`);
  });

  test('every vector pattern via EventGateClient.subscribe: Ack Ok, or Ack Error with the expected message', async (t) => {
    // Spread over several connections: each stays under the per-connection action burst (100:
    // a Subscribe and an Unsubscribe per case) and holds one rule at a time, so neither the
    // server's rate limiting nor its per-connection rule budgets kick in.
    const perClient = 45;
    const clients = [];
    const failures = [];
    try {
      const work = [];
      for (let start = 0; start < cases.length; start += perClient) {
        const client = new EventGateClient(server.url, { apiKey: server.apiKey }, { WebSocket, logger: quietLogger });
        clients.push(client);
        work.push((async () => {
          for (let i = start; i < Math.min(start + perClient, cases.length); i++) {
            const c = cases[i];
            const name = c.name ?? `case #${i}`;
            // A string is the pattern text itself; otherwise send the raw JSON text (no precision loss).
            const pattern = typeof c.pattern === 'string' ? c.pattern : raw[i].pattern;
            try {
              await client.subscribe(`v${i}`, pattern, () => {});
              await client.unsubscribe(`v${i}`);
              if ('error' in c) failures.push(`${name}: expected Ack Error containing ${JSON.stringify(c.error)}, got Ok`);
            } catch (err) {
              if (!('error' in c)) failures.push(`${name}: expected Ack Ok, got ${err.message}`);
              else if (err.code !== 'rejected' || !ackMatches(err.message, c.error)) {
                failures.push(`${name}: Ack ${JSON.stringify(err.message)} does not contain ${JSON.stringify(c.error)}`);
              }
            }
          }
        })());
      }
      await Promise.all(work);
    } finally {
      for (const client of clients) client.close();
    }
    t.diagnostic(`${cases.length - failures.length}/${cases.length} vector patterns acked as expected over WebSocket`);
    assert.deepEqual(failures, [], `${failures.length} of ${cases.length} disagree:\n${failures.join('\n')}`);
  });
}

/**
 * protocol/README.md §3: an Ack for a pattern over max_pattern_bytes says `pattern too large`
 * (checked before parsing); the vector's text is the pattern parser's own wording for it.
 */
function ackMatches(message, expected) {
  if (/max_pattern_bytes/.test(expected)) return message.startsWith('pattern too large');
  return message.includes(expected);
}

// --- minimal raw-JSON slicer (no precision loss) -------------------------------------
function skipWs(t, i) {
  while (i < t.length && ' \t\r\n'.includes(t[i])) i++;
  return i;
}
/** End index (exclusive) of the JSON value starting at i. */
function valueEnd(t, i) {
  if (t[i] === '"') {
    for (i++; t[i] !== '"'; i++) if (t[i] === '\\') i++;
    return i + 1;
  }
  if (t[i] === '{' || t[i] === '[') {
    let depth = 0;
    for (; i < t.length; i++) {
      const ch = t[i];
      if (ch === '"') i = valueEnd(t, i) - 1;
      else if (ch === '{' || ch === '[') depth++;
      else if (ch === '}' || ch === ']') if (--depth === 0) return i + 1;
    }
    throw new Error('unbalanced JSON');
  }
  while (i < t.length && !',]} \t\r\n'.includes(t[i])) i++;
  return i;
}
/** [start, end) of each element of the array starting at i. */
function splitValues(t, i) {
  i = skipWs(t, i);
  const out = [];
  i = skipWs(t, i + 1);
  while (t[i] !== ']') {
    const end = valueEnd(t, i);
    out.push([i, end]);
    i = skipWs(t, end);
    if (t[i] === ',') i = skipWs(t, i + 1);
  }
  return out;
}
/** [key, raw value text] of each member of the object at [start, end). */
function splitMembers(t, [start]) {
  const out = [];
  let i = skipWs(t, start + 1);
  while (t[i] !== '}') {
    const kEnd = valueEnd(t, i);
    const key = JSON.parse(t.slice(i, kEnd));
    i = skipWs(t, skipWs(t, kEnd) + 1);
    const vEnd = valueEnd(t, i);
    out.push([key, t.slice(i, vEnd)]);
    i = skipWs(t, vEnd);
    if (t[i] === ',') i = skipWs(t, i + 1);
  }
  return out;
}
