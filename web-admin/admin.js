// eventgate operator's console: polls the admin API (docs/operations.md, "The admin console")
// every two seconds and renders it. Plain script, no build step. Everything a client chose
// (rule names, patterns) is shown with textContent, never parsed as HTML.
'use strict';

const REFRESH_MS = 2000;
const PAGE_SIZE = 50;
const TOKEN_KEY = 'eventgate-admin-token';

const $ = (id) => document.getElementById(id);

const view = {
  after: 0, // id after which the current page starts
  nextAfter: null,
  search: '',
  lastTotals: null, // the previous poll, for rates
  needToken: false,
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function fmt(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  return Number(n).toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function ago(seconds) {
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${seconds % 60}s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
  return `${Math.floor(seconds / 86400)}d ${Math.floor((seconds % 86400) / 3600)}h`;
}

function setStatus(state, text) {
  const pill = $('status');
  pill.dataset.state = state;
  pill.textContent = text;
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = { ...(options.headers ?? {}) };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`/admin/api/${path}`, { ...options, headers, cache: 'no-store' });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.status === 401) throw new Unauthorized(body?.error ?? 'unauthorized');
  if (!response.ok) throw new Error(body?.error ?? `HTTP ${response.status}`);
  return body;
}

// ---- totals and graph ----

function renderTotals(totals) {
  const last = view.lastTotals;
  $('t-connections').textContent = fmt(totals.connections);
  $('t-announced').textContent = `${fmt(totals.announced)} announced`;
  $('t-rules').textContent = fmt(totals.rules);
  $('t-events-total').textContent = `${fmt(totals.events_in.total)} total`;
  $('t-notifications-total').textContent = `${fmt(totals.notifications_out)} total`;
  $('t-slow').textContent = fmt(totals.slow_consumer_closes);
  if (last) {
    const seconds = Math.max((totals.time - last.time) / 1000, 0.001);
    $('t-events').textContent = fmt(Math.max(totals.events_in.total - last.events_in.total, 0) / seconds, 1);
    $('t-notifications').textContent = fmt(Math.max(totals.notifications_out - last.notifications_out, 0) / seconds, 1);
  }
  view.lastTotals = totals;

  const refusals = [];
  for (const [kind, counts] of Object.entries(totals.refusals)) {
    for (const [reason, count] of Object.entries(counts)) refusals.push([`${kind}: ${reason}`, count]);
  }
  refusals.sort((a, b) => b[1] - a[1]);
  $('t-refusals').textContent = fmt(refusals.reduce((sum, [, count]) => sum + count, 0));
  renderCounts('refusals', refusals.map(([label, count]) => [label, fmt(count)]));

  renderGraph(totals.history);
}

function renderGraph(history) {
  const svg = $('graph');
  const points = history.points;
  const rates = [];
  for (let i = 1; i < points.length; i++) {
    const seconds = Math.max((points[i].t - points[i - 1].t) / 1000, 0.001);
    rates.push({
      t: points[i].t,
      in: Math.max(points[i].events_in - points[i - 1].events_in, 0) / seconds,
      out: Math.max(points[i].notifications_out - points[i - 1].notifications_out, 0) / seconds,
    });
  }
  const span = (points.length - 1) * history.interval_seconds;
  $('graph-note').textContent = rates.length
    ? `last ${ago(span)}, every ${history.interval_seconds} s, peak ${fmt(Math.max(...rates.map((r) => Math.max(r.in, r.out))), 1)}/s`
    : 'collecting…';
  svg.replaceChildren();
  const width = 600;
  const height = 120;
  const max = Math.max(1, ...rates.map((r) => Math.max(r.in, r.out)));
  const capacity = 120; // the server keeps ten minutes of five-second samples
  const x = (i) => width - (rates.length - 1 - i) * (width / (capacity - 1));
  const y = (v) => height - 4 - (v / max) * (height - 8);
  const ns = 'http://www.w3.org/2000/svg';
  for (const fraction of [0.25, 0.5, 0.75]) {
    const line = document.createElementNS(ns, 'line');
    line.setAttribute('x1', '0');
    line.setAttribute('x2', String(width));
    line.setAttribute('y1', String(y(max * fraction)));
    line.setAttribute('y2', String(y(max * fraction)));
    line.setAttribute('class', 'grid');
    svg.append(line);
  }
  for (const [series, cls] of [['in', 'in'], ['out', 'out']]) {
    if (rates.length < 2) break;
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', rates.map((r, i) => `${x(i).toFixed(1)},${y(r[series]).toFixed(1)}`).join(' '));
    line.setAttribute('class', `series ${cls}`);
    svg.append(line);
  }
}

function renderCounts(id, rows) {
  const list = $(id);
  list.replaceChildren(
    ...rows.map(([label, value, state]) =>
      el('li', state ? { 'data-state': state } : {}, el('span', { text: label }), el('b', { text: value })),
    ),
  );
  $(`no-${id}`).hidden = rows.length > 0;
}

// ---- connections ----

function rulesCell(rules) {
  if (!rules.length) return el('span', { class: 'hint', text: 'none' });
  const list = el('ul', { class: 'rules' });
  for (const rule of rules) {
    list.append(el('li', {}, el('b', { text: rule.name }), ' ', el('code', { text: rule.pattern, title: rule.pattern })));
  }
  return list;
}

