// Shared pattern vectors (protocol/vectors/patterns.json) checked through POST /test-pattern.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startEventgate, REPO_ROOT } from './helpers.mjs';

const VECTORS = process.env.EVENTGATE_VECTORS ?? path.join(REPO_ROOT, 'protocol', 'vectors', 'patterns.json');

if (!fs.existsSync(VECTORS)) {
  const msg = `\n!!! ${VECTORS} is missing: pattern vector check SKIPPED !!!\n`;
  console.error(msg);
  test('pattern vectors via POST /test-pattern', (t) => t.skip(msg.trim()));
} else {
  const cases = JSON.parse(fs.readFileSync(VECTORS, 'utf8'));
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
      const body = { EventPattern: c.pattern, Event: c.event ?? {} };
      const res = await fetch(`${server.httpUrl}/test-pattern`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
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
      } else if (res.status !== 200 || json.Result !== c.match) {
        failures.push(`${name}: expected 200 {Result: ${c.match}}, got ${res.status} ${text}`);
      }
    }
    t.diagnostic(`${cases.length - failures.length}/${cases.length} vector cases agree`);
    assert.deepEqual(failures, [], `${failures.length} of ${cases.length} vector cases disagree:\n${failures.join('\n')}`);
  });
}
