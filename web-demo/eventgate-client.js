// eventgate-client.js — browser/Node client for the eventgate WebSocket gateway
// (LambdaSharp App.EventBus protocol with EventBridge patterns).
//
// ES module, no build step, no dependencies. Works in browsers and in Node >= 20
// (pass the `ws` package as `options.WebSocket`, or use Node's global WebSocket).
//
//   import { EventGateClient } from './eventgate-client.js';
//   const client = new EventGateClient('ws://127.0.0.1:8080/', { apiKey });
//   client.on('state', (s) => console.log('state', s));
//   await client.subscribe('users', { source: ['supermq.users'] }, (event, rules) => { ... });
//   ...
//   client.on('gap', (reason) => refetchState());   // events were missed (see `resume`)
//   client.close();

/** @typedef {'connecting'|'open'|'reconnecting'|'closed'} EventGateState */

/** A token is refreshed this long before its `exp` (at most half its remaining life), in ms. */
const DEFAULT_REFRESH_BEFORE = 60_000;

const DEFAULTS = Object.freeze({
  ackTimeout: 10_000,
  keepAliveInterval: 30_000,
  watchdogFactor: 2.5,
  backoff: Object.freeze({ initial: 500, max: 30_000, factor: 2, jitter: 0.5 }),
});

const NOOP = () => {};

const SILENT_LOGGER = Object.freeze({ debug: NOOP, info: NOOP, warn: NOOP, error: NOOP });

const DEFAULT_LOGGER = Object.freeze({
  debug: NOOP,
  info: NOOP,
  warn: (...args) => console.warn('[eventgate]', ...args),
  error: (...args) => console.error('[eventgate]', ...args),
});

// WebSocket readyState values (same in browsers, `ws` and undici).
const WS_OPEN = 1;