function renderConnections(page) {
  const body = $('connections');
  body.replaceChildren(
    ...page.connections.map((c) => {
      const button = el('button', { type: 'button', class: 'small danger', 'data-testid': `disconnect-${c.id}`, text: 'Disconnect' });
      button.addEventListener('click', () => openDisconnect(c.id));
      const state = c.announced ? '' : ' (no Hello yet)';
      return el(
        'tr',
        { 'data-id': String(c.id), 'data-testid': 'connection' },
        el('td', { 'data-label': 'Id', text: String(c.id) }),
        el('td', { 'data-label': 'Client', title: c.peer }, el('span', { text: c.client }), el('span', { class: 'hint', text: state })),
        el('td', { 'data-label': 'Connected', title: c.connected_since, text: ago(c.connected_seconds) }),
        el('td', { 'data-label': 'Rules', class: 'rules-cell' }, rulesCell(c.rules)),
        el('td', { 'data-label': 'Queued', text: `${fmt(c.queued_messages)} / ${fmt(c.queued_bytes)} B` }),
        el('td', { 'data-label': 'Sent', text: fmt(c.notifications) }),
        el('td', { class: 'actions' }, button),
      );
    }),
  );
  $('no-connections').hidden = page.connections.length > 0;
  $('no-connections').textContent = view.search ? 'No connection has a rule matching the search.' : 'No connections.';
  const what = view.search ? 'matching' : 'open';
  $('conn-count').textContent = `${fmt(page.total)} ${what}`;
  view.nextAfter = page.next_after;
  $('next-page').disabled = page.next_after === null;
  $('first-page').disabled = view.after === 0;
}

function connectionsPath() {
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (view.after) query.set('after', String(view.after));
  if (view.search) query.set('q', view.search);
  return `connections?${query}`;
}

// ---- sources and cluster ----

function renderSources(sources) {
  renderCounts(
    'sources',
    sources.sources.map((s) => [
      `${s.name} (${s.kind}) · ${s.state}`,
      `lag ${s.lag === null ? '–' : fmt(s.lag)} · ${fmt(s.dispatched)} in · ${fmt(s.errors)} errors`,
      s.ready ? 'ok' : 'bad',
    ]),
  );
}

function renderCluster(cluster) {
  if (!cluster.enabled) {
    renderCounts('cluster', []);
    return;
  }
  const sum = (counts) => Object.values(counts).reduce((a, b) => a + b, 0);
  const rows = [
    ['backend', `${cluster.backend} · ${cluster.channel}`],
    ['this node', cluster.node_id],
  ];
  for (const [name, status] of Object.entries(cluster.backplane)) {
    rows.push([name, status.state, status.ready ? 'ok' : 'bad']);
  }
  rows.push(['forwarded', fmt(cluster.forwarded)]);
  rows.push(['not forwarded', fmt(sum(cluster.not_forwarded)), sum(cluster.not_forwarded) ? 'bad' : undefined]);
  rows.push(['received from peers', fmt(cluster.received)]);
  rows.push(['errors · reconnects', `${fmt(sum(cluster.errors))} · ${fmt(cluster.reconnects)}`]);
  for (const peer of cluster.peers) {
    rows.push([`peer ${peer.node_id}`, `heard ${ago(peer.seconds_ago)} ago · ${fmt(peer.events)} events`]);
  }
  if (!cluster.peers.length) rows.push(['peers', 'none heard yet (a node is heard when it forwards events)']);
  renderCounts('cluster', rows);
}

// ---- polling ----

let refreshing = false;
async function refresh() {
  if (refreshing || view.needToken) return;
  refreshing = true;
  try {
    const [totals, page, sources, cluster] = await Promise.all([
      api('totals'),
      api(connectionsPath()),
      api('sources'),
      api('cluster'),
    ]);
    renderTotals(totals);
    renderConnections(page);
    renderSources(sources);
    renderCluster(cluster);
    setStatus(totals.draining ? 'warn' : 'ok', totals.draining ? 'draining' : `live · ${new Date(totals.time).toLocaleTimeString()}`);
  } catch (error) {
    if (error instanceof Unauthorized) askToken(error.message);
    else setStatus('bad', `error: ${error.message}`);
  } finally {
    refreshing = false;
  }
}

function askToken(message) {
  view.needToken = true;
  setStatus('warn', 'token needed');
  $('token-error').textContent = sessionStorage.getItem(TOKEN_KEY) ? message : '';
  if (!$('token-dialog').open) $('token-dialog').showModal();
}

$('token-form').addEventListener('submit', () => {
  sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
  $('token').value = '';
  view.needToken = false;
  refresh();
});
$('token-cancel').addEventListener('click', () => $('token-dialog').close());
$('token-button').addEventListener('click', () => {
  $('token-error').textContent = '';
  $('token-dialog').showModal();
});

// ---- disconnect ----

let disconnecting = null;
function openDisconnect(id) {
  disconnecting = id;
  $('disconnect-id').textContent = String(id);
  $('disconnect-error').textContent = '';
  $('disconnect-dialog').showModal();
}
$('disconnect-cancel').addEventListener('click', () => $('disconnect-dialog').close());
$('disconnect-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    await api(`connections/${disconnecting}/disconnect`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ code: Number($('close-code').value), reason: $('close-reason').value }),
    });
    $('disconnect-dialog').close();
    refresh();
  } catch (error) {
    $('disconnect-error').textContent = error.message;
  }
});

// ---- search and paging ----

let searchTimer = null;
$('search').addEventListener('input', () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    view.search = $('search').value.trim();
    view.after = 0;
    refresh();
  }, 250);
});
$('search-form').addEventListener('submit', (event) => event.preventDefault());
$('next-page').addEventListener('click', () => {
  if (view.nextAfter === null) return;
  view.after = view.nextAfter;
  refresh();
});
$('first-page').addEventListener('click', () => {
  view.after = 0;
  refresh();
});

refresh();
setInterval(refresh, REFRESH_MS);
