// demo.js — the eventgate live console (no framework, no build step).
import { EventGateClient } from './eventgate-client.js';

const $ = (id) => document.getElementById(id);
const els = {
  state: $('state'), eps: $('eps'), total: $('total'), connects: $('connects'),
  connForm: $('conn-form'), url: $('url'), apiKey: $('apikey'), connect: $('connect'), disconnect: $('disconnect'),
  connNote: $('conn-note'),
  subForm: $('sub-form'), rule: $('rule'), pattern: $('pattern'), patternError: $('pattern-error'),
  subscribe: $('subscribe'), subNote: $('sub-note'), rules: $('rules'),
  pubForm: $('pub-form'), ingest: $('ingest'), pubSource: $('pub-source'), pubType: $('pub-type'),
  pubDetail: $('pub-detail'), publish: $('publish'), pubResult: $('pub-result'),
  events: $('events'), pause: $('pause'), clear: $('clear'),
};

const MAX_EVENTS = 200;
/** Characters per line that fit the sidebar's JSON editors without wrapping. */
const EDITOR_WIDTH = 42;

const EXAMPLES = {
  supermq: {
    rule: 'supermq-users',
    pattern: { source: ['supermq.users'], 'detail-type': [{ prefix: 'user.' }] },
    event: { source: 'supermq.users', 'detail-type': 'user.created', detail: { id: 'c0ffee00-1', name: 'Ada Lovelace', email: 'ada@example.com', status: 'enabled' } },
  },
  lamassu: {
    rule: 'lamassu-certs',
    pattern: { source: ['lamassu.ca'], 'detail-type': [{ prefix: 'lamassu.certificate.' }] },
    event: { source: 'lamassu.ca', 'detail-type': 'lamassu.certificate.issued', detail: { serial_number: '3a:9f:12:7c', subject: 'CN=device-042', issuer: 'CN=Lamassu Root CA', valid_to: '2027-01-01T00:00:00Z' } },
  },
  numeric: {
    rule: 'warm-sensors',
    pattern: { source: ['iot.sensors'], detail: { temperature: [{ numeric: ['>=', 20, '<', 30] }] } },
    event: { source: 'iot.sensors', 'detail-type': 'reading', detail: { sensor: 'lab-3', temperature: 23.5, unit: 'C' } },
  },
};

let client = null;
/** Rules the page wants, kept across Disconnect/Connect: name -> pattern text. */
const wanted = new Map();
/** Last error per rule, shown in the list. */
let total = 0;
const arrivals = [];

// ------------------------------------------------------------------ state
function showState(state) {
  els.state.className = `pill state-${state}`;
  els.state.dataset.state = state;
  els.state.querySelector('.label').textContent = state;
  const connected = client !== null;
  els.connect.disabled = connected;
  els.disconnect.disabled = !connected;
  els.url.disabled = connected;
  els.apiKey.disabled = connected;
  if ($('tenant')) $('tenant').disabled = connected;
  if (client) els.connects.textContent = String(client.stats.connects);
  renderRules();
}