/** Base64 of the UTF-8 bytes of a string (btoa alone only handles Latin-1). */
export function base64EncodeUtf8(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** Decode base64 into a UTF-8 string. */
export function base64DecodeUtf8(b64) {
  const binary = atob(b64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}

/** RFC 4122 v4 UUID. crypto.randomUUID only exists in secure contexts, so fall back. */
export function randomUuid() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') {
    try {
      return c.randomUUID();
    } catch {
      /* insecure context in some browsers: fall through */
    }
  }
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * Resolve the API key from the credentials accepted by the constructor.
 * - `{ apiKey }` is used as-is.
 * - `{ stackKey, appVersionId }`: stackKey is base64(StackId) as LambdaSharp ships it,
 *   and the key is base64(`${appVersionId}:${StackId}`).
 */
export function resolveApiKey(credentials) {
  if (typeof credentials === 'string') return credentials;
  if (!credentials || typeof credentials !== 'object') {
    throw new TypeError('EventGateClient: credentials must be { apiKey } or { stackKey, appVersionId }');
  }
  if (typeof credentials.apiKey === 'string' && credentials.apiKey !== '') return credentials.apiKey;
  const { stackKey, appVersionId } = credentials;
  if (typeof stackKey === 'string' && typeof appVersionId === 'string') {
    const stackId = base64DecodeUtf8(stackKey);
    return base64EncodeUtf8(`${appVersionId}:${stackId}`);
  }
  throw new TypeError('EventGateClient: credentials must be { apiKey } or { stackKey, appVersionId }');
}

/** Host of a ws:// or wss:// URL without the port (IPv6 keeps its brackets). */
export function hostWithoutPort(url) {
  return new URL(url).hostname;
}

/** Build the `header` query value (base64 JSON, not yet URL-encoded); `Token` only when given. */
export function encodeHeader({ host, apiKey, id, token }) {
  const document = { Host: host, ApiKey: apiKey, Id: id };
  if (token) document.Token = token;
  return base64EncodeUtf8(JSON.stringify(document));
}

/** Full connection URL: the given URL plus `header=<encodeURIComponent(base64 JSON)>`. */
export function buildConnectUrl(url, apiKey, id, token) {
  const header = encodeHeader({ host: hostWithoutPort(url), apiKey, id, token });
  const hashAt = url.indexOf('#');
  const base = hashAt >= 0 ? url.slice(0, hashAt) : url;
  const sep = base.includes('?') ? (base.endsWith('?') || base.endsWith('&') ? '' : '&') : '?';
  return `${base}${sep}header=${encodeURIComponent(header)}`;
}

/** The `exp` claim of a JWT (seconds since 1970), or null when it has none or is not a JWT. */
export function tokenExpiry(token) {
  try {
    const payload = String(token).split('.')[1];
    if (!payload) return null;
    const text = base64DecodeUtf8(payload.replace(/-/g, '+').replace(/_/g, '/'));
    const exp = JSON.parse(text).exp;
    return typeof exp === 'number' && Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}

/**
 * Reconnect delay for the given 0-based attempt: min(max, initial * factor^attempt), of which
 * the `jitter` fraction (0..1) is randomised ("equal jitter" at 0.5).
 */
export function backoffDelay(attempt, { initial = 500, max = 30_000, factor = 2, jitter = 0.5 } = {}, random = Math.random) {
  const base = Math.min(max, initial * Math.pow(factor, Math.max(0, attempt)));
  const j = Math.min(1, Math.max(0, jitter));
  return Math.round(base * (1 - j) + random() * base * j);
}

/** Error raised for Ack Error, ack timeouts and client shutdown. */
export class EventGateError extends Error {
  /**
   * @param {string} message
   * @param {{code?: string, rule?: string, requestId?: string, serverMessage?: string}} [info]
   */
  constructor(message, info = {}) {
    super(message);
    this.name = 'EventGateError';
    this.code = info.code ?? 'error';
    if (info.rule !== undefined) this.rule = info.rule;
    if (info.requestId !== undefined) this.requestId = info.requestId;
    if (info.serverMessage !== undefined) this.serverMessage = info.serverMessage;
  }
}

function normalizePattern(pattern) {
  if (typeof pattern === 'string') return pattern;
  if (pattern && typeof pattern === 'object') return JSON.stringify(pattern);
  throw new TypeError('EventGateClient.subscribe: pattern must be an object or a JSON string');
}

/**
 * A deferred whose promise can be rejected "quietly": when the rejection is caused by
 * the client itself (close(), superseded subscribe), we mark the promise handled first
 * so that a caller who ignored the promise never sees an unhandled rejection.
 */
function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return {
    promise,
    settled: false,
    resolve(v) {
      if (this.settled) return;
      this.settled = true;
      resolve(v);
    },
    reject(err) {
      if (this.settled) return;
      this.settled = true;
      reject(err);
    },
    rejectQuietly(err) {
      if (this.settled) return;
      promise.catch(NOOP);
      this.reject(err);
    },
  };
}

export class EventGateClient {
  /**
   * @param {string} url ws:// or wss:// URL of the gateway
   * @param {{apiKey: string} | {stackKey: string, appVersionId: string}} credentials
   * @param {object} [options]
   */
  constructor(url, credentials, options = {}) {
    if (typeof url !== 'string' || !/^wss?:\/\//i.test(url)) {
      throw new TypeError('EventGateClient: url must be a ws:// or wss:// URL');
    }
    this.url = url;
    this.apiKey = resolveApiKey(credentials);
    /** Connection id sent in the header; fixed for the lifetime of this client. */
    this.id = randomUuid();

    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== 'function') {
      throw new TypeError(
        'EventGateClient: no WebSocket implementation (pass options.WebSocket, e.g. the `ws` package)',
      );
    }
    this._WebSocket = WS;
    this.ackTimeout = options.ackTimeout ?? DEFAULTS.ackTimeout;
    /** A socket that has not opened within this time is abandoned (a server that accepts
     * TCP but never answers the upgrade would otherwise stall reconnection forever). */
    this.connectTimeout = options.connectTimeout ?? this.ackTimeout;
    this.keepAliveInterval = options.keepAliveInterval ?? DEFAULTS.keepAliveInterval;
    this.watchdogTimeout = Math.round(this.keepAliveInterval * (options.watchdogFactor ?? DEFAULTS.watchdogFactor));
    this.backoff = { ...DEFAULTS.backoff, ...(options.backoff ?? {}) };
    this.logger = options.logger === null ? SILENT_LOGGER : { ...SILENT_LOGGER, ...(options.logger ?? DEFAULT_LOGGER) };
    /** A token (string), or an async function called before every connect and refresh. */
    this._token = options.token ?? null;
    if (this._token !== null && typeof this._token !== 'string' && typeof this._token !== 'function') {
      throw new TypeError('EventGateClient: options.token must be a string or a function returning one');
    }
    /** How long before its `exp` a token is refreshed, at most half its remaining life. */
    this.refreshBefore = options.refreshBefore ?? DEFAULT_REFRESH_BEFORE;
    this._refreshTimer = null;
    this._tokenExp = null;

    /** @type {EventGateState} */
    this._state = 'connecting';
    this._closed = false;
    this._socket = null;
    this._helloId = null;
    this._ready = false; // Hello acked on the current socket
    this._attempt = 0; // consecutive failed attempts, drives the backoff
    this._reconnectTimer = null;
    this._watchdogTimer = null;
    this._helloTimer = null;
    this._connectTimer = null;
    /** @type {Map<string, any>} rule name -> subscription record */
    this._rules = new Map();
    /** @type {Map<string, any>} RequestId -> pending request */
    this._pending = new Map();
    this._listeners = {
      state: new Set(), event: new Set(), error: new Set(), rules: new Set(), recovered: new Set(), gap: new Set(),
    };
    /** Optional property-style state callback. */
    this.onstatechange = null;
    this.stats = { connects: 0, reconnects: 0, events: 0, lastEventAt: 0 };

    // Resume (eventgate extension): the last position seen, sent back after each reconnect.
    this.resume = options.resume ?? true;
    const storage = options.positionStorage === true ? globalThis.sessionStorage : options.positionStorage;
    this._positionStorage = storage && typeof storage.getItem === 'function' ? storage : null;
    this._positionKey = options.positionKey ?? `eventgate:position:${url}`;
    /** @type {string|null} the Position of the last event received (or of the last resume) */
    this.position = null;
    try {
      this.position = this._positionStorage?.getItem(this._positionKey) ?? null;
    } catch {
      /* storage unavailable (private mode, sandbox): keep the position in memory only */
    }
    this._resumeId = null;
    this._resumeTimer = null;

    this._connect();
  }

  /** @returns {EventGateState} */
  get state() {
    return this._state;
  }

  /** Names and status of the rules this client knows about. */
  get rules() {
    return [...this._rules.values()].map((r) => ({ rule: r.rule, pattern: r.pattern, status: r.status }));
  }

  /**
   * Listen to 'state' (state, previous), 'event' (event, rules, message), 'error' (error)
   * or 'rules' (rules: the `rules` snapshot, whenever a rule is added, acked, rejected or removed),
   * 'recovered' (count: missed events replayed after a reconnect, before the live ones) or
   * 'gap' (reason: events were missed and cannot be replayed; refetch your state).
   * @returns {() => void} a function that removes the listener
   */
  on(name, fn) {
    const set = this._listeners[name];
    if (!set) throw new TypeError(`EventGateClient.on: unknown event '${name}'`);
    set.add(fn);
    return () => set.delete(fn);
  }

  off(name, fn) {
    this._listeners[name]?.delete(fn);
  }

  /**
   * Create or replace a rule. Resolves when the server acks it, rejects with the server's
   * message on Ack Error, or after `ackTimeout`. While disconnected, the request is queued
   * and sent on the next open.
   */
  subscribe(rule, pattern, handler) {
    if (typeof rule !== 'string' || rule === '') {
      return Promise.reject(new TypeError('EventGateClient.subscribe: rule must be a non-empty string'));
    }
    if (handler !== undefined && typeof handler !== 'function') {
      return Promise.reject(new TypeError('EventGateClient.subscribe: handler must be a function'));
    }
    let patternText;
    try {
      patternText = normalizePattern(pattern);
    } catch (err) {
      return Promise.reject(err);
    }
    if (this._closed) {
      return Promise.reject(new EventGateError('client is closed', { code: 'closed', rule }));
    }

    const previous = this._rules.get(rule);
    if (previous) {
      this._dropRequest(previous);
      previous.waiter?.rejectQuietly(
        new EventGateError(`subscription '${rule}' was replaced`, { code: 'superseded', rule }),
      );
    }
    const record = {
      rule,
      pattern: patternText,
      handler: handler ?? null,
      status: 'pending',
      requestId: null,
      timer: null,
      waiter: deferred(),
      // the last version the server accepted, restored if this replacement is rejected
      fallback: previous ? (previous.accepted ? previous : previous.fallback) : null,
      accepted: false,
    };
    this._rules.set(rule, record);
    if (this._ready) this._sendSubscribe(record);
    this._rulesChanged();
    return record.waiter.promise;
  }

  /**
   * Remove a rule. Events for it stop being dispatched immediately. Resolves on Ack Ok
   * (or at once when disconnected: the next socket simply won't re-subscribe it).
   */
  unsubscribe(rule) {
    const record = this._rules.get(rule);
    if (record) {
      this._rules.delete(rule);
      this._dropRequest(record);
      record.waiter?.rejectQuietly(
        new EventGateError(`subscription '${rule}' was unsubscribed`, { code: 'unsubscribed', rule }),
      );
      this._rulesChanged();
    }
    if (this._closed) return Promise.resolve();
    if (!this._ready) return Promise.resolve();
    const requestId = randomUuid();
    const waiter = deferred();
    const pending = { kind: 'unsubscribe', rule, requestId, waiter, timer: null };
    pending.timer = setTimeout(() => {
      this._pending.delete(requestId);
      waiter.reject(new EventGateError(`no ack for Unsubscribe '${rule}' within ${this.ackTimeout} ms`, {
        code: 'timeout', rule, requestId,
      }));
    }, this.ackTimeout);
    this._pending.set(requestId, pending);
    this._send({ Action: 'Unsubscribe', RequestId: requestId, Rule: rule });
    return waiter.promise;
  }

  /** Stop everything: socket, timers, pending requests. Idempotent. */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._ready = false;
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._watchdogTimer);
    clearTimeout(this._helloTimer);
    clearTimeout(this._connectTimer);
    clearTimeout(this._resumeTimer);
    this._reconnectTimer = this._watchdogTimer = this._helloTimer = this._connectTimer = this._resumeTimer = null;
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    const err = () => new EventGateError('client closed', { code: 'closed' });
    for (const record of this._rules.values()) {
      clearTimeout(record.timer);
      record.timer = null;
      record.waiter?.rejectQuietly(err());
    }
    for (const p of this._pending.values()) {
      clearTimeout(p.timer);
      p.waiter?.rejectQuietly(err());
    }
    this._pending.clear();
    this._rules.clear();
    this._teardownSocket(1000, 'client closed');
    this._setState('closed');
  }

  // ---------------------------------------------------------------- internals

  _emit(name, ...args) {
    for (const fn of [...this._listeners[name]]) {
      try {
        fn(...args);
      } catch (err) {
        this.logger.error(`'${name}' listener threw`, err);
      }
    }
  }

  _rulesChanged() {
    if (this._listeners.rules.size) this._emit('rules', this.rules);
  }

  _setState(next) {
    if (this._state === next) return;
    const prev = this._state;
    this._state = next;
    this.logger.debug(`state ${prev} -> ${next}`);
    if (typeof this.onstatechange === 'function') {
      try {
        this.onstatechange(next, prev);
      } catch (err) {
        this.logger.error('onstatechange threw', err);
      }
    }
    this._emit('state', next, prev);
  }

  _connect() {
    if (this._closed) return;
    this._reconnectTimer = null;
    if (typeof this._token !== 'function') {
      this._openSocket(this._token);
      return;
    }
    // A fresh token before every connect: a reconnect never sends an expired one.
    this._fetchToken().then(
      (token) => {
        if (!this._closed && !this._socket) this._openSocket(token);
      },
      (err) => {
        this.logger.warn('the token function failed', err);
        this._emit('error', err);
        this._scheduleReconnect();
      },
    );
  }

  async _fetchToken() {
    const token = await this._token();
    if (typeof token !== 'string' || token === '') throw new TypeError('the token function must return a non-empty string');
    return token;
  }

  _openSocket(token) {
    let socket;
    this._tokenExp = token ? tokenExpiry(token) : null;
    try {
      socket = new this._WebSocket(buildConnectUrl(this.url, this.apiKey, this.id, token ?? undefined));
    } catch (err) {
      this.logger.warn('could not create WebSocket', err);
      this._emit('error', err);
      this._scheduleReconnect();
      return;
    }
    this._socket = socket;
    this._ready = false;
    if (this.connectTimeout > 0) {
      this._connectTimer = setTimeout(() => {
        this._connectTimer = null;
        if (socket !== this._socket) return;
        this.logger.warn(`socket not open within ${this.connectTimeout} ms; reconnecting`);
        this._drop('connect timeout');
      }, this.connectTimeout);
    }
    socket.onopen = () => this._onOpen(socket);
    socket.onmessage = (ev) => this._onMessage(socket, ev);
    socket.onerror = (ev) => {
      if (socket !== this._socket) return;
      this.logger.debug('socket error', ev?.message ?? ev?.error ?? '');
    };
    socket.onclose = (ev) => this._onClose(socket, ev);
  }

  _onOpen(socket) {
    if (socket !== this._socket || this._closed) return;
    this.stats.connects++;
    clearTimeout(this._connectTimer);
    this._connectTimer = null;
    this._armWatchdog();
    this._helloId = randomUuid();
    this._helloTimer = setTimeout(() => {
      this._helloTimer = null;
      this.logger.warn(`no ack for Hello within ${this.ackTimeout} ms; reconnecting`);
      this._drop('hello timeout');
    }, this.ackTimeout);
    const hello = { Action: 'Hello', RequestId: this._helloId };
    // Resuming: the server holds live events until the Resume sent after the Subscribes.
    if (this.resume) hello.Position = this.position ?? '';
    this._send(hello);
  }

  _onHelloAck(msg) {
    clearTimeout(this._helloTimer);
    this._helloTimer = null;
    this._helloId = null;
    if (msg.Status !== 'Ok') {
      const err = new EventGateError(`Hello rejected: ${msg.Message ?? 'unknown error'}`, {
        code: 'hello', serverMessage: msg.Message,
      });
      this.logger.warn(err.message);
      this._emit('error', err);
      this._drop('hello rejected');
      return;
    }
    this._ready = true;
    this._attempt = 0;
    this._setState('open');
    this._scheduleRefresh();
    // (Re-)subscribe everything: active rules from before the drop and queued ones.
    for (const record of this._rules.values()) this._sendSubscribe(record);
    if (this.resume) this._sendResume();
  }

  /** Resume after the Subscribes: the server answers them in order, then replays. */
  _sendResume() {
    const requestId = randomUuid();
    // A gap matters when this client saw events before (a reconnect, or a stored position).
    const resuming = this.position !== null || this.stats.connects > 1;
    this._resumeId = requestId;
    // A server that does not answer Resume (not eventgate) cannot replay: say so, stay live.
    this._resumeTimer = setTimeout(() => {
      this._resumeTimer = null;
      this._resumeId = null;
      this.logger.warn(`no ack for Resume within ${this.ackTimeout} ms`);
      if (this._resuming) this._emit('gap', 'no answer to Resume');
    }, this.ackTimeout);
    this._resuming = resuming;
    this._send({ Action: 'Resume', RequestId: requestId });
  }

  _onResumeAck(msg) {
    clearTimeout(this._resumeTimer);
    this._resumeTimer = null;
    this._resumeId = null;
    if (msg.Status === 'Ok') {
      // The replayed events follow this Ack and move the position on from here.
      if (typeof msg.Position === 'string') this._setPosition(msg.Position);
      if (this._resuming) this._emit('recovered', Number(msg.Replayed ?? 0));
      return;
    }
    const reason = msg.Message ?? 'resume refused';
    this.logger.info(`resume refused: ${reason}`);
    // Live from here: the error Ack carries the position of the seam.
    this._setPosition(typeof msg.Position === 'string' ? msg.Position : null);
    if (this._resuming) this._emit('gap', reason);
  }

  _setPosition(position) {
    this.position = position;
    if (!this._positionStorage) return;
    try {
      if (position === null) this._positionStorage.removeItem(this._positionKey);
      else this._positionStorage.setItem(this._positionKey, position);
    } catch {
      /* storage full or unavailable: the in-memory position still works */
    }
  }

  /** With a token function and a token that expires: a Refresh shortly before `exp`. */
  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (typeof this._token !== 'function' || this._tokenExp === null || this._closed) return;
    const left = this._tokenExp * 1000 - Date.now();
    const lead = Math.min(this.refreshBefore, Math.max(0, left) / 2);
    this._refreshTimer = setTimeout(() => {
      this._refreshTimer = null;
      this._refresh();
    }, Math.max(0, left - lead));
  }

  async _refresh() {
    const socket = this._socket;
    let token;
    try {
      token = await this._fetchToken();
    } catch (err) {
      this.logger.warn('the token function failed; the server closes the connection at expiry', err);
      this._emit('error', err);
      return;
    }
    if (socket !== this._socket || !this._ready) return;
    const requestId = randomUuid();
    const pending = { kind: 'refresh', token };
    pending.timer = setTimeout(() => {
      this._pending.delete(requestId);
      this.logger.warn(`no ack for Refresh within ${this.ackTimeout} ms`);
    }, this.ackTimeout);
    this._pending.set(requestId, pending);
    this._send({ Action: 'Refresh', RequestId: requestId, Token: token });
  }

  _onRefreshAck(pending, msg) {
    clearTimeout(pending.timer);
    if (msg.Status === 'Ok') {
      this._tokenExp = tokenExpiry(pending.token);
      this._scheduleRefresh();
      return;
    }
    const err = new EventGateError(`Refresh rejected: ${msg.Message ?? 'unknown error'}`, {
      code: 'rejected', serverMessage: msg.Message,
    });
    this.logger.warn(err.message);
    this._emit('error', err);
  }

  _sendSubscribe(record) {
    this._dropRequest(record);
    const requestId = randomUuid();
    record.requestId = requestId;
    record.timer = setTimeout(() => {
      record.timer = null;
      this._pending.delete(requestId);
      record.requestId = null;
      const err = new EventGateError(`no ack for Subscribe '${record.rule}' within ${this.ackTimeout} ms`, {
        code: 'timeout', rule: record.rule, requestId,
      });
      this.logger.warn(err.message);
      if (record.waiter && !record.waiter.settled) {
        // A user-visible subscribe timed out: it is not active.
        if (this._rules.get(record.rule) === record) this._rules.delete(record.rule);
        this._rulesChanged();
        record.waiter.reject(err);
      } else {
        // A re-subscribe after reconnect timed out: the link is unhealthy, start over.
        this._emit('error', err);
        this._drop('resubscribe timeout');
      }
    }, this.ackTimeout);
    this._pending.set(requestId, { kind: 'subscribe', record, requestId });
    this._send({ Action: 'Subscribe', RequestId: requestId, Rule: record.rule, Pattern: record.pattern });
  }

  _dropRequest(record) {
    clearTimeout(record.timer);
    record.timer = null;
    if (record.requestId) this._pending.delete(record.requestId);
    record.requestId = null;
  }

  _onSubscribeAck(pending, msg) {
    const { record } = pending;
    clearTimeout(record.timer);
    record.timer = null;
    record.requestId = null;
    const current = this._rules.get(record.rule) === record;
    if (msg.Status === 'Ok') {
      if (current) record.status = 'active';
      record.accepted = true;
      record.fallback = null;
      record.waiter?.resolve();
      this._rulesChanged();
      return;
    }
    const serverMessage = msg.Message ?? 'subscription rejected';
    const err = new EventGateError(serverMessage, { code: 'rejected', rule: record.rule, serverMessage });
    if (current) {
      // A rejected rule is not active; the server keeps the previous version if there was one.
      if (record.fallback) {
        this._rules.set(record.rule, record.fallback);
        record.fallback.status = 'active';
      } else this._rules.delete(record.rule);
      this._rulesChanged();
    }
    if (record.waiter && !record.waiter.settled) record.waiter.reject(err);
    else {
      this.logger.warn(`re-subscribe of '${record.rule}' rejected: ${serverMessage}`);
      this._emit('error', err);
    }
  }

  _onMessage(socket, ev) {
    if (socket !== this._socket || this._closed) return;
    let msg;
    try {
      const data = typeof ev.data === 'string' ? ev.data : new TextDecoder().decode(ev.data);
      msg = JSON.parse(data);
    } catch (err) {
      this.logger.warn('ignoring non-JSON frame', err);
      return;
    }
    switch (msg && msg.Action) {
      case 'Ack': {
        if (this._helloId && msg.RequestId === this._helloId) {
          this._onHelloAck(msg);
          return;
        }
        if (this._resumeId && msg.RequestId === this._resumeId) {
          this._onResumeAck(msg);
          return;
        }
        const pending = this._pending.get(msg.RequestId);
        if (!pending) {
          this.logger.debug('ack for unknown request', msg.RequestId);
          return;
        }
        this._pending.delete(msg.RequestId);
        if (pending.kind === 'subscribe') this._onSubscribeAck(pending, msg);
        else if (pending.kind === 'refresh') this._onRefreshAck(pending, msg);
        else {
          clearTimeout(pending.timer);
          if (msg.Status === 'Ok') pending.waiter.resolve();
          else {
            pending.waiter.reject(new EventGateError(msg.Message ?? 'unsubscribe rejected', {
              code: 'rejected', rule: pending.rule, serverMessage: msg.Message,
            }));
          }
        }
        return;
      }
      case 'KeepAlive':
        this._armWatchdog();
        return;
      case 'Event':
        this._armWatchdog();
        this._onEvent(msg);
        return;
      default:
        this.logger.debug('ignoring frame', msg);
    }
  }

  _onEvent(msg) {
    let event;
    try {
      event = typeof msg.Event === 'string' ? JSON.parse(msg.Event) : msg.Event;
    } catch (err) {
      this.logger.warn('event payload is not JSON', err);
      event = msg.Event;
    }
    const rules = Array.isArray(msg.Rules) ? msg.Rules : [];
    if (typeof msg.Position === 'string') this._setPosition(msg.Position);
    this.stats.events++;
    this.stats.lastEventAt = Date.now();
    const called = new Set();
    for (const name of rules) {
      const record = this._rules.get(name);
      if (!record || !record.handler || called.has(record.handler)) continue;
      called.add(record.handler);
      try {
        record.handler(event, rules, msg);
      } catch (err) {
        this.logger.error(`handler for '${name}' threw`, err);
      }
    }
    this._emit('event', event, rules, msg);
  }

  _armWatchdog() {
    clearTimeout(this._watchdogTimer);
    if (this._closed || !(this.watchdogTimeout > 0)) return;
    this._watchdogTimer = setTimeout(() => {
      this._watchdogTimer = null;
      this.logger.warn(`no Event or KeepAlive within ${this.watchdogTimeout} ms; reconnecting`);
      this._drop('watchdog');
    }, this.watchdogTimeout);
  }

  _send(obj) {
    const socket = this._socket;
    if (!socket || socket.readyState !== WS_OPEN) return false;
    try {
      socket.send(JSON.stringify(obj));
      return true;
    } catch (err) {
      this.logger.warn('send failed', err);
      return false;
    }
  }

  _onClose(socket, ev) {
    if (socket !== this._socket || this._closed) return;
    this.logger.info(`socket closed (${ev?.code ?? '?'} ${ev?.reason ?? ''})`);
    this._socket = null;
    this._afterDrop();
  }

  /** Abandon the current socket (stalled, rejected…) and reconnect. */
  _drop(reason) {
    if (this._closed) return;
    this._teardownSocket(4000, reason);
    this._afterDrop();
  }

  _afterDrop() {
    this._ready = false;
    clearTimeout(this._watchdogTimer);
    clearTimeout(this._helloTimer);
    clearTimeout(this._connectTimer);
    clearTimeout(this._resumeTimer);
    this._watchdogTimer = this._helloTimer = this._connectTimer = this._resumeTimer = null;
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    this._helloId = null;
    this._resumeId = null;
    // In-flight subscribes are re-sent on the next socket; their promises stay pending.
    for (const record of this._rules.values()) {
      this._dropRequest(record);
      record.status = 'pending';
    }
    if (this._rules.size) this._rulesChanged();
    for (const p of this._pending.values()) {
      if (p.kind === 'refresh') clearTimeout(p.timer);
      if (p.kind !== 'unsubscribe') continue;
      clearTimeout(p.timer);
      // The new socket starts without the rule anyway.
      p.waiter.resolve();
    }
    this._pending.clear();
    this._scheduleReconnect();
  }

  _teardownSocket(code, reason) {
    const socket = this._socket;
    this._socket = null;
    if (!socket) return;
    // Keep no-op handlers (the `ws` package throws on an 'error' event without listener).
    socket.onopen = NOOP;
    socket.onmessage = NOOP;
    socket.onerror = NOOP;
    socket.onclose = NOOP;
    const graceful = reason === 'client closed' && socket.readyState === WS_OPEN;
    try {
      if (!graceful && typeof socket.terminate === 'function') socket.terminate(); // `ws`: no closing handshake
      else socket.close(graceful ? 1000 : code, String(reason).slice(0, 120));
    } catch (err) {
      this.logger.debug('close failed', err);
      try {
        socket.terminate?.();
      } catch {
        /* ignore */
      }
    }
  }

  _scheduleReconnect() {
    if (this._closed || this._reconnectTimer) return;
    this._setState('reconnecting');
    const delay = backoffDelay(this._attempt, this.backoff);
    this._attempt++;
    this.stats.reconnects++;
    this.logger.info(`reconnecting in ${delay} ms (attempt ${this._attempt})`);
    this._reconnectTimer = setTimeout(() => this._connect(), delay);
  }
}

export default EventGateClient;
