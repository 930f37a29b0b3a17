// Type declarations for eventgate-client.js

export type EventGateState = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** `{ apiKey }` is used as-is; `{ stackKey, appVersionId }` gives base64(`${appVersionId}:${atob(stackKey)}`). */
export type EventGateCredentials =
  | { apiKey: string }
  | { stackKey: string; appVersionId: string };

export interface EventGateLogger {
  debug?(...args: unknown[]): void;
  info?(...args: unknown[]): void;
  warn?(...args: unknown[]): void;
  error?(...args: unknown[]): void;
}

export interface BackoffOptions {
  /** First retry delay in ms (default 500). */
  initial?: number;
  /** Upper bound in ms (default 30000). */
  max?: number;
  /** Growth per consecutive failure (default 2). */
  factor?: number;
  /** Fraction of the delay that is randomised, 0..1 (default 0.5). */
  jitter?: number;
}

/** Minimal WebSocket constructor shape: browsers' WebSocket, the `ws` package, undici. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  terminate?(): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onerror: ((ev: any) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface EventGateClientOptions {
  /** WebSocket implementation (default: globalThis.WebSocket). */
  WebSocket?: WebSocketConstructor;
  /** How long to wait for an Ack, in ms (default 10000). */
  ackTimeout?: number;
  /** How long a new socket may take to open, in ms (default: ackTimeout); then it is dropped and retried. */
  connectTimeout?: number;
  /** The server's KeepAlive interval in ms (default 30000); the watchdog fires after 2.5×. */
  keepAliveInterval?: number;
  /** Watchdog multiplier (default 2.5). */
  watchdogFactor?: number;
  /** Reconnect backoff with jitter. */
  backoff?: BackoffOptions;
  /** Logger (default: warnings and errors to console); `null` silences it. */
  logger?: EventGateLogger | null;
  /**
   * Resume after every reconnect (default true): the client sends the last `Position` it saw
   * and the server replays what it missed, then emits `recovered` or `gap`.
   */
  resume?: boolean;
  /** Keep the position across page reloads: `true` for `sessionStorage`, or a Storage-like object. */
  positionStorage?: boolean | Pick<Storage, 'getItem' | 'setItem' | 'removeItem'> | null;
  /** Storage key of the position (default `eventgate:position:<url>`). */
  positionKey?: string;
  /**
   * A signed token (JWT) sent as `Token` in the header document, for gateways whose identity
   * mode is `token` (see docs/auth.md). A function is called before every connect, and
   * before the token's `exp` to send a `Refresh` on the open connection.
   */
  token?: string | (() => string | Promise<string>);
  /** With a token function: refresh this long before `exp` (at most half the remaining life), in ms (default 60000). */
  refreshBefore?: number;
}

/** An EventBridge event as delivered to handlers (parsed from the frame's `Event` string). */
export interface EventBridgeEvent<D = unknown> {
  version?: string;
  id?: string;
  source: string;
  'detail-type': string;
  account?: string;
  time?: string;
  region?: string;
  resources?: string[];
  detail: D;
  [key: string]: unknown;
}

/** The raw `Event` frame. */
export interface EventFrame {
  Action: 'Event';
  RequestId: string;
  Rules: string[];
  /** The event's position in the server's history (absent when the server keeps none). */
  Position?: string;
  Source: string;
  Type: string;
  Event: string;
}

export type EventHandler<D = unknown> = (event: EventBridgeEvent<D>, matchedRules: string[], frame: EventFrame) => void;

/** An EventBridge event pattern, as an object or as JSON text. */
export type EventPattern = Record<string, unknown> | string;

export interface RuleInfo {
  rule: string;
  /** The pattern as sent (JSON text). */
  pattern: string;
  /** `active` once acked on the current socket, `pending` while queued or awaiting its Ack. */
  status: 'pending' | 'active';
}

export interface EventGateStats {
  connects: number;
  reconnects: number;
  events: number;
  lastEventAt: number;
}

export type EventGateErrorCode = 'rejected' | 'timeout' | 'closed' | 'superseded' | 'unsubscribed' | 'hello' | 'error';

export class EventGateError extends Error {
  name: 'EventGateError';
  code: EventGateErrorCode;
  rule?: string;
  requestId?: string;
  /** The server's Ack message, e.g. "invalid pattern: detail.x: ...". */
  serverMessage?: string;
}

export interface EventGateClientEvents {
  state: (state: EventGateState, previous: EventGateState) => void;
  event: (event: EventBridgeEvent, matchedRules: string[], frame: EventFrame) => void;
  error: (error: Error) => void;
  /** A rule was added, acked, rejected or removed, or all went back to `pending` on a drop. */
  rules: (rules: RuleInfo[]) => void;
  /** After a reconnect: `count` missed events were replayed (before any live one). */
  recovered: (count: number) => void;
  /** After a reconnect: events were missed and cannot be replayed (the server's reason); refetch state. */
  gap: (reason: string) => void;
}

export class EventGateClient {
  constructor(url: string, credentials: EventGateCredentials, options?: EventGateClientOptions);

  readonly url: string;
  readonly apiKey: string;
  /** The connection Id sent in the header; fixed for this instance across reconnects. */
  readonly id: string;
  readonly ackTimeout: number;
  readonly connectTimeout: number;
  readonly keepAliveInterval: number;
  readonly watchdogTimeout: number;
  readonly state: EventGateState;
  readonly rules: RuleInfo[];
  readonly stats: EventGateStats;
  /** Whether the client resumes after reconnects. */
  readonly resume: boolean;
  /** The last position seen (null before any, or after a gap). */
  readonly position: string | null;

  /** Property-style state callback, called before `on('state')` listeners. */
  onstatechange: ((state: EventGateState, previous: EventGateState) => void) | null;

  /** Add a listener; returns a function that removes it. */
  on<K extends keyof EventGateClientEvents>(name: K, fn: EventGateClientEvents[K]): () => void;
  off<K extends keyof EventGateClientEvents>(name: K, fn: EventGateClientEvents[K]): void;

  /**
   * Create or replace a rule. Resolves on Ack Ok; rejects with an EventGateError carrying the
   * server's message on Ack Error, or after `ackTimeout`. Queued while disconnected.
   */
  subscribe<D = unknown>(rule: string, pattern: EventPattern, handler?: EventHandler<D>): Promise<void>;

  /** Remove a rule; resolves on Ack Ok (immediately when disconnected). */
  unsubscribe(rule: string): Promise<void>;

  /** Stop everything: socket, timers, pending requests (rejected quietly). Idempotent. */
  close(): void;
}

export default EventGateClient;

export function resolveApiKey(credentials: EventGateCredentials | string): string;
export function buildConnectUrl(url: string, apiKey: string, id: string, token?: string): string;
export function encodeHeader(header: { host: string; apiKey: string; id: string; token?: string }): string;
/** The `exp` claim of a JWT (seconds since 1970), or null. */
export function tokenExpiry(token: string): number | null;
export function hostWithoutPort(url: string): string;
export function randomUuid(): string;
export function base64EncodeUtf8(text: string): string;
export function base64DecodeUtf8(b64: string): string;
export function backoffDelay(attempt: number, backoff?: BackoffOptions, random?: () => number): number;