function connect() {
  const url = els.url.value.trim();
  const apiKey = els.apiKey.value.trim();
  els.connNote.textContent = '';
  els.connNote.className = 'hint';
  if (!/^wss?:\/\//i.test(url)) return note(els.connNote, 'Enter a ws:// or wss:// URL.', 'bad');
  if (!apiKey) return note(els.connNote, 'Enter the API key printed by `eventgate serve`.', 'bad');
  const tenant = $('tenant')?.value.trim() ?? '';
  const options = { keepAliveInterval: 30_000 };
  // Dev mode: a token for the typed tenant, minted again before every connect and refresh.
  if (tenant) options.token = () => mintToken(tenant);
  try {
    client = new EventGateClient(url, { apiKey }, options);
  } catch (err) {
    return note(els.connNote, err.message, 'bad');
  }
  window.eventgateDemo.client = client;
  client.on('state', (s) => {
    showState(s);
    if (s === 'open') note(els.connNote, `Connected as ${client.id}${tenant ? ` (tenant ${tenant})` : ''}`, 'hint');
    if ($('whoami')) $('whoami').textContent = s === 'open' ? (tenant ? `tenant ${tenant}` : 'API key only: every event') : '';
    if (s === 'reconnecting') note(els.connNote, 'Connection lost — reconnecting with backoff…', 'hint');
  });
  client.on('event', onEvent);
  client.on('rules', renderRules);
  client.on('error', (err) => note(els.connNote, err.message, 'bad'));
  showState(client.state);
  for (const [rule, pattern] of wanted) doSubscribe(rule, pattern, { quiet: true });
}

function disconnect() {
  if (!client) return;
  client.close();
  client = null;
  showState('closed');
  note(els.connNote, 'Disconnected. Rules are kept and re-sent on the next Connect.', 'hint');
}

// ------------------------------------------------------------------ rules
function renderRules() {
  const list = els.rules;
  list.textContent = '';
  const live = new Map((client ? client.rules : []).map((r) => [r.rule, r.status]));
  if (wanted.size === 0) {
    const li = document.createElement('li');
    li.className = 'empty';
    li.textContent = 'No rules yet — pick an example or write a pattern.';
    list.append(li);
    return;
  }
  for (const [rule, pattern] of wanted) {
    const li = document.createElement('li');
    li.dataset.rule = rule;
    const name = document.createElement('span');
    name.className = 'rule-name';
    name.textContent = rule;
    const pat = document.createElement('span');
    pat.className = 'rule-pattern';
    pat.textContent = compact(pattern);
    pat.title = pattern;
    const actions = document.createElement('span');
    actions.className = 'actions';
    const status = document.createElement('span');
    const st = live.get(rule) ?? (client ? 'pending' : 'off');
    status.className = `rule-status ${st}`;
    status.textContent = st;
    const edit = document.createElement('button');
    edit.type = 'button';
    edit.textContent = 'edit';
    edit.addEventListener('click', () => {
      els.rule.value = rule;
      els.pattern.value = pretty(pattern);
      els.pattern.focus();
    });
    const rm = document.createElement('button');
    rm.type = 'button';
    rm.textContent = '×';
    rm.title = `Unsubscribe ${rule}`;
    rm.addEventListener('click', async () => {
      wanted.delete(rule);
      renderRules();
      if (client) {
        try {
          await client.unsubscribe(rule);
        } catch (err) {
          note(els.subNote, err.message, 'bad');
        }
      }
      renderRules();
    });
    actions.append(status, edit, rm);
    li.append(name, pat, actions);
    list.append(li);
  }
}

function compact(text) {
  try {
    return JSON.stringify(JSON.parse(text));
  } catch {
    return text;
  }
}

function pretty(text) {
  try {
    return formatJson(JSON.parse(text), EDITOR_WIDTH);
  } catch {
    return text;
  }
}

/**
 * JSON.stringify(value, null, 2), except that an array or object whose one-line form is short
 * stays on one line: `"source": ["supermq.users"]` instead of three lines per array. `width` is
 * the line length to stay within (the editors are narrower than the event list).
 */
function formatJson(value, width = 72, indent = '', used = indent.length) {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? String(value);
  const isArray = Array.isArray(value);
  const entries = isArray ? value.map((v) => [null, v]) : Object.entries(value);
  if (entries.length === 0) return isArray ? '[]' : '{}';
  const key = (k) => (k === null ? '' : `${JSON.stringify(k)}: `);
  const inline = (v) => {
    if (v === null || typeof v !== 'object') return JSON.stringify(v);
    const parts = Array.isArray(v) ? v.map(inline) : Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}: ${inline(x)}`);
    if (parts.length === 0) return Array.isArray(v) ? '[]' : '{}';
    return Array.isArray(v) ? `[${parts.join(', ')}]` : `{ ${parts.join(', ')} }`;
  };
  const one = inline(value);
  if (used + one.length <= width) return one;
  const inner = `${indent}  `;
  const lines = entries.map(([k, v]) => `${inner}${key(k)}${formatJson(v, width, inner, inner.length + key(k).length)}`);
  return `${isArray ? '[' : '{'}\n${lines.join(',\n')}\n${indent}${isArray ? ']' : '}'}`;
}

function showPatternError(message) {
  els.patternError.hidden = !message;
  els.patternError.textContent = message ?? '';
  els.pattern.classList.toggle('invalid', Boolean(message));
}

async function doSubscribe(rule, patternText, { quiet = false } = {}) {
  if (!client) return;
  const p = client.subscribe(rule, patternText, () => {});
  renderRules();
  if (!quiet && client.state !== 'open') note(els.subNote, 'Queued — will be sent when connected.', 'hint');
  try {
    await p;
    if (!quiet) {
      showPatternError(null);
      note(els.subNote, `✓ ${rule} active`, 'ok');
    }
  } catch (err) {
    if (err.code === 'superseded' || err.code === 'unsubscribed' || err.code === 'closed') return;
    if (wanted.get(rule) === patternText) wanted.delete(rule);
    if (!quiet) {
      showPatternError(err.message);
      note(els.subNote, '');
    } else note(els.connNote, `Rule ${rule}: ${err.message}`, 'bad');
  }
  renderRules();
}

function onSubscribeSubmit(e) {
  e.preventDefault();
  const rule = els.rule.value.trim();
  const text = els.pattern.value;
  note(els.subNote, '');
  if (!rule) return showPatternError('Rule name is required.');
  try {
    JSON.parse(text);
  } catch (err) {
    return showPatternError(`invalid JSON: ${err.message}`);
  }
  if (!client) return showPatternError('Not connected: press Connect first.');
  showPatternError(null);
  wanted.set(rule, text);
  doSubscribe(rule, text);
}

function loadExample(key) {
  const ex = EXAMPLES[key];
  if (!ex) return;
  els.rule.value = ex.rule;
  els.pattern.value = formatJson(ex.pattern, EDITOR_WIDTH);
  els.pubSource.value = ex.event.source;
  els.pubType.value = ex.event['detail-type'];
  els.pubDetail.value = formatJson(ex.event.detail, EDITOR_WIDTH);
  showPatternError(null);
  note(els.subNote, 'Example loaded — press Subscribe.', 'hint');
}

// ------------------------------------------------------------------ events
function highlightJson(value) {
  const esc = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  const json = esc(formatJson(value));
  return json.replace(
    /("(?:\\u[a-fA-F0-9]{4}|\\[^u]|[^\\"])*"(\s*:)?|\b(?:true|false|null)\b|-?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)/g,
    (m, _s, colon) => {
      let cls = 'j-num';
      if (m.startsWith('"')) cls = colon ? 'j-key' : 'j-str';
      else if (/^(true|false|null)$/.test(m)) cls = 'j-lit';
      if (colon) return `<span class="${cls}">${m.slice(0, -colon.length)}</span>${colon}`;
      return `<span class="${cls}">${m}</span>`;
    },
  );
}

function onEvent(event, rules) {
  total++;
  arrivals.push(performance.now());
  els.total.textContent = String(total);
  if (els.pause.checked) return;
  const li = document.createElement('li');
  li.className = 'event fresh';
  li.dataset.testid = 'event';
  li.setAttribute('data-testid', 'event');
  const head = document.createElement('div');
  head.className = 'event-head';
  const time = document.createElement('span');
  time.className = 'event-time';
  time.textContent = new Date().toLocaleTimeString([], { hour12: false }) + '.' + String(Date.now() % 1000).padStart(3, '0');
  const source = document.createElement('span');
  source.className = 'event-source';
  source.textContent = event?.source ?? '?';
  const type = document.createElement('span');
  type.className = 'event-type';
  type.textContent = event?.['detail-type'] ?? '';
  const tags = document.createElement('span');
  tags.className = 'event-rules';
  for (const r of rules) {
    const tag = document.createElement('span');
    tag.className = 'rule-tag';
    tag.textContent = r;
    tags.append(tag);
  }
  const id = document.createElement('span');
  id.className = 'event-id';
  if (event?.id) {
    id.textContent = String(event.id).slice(0, 8);
    id.title = `id ${event.id}`;
  }
  head.append(time, source, type, id, tags);
  const hasDetail = event && typeof event === 'object' && 'detail' in event;
  const pre = document.createElement('pre');
  pre.className = 'event-detail';
  pre.innerHTML = highlightJson(hasDetail ? event.detail : event);
  if (hasDetail) {
    const label = document.createElement('span');
    label.className = 'label-detail';
    label.textContent = 'detail';
    const full = document.createElement('details');
    const summary = document.createElement('summary');
    summary.textContent = 'full event JSON';
    const fullPre = document.createElement('pre');
    fullPre.className = 'event-json';
    fullPre.innerHTML = highlightJson(event);
    full.append(summary, fullPre);
    li.append(head, label, pre, full);
  } else li.append(head, pre);
  els.events.prepend(li);
  setTimeout(() => li.classList.remove('fresh'), 1300);
  while (els.events.childElementCount > MAX_EVENTS) els.events.lastElementChild.remove();
}

function tickRate() {
  const now = performance.now();
  while (arrivals.length && now - arrivals[0] > 5000) arrivals.shift();
  els.eps.textContent = (arrivals.length / 5).toFixed(1);
  if (client) els.connects.textContent = String(client.stats.connects);
}

// ------------------------------------------------------------------ publish
function ingestUrl() {
  const explicit = els.ingest.value.trim();
  if (explicit) return explicit;
  const ws = els.url.value.trim();
  if (!/^wss?:\/\//i.test(ws)) return '';
  const u = new URL(ws);
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  u.pathname = '/events';
  u.search = '';
  return u.toString();
}

async function onPublish(e) {
  e.preventDefault();
  const url = ingestUrl();
  if (!url) return note(els.pubResult, 'Set the ingest URL (or the WebSocket URL).', 'bad');
  let detail;
  try {
    detail = JSON.parse(els.pubDetail.value || '{}');
    els.pubDetail.classList.remove('invalid');
  } catch (err) {
    els.pubDetail.classList.add('invalid');
    return note(els.pubResult, `detail is not JSON: ${err.message}`, 'bad');
  }
  const body = { source: els.pubSource.value.trim(), 'detail-type': els.pubType.value.trim(), detail };
  els.publish.disabled = true;
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      /* not JSON */
    }
    if (!res.ok) throw new Error(`${res.status}: ${json?.error ?? json?.Error ?? text}`);
    if (json?.FailedEntryCount) throw new Error(`rejected: ${JSON.stringify(json.Entries)}`);
    note(els.pubResult, `✓ published ${json?.Entries?.[0]?.EventId ?? ''}`, 'ok');
  } catch (err) {
    note(els.pubResult, `✗ ${err.message}`, 'bad');
  } finally {
    els.publish.disabled = false;
  }
}

// ------------------------------------------------------------------ misc
function note(el, text, cls = 'hint') {
  el.textContent = text ?? '';
  el.className = cls;
  if (el === els.connNote || el === els.subNote || el === els.pubResult) el.classList.add('hint-line');
}

// ------------------------------------------------------------------ identity (dev tokens)
/** A token for `tenant` from the dev-mode server (`POST /demo/token`). */
async function mintToken(tenant) {
  const res = await fetch('token', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tenant }),
  });
  const body = await res.json();
  if (!res.ok || typeof body.token !== 'string') throw new Error(body.error ?? `token: HTTP ${res.status}`);
  return body.token;
}

/** Dev mode with `identity.hmac_secret`: a Tenant field (empty = API key only) and who we are. */
function addTenantField() {
  if ($('tenant')) return;
  const label = document.createElement('label');
  label.textContent = 'Tenant (dev token; empty = API key only)';
  const input = document.createElement('input');
  Object.assign(input, { id: 'tenant', type: 'text', spellcheck: false, placeholder: 't1' });
  input.dataset.testid = 'tenant';
  label.append(input);
  const whoami = document.createElement('p');
  whoami.id = 'whoami';
  whoami.className = 'hint';
  whoami.dataset.testid = 'whoami';
  const row = els.connForm.querySelector('.row');
  els.connForm.insertBefore(label, row);
  els.connForm.insertBefore(whoami, row);
}

async function loadConfig() {
  // Served by `eventgate serve --dev` at /demo/config.json; absent when opened as static files.
  if (location.protocol === 'file:') return null;
  try {
    const res = await fetch('config.json', { cache: 'no-store' });
    if (!res.ok) return null;
    return await res.json();
  } catch {
    return null;
  }
}

async function init() {
  window.eventgateDemo = { client: null, examples: EXAMPLES };
  els.connForm.addEventListener('submit', (e) => {
    e.preventDefault();
    connect();
  });
  els.disconnect.addEventListener('click', disconnect);
  els.subForm.addEventListener('submit', onSubscribeSubmit);
  els.pubForm.addEventListener('submit', onPublish);
  els.pattern.addEventListener('input', () => showPatternError(null));
  els.clear.addEventListener('click', () => {
    els.events.textContent = '';
  });
  for (const b of document.querySelectorAll('[data-example]')) {
    b.addEventListener('click', () => loadExample(b.dataset.example));
  }
  // Tab inserts two spaces in the JSON editors.
  for (const ta of [els.pattern, els.pubDetail]) {
    ta.addEventListener('keydown', (e) => {
      if (e.key !== 'Tab' || e.shiftKey) return;
      e.preventDefault();
      ta.setRangeText('  ', ta.selectionStart, ta.selectionEnd, 'end');
    });
  }
  setInterval(tickRate, 500);
  renderRules();

  const params = new URLSearchParams(location.search);
  const cfg = await loadConfig();
  if (cfg) {
    els.url.value ||= cfg.url ?? '';
    els.apiKey.value ||= cfg.apiKey ?? '';
    els.ingest.value ||= cfg.ingestUrl ?? '';
    note(els.connNote, 'Pre-filled from config.json (dev mode).', 'hint');
    if (cfg.tokens) addTenantField();
  }
  if (params.get('tenant') && $('tenant')) $('tenant').value = params.get('tenant');
  if (params.get('url')) els.url.value = params.get('url');
  if (params.get('apiKey')) els.apiKey.value = params.get('apiKey');
  document.body.dataset.ready = 'true';
  // Dev mode (config.json filled the fields) connects by itself; `?autoconnect` does the same
  // for fields given in the URL, `?autoconnect=0` turns it off.
  const auto = params.has('autoconnect') ? params.get('autoconnect') !== '0' : Boolean(cfg);
  if (auto && els.url.value && els.apiKey.value) connect();
}

init();
