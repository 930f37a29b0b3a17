//! The accept loop: TCP connections, the optional TLS handshake, the first request head of
//! each connection, HTTP/1.1 (and h2c) through hyper, the client address for
//! `ConnectInfo`, and graceful shutdown of HTTP connections.
//!
//! Owns the listening socket's accept backlog and the time a client has to finish its TLS
//! handshake and request head (`limits.upgrade_timeout`, against slowloris). A connection
//! whose first request is a `GET` on a WebSocket path goes straight to the
//! [`WebSocketRoute`] with its parsed head, not through hyper and the router: that is the
//! hot path of a connect storm. Every other connection is served by hyper, which sees the
//! bytes already read as if they were still unread. Every HTTP/1.x request through hyper
//! first passes the RFC 9112 `Host` check (400 and close otherwise). Does not own routes,
//! request bodies (handlers read them within `limits.body_timeout`, see `http_body`) or the
//! upgrade's checks (see `server` and `handshake`) nor WebSocket sessions (the server tracks
//! and closes those).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::handshake::{HostError, Parsed, RequestHead};
use crate::telemetry;
use crate::tls::Tls;

/// The `limit` label for clients too slow with their handshake or request head.
const UPGRADE_TIMEOUT: &str = "upgrade_timeout";

/// Pending connections the kernel queues before `accept` (tokio's default is 128; a connect
/// storm overflows that and the dropped SYNs are retried only after a second). The kernel
/// caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `address` with `SO_REUSEADDR` and a backlog of [`LISTEN_BACKLOG`].
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How the listener serves each connection.
#[derive(Debug, Clone)]
pub struct Serving {
    pub tls: Option<Tls>,
    /// Time for the TLS handshake and then for each request head.
    pub upgrade_timeout: Duration,
    /// Longest wait for open HTTP connections after the shutdown signal.
    pub grace: Duration,
    /// Where first requests for a WebSocket path go.
    pub websocket: WebSocketRoute,
    /// `SO_SNDBUF` of accepted sockets (`limits.send_buffer_bytes`); 0 = the kernel's.
    pub send_buffer_bytes: usize,
}

/// Takes a connection whose first request is a `GET` on one of `paths`, with the parsed head
/// and the bytes read after it; answers it and, when it upgrades, runs the session.
pub type AcceptWebSocket = Arc<
    dyn Fn(Transport, SocketAddr, RequestHead, Vec<u8>) -> BoxFuture<'static, ()> + Send + Sync,
>;

/// The WebSocket paths and what serves a connection that asks for one of them first.
#[derive(Clone)]
pub struct WebSocketRoute {
    pub paths: Vec<String>,
    pub accept: AcceptWebSocket,
}

impl std::fmt::Debug for WebSocketRoute {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WebSocketRoute")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl WebSocketRoute {
    fn takes(&self, head: &RequestHead) -> bool {
        use crate::handshake::UpgradeRequest;
        head.method() == b"GET" && self.paths.iter().any(|path| path == head.path())
    }
}

/// A client connection's bytes: plain TCP, plain TCP shared with the dispatcher (a
/// WebSocket session's, see [`SharedTcp`]), TLS, or a connection that hyper upgraded (an
/// upgrade that came after other requests on the same connection).
pub enum Transport {
    Plain(TcpStream),
    Shared(SharedTcp),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Upgraded(TokioIo<hyper::upgrade::Upgraded>),
}

impl Transport {
    /// A plain TCP transport made shareable (a WebSocket session's: the dispatcher may
    /// write to it while the session is idle, see `session::outbound`); any other is kept.
    pub fn shared(self) -> Transport {
        match self {
            Transport::Plain(stream) => Transport::Shared(SharedTcp(Arc::new(stream))),
            other => other,
        }
    }
}

/// A plain TCP stream that a WebSocket session reads and writes and that the dispatcher may
/// also write to (with `try_write_vectored`, which takes `&TcpStream`). Reads and writes
/// go through tokio's readiness calls (`poll_*_ready`, then `try_*`), the same path as
/// `TcpStream`'s own `AsyncRead` and `AsyncWrite`. Who may write when is the business of
/// `session::outbound`, not of this type.
pub struct SharedTcp(Arc<TcpStream>);

impl SharedTcp {
    /// Another handle on the socket.
    pub fn socket(&self) -> Arc<TcpStream> {
        Arc::clone(&self.0)
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.0
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(context))?;
            // A buffer handed in initialised (tungstenite's is) is not cleared again here.
            match self.0.try_read(buffer.initialize_unfilled()) {
                Ok(read) => {
                    buffer.advance(read);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale and is now cleared: wait for the next.
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(context))?;
            match self.0.try_write(buffer) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(context))?;
            match self.0.try_write_vectored(buffers) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Shuts the write side down, as `TcpStream`'s own `poll_shutdown` does.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(self.0.as_ref()).shutdown(std::net::Shutdown::Write))
    }
}

/// Forwards a poll to whichever stream a [`Transport`] holds.
macro_rules! each_transport {
    ($transport:expr, $stream:ident => $poll:expr) => {
        match $transport.get_mut() {
            Transport::Plain($stream) => $poll,
            Transport::Shared($stream) => $poll,
            Transport::Tls($stream) => $poll,
            Transport::Upgraded($stream) => $poll,
        }
    };
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        each_transport!(self, stream => Pin::new(stream).poll_read(context, buffer))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        each_transport!(self, stream => Pin::new(stream).poll_write(context, buffer))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        each_transport!(self, stream => Pin::new(stream).poll_write_vectored(context, buffers))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(stream) => stream.is_write_vectored(),
            Transport::Shared(stream) => stream.is_write_vectored(),
            Transport::Tls(stream) => stream.is_write_vectored(),
            Transport::Upgraded(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_transport!(self, stream => Pin::new(stream).poll_flush(context))
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_transport!(self, stream => Pin::new(stream).poll_shutdown(context))
    }
}

/// A transport whose first bytes were already read: hyper reads `unread` first.
struct Rewound {
    unread: Vec<u8>,
    position: usize,
    inner: Transport,
}

impl AsyncRead for Rewound {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.position < this.unread.len() {
            let rest = &this.unread[this.position..];
            let taken = rest.len().min(buffer.remaining());
            buffer.put_slice(&rest[..taken]);
            this.position += taken;
            if this.position == this.unread.len() {
                this.unread = Vec::new();
                this.position = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(context, buffer)
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(context, buffer)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(context)
    }
}

/// What every connection of one listener is served with.
struct Shared {
    app: Router,
    websocket: WebSocketRoute,
    builder: auto::Builder<TokioExecutor>,
    deadlines: Arc<Deadlines>,
    head_timeout: Duration,
    /// Cancelled when the server stops accepting: a connection that has not sent its first
    /// request head yet is dropped then (it has nothing in flight), instead of holding the
    /// graceful shutdown for up to `shutdown_grace` (an HTTP client's pool opens such
    /// connections ahead of need).
    stopping: CancellationToken,
}

/// Most bytes read while looking for the first request head; a longer head is left to
/// hyper (which answers 431 past its own limit).
const MAX_FIRST_HEAD_BYTES: usize = 16 * 1024;

/// What the start of a connection turned out to be.
enum FirstRequest {
    /// A complete head, and the bytes read after it.
    Head(RequestHead, Vec<u8>),
    /// Anything else: the bytes read so far, for hyper.
    Other(Vec<u8>),
    /// The peer closed or failed before sending a whole head.
    Gone,
}

/// Reads until the first request head is complete, is clearly not one the listener parses,
/// or grows past [`MAX_FIRST_HEAD_BYTES`].
async fn read_first_request(io: &mut Transport) -> FirstRequest {
    let mut buffer = Vec::with_capacity(2048);
    loop {
        if buffer.capacity() - buffer.len() < 512 {
            buffer.reserve(4096);
        }
        match io.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return FirstRequest::Gone,
            Ok(_) => {}
        }
        match RequestHead::parse(&buffer) {
            Parsed::Complete { head, length } => {
                let rest = buffer.split_off(length);
                return FirstRequest::Head(head, rest);
            }
            Parsed::Partial if buffer.len() < MAX_FIRST_HEAD_BYTES => {}
            Parsed::Partial | Parsed::Other => return FirstRequest::Other(buffer),
        }
    }
}

/// Errors from accepting that concern one connection only.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

/// No deadline (a request is being handled, or an HTTP/2 connection is established).
const NO_DEADLINE: u64 = u64::MAX;

/// The request-head deadline of one connection, in milliseconds since `Deadlines::base`.
#[derive(Debug)]
struct Deadline {
    at_ms: AtomicU64,
    expired: CancellationToken,
}

/// Every open connection's deadline, checked by one sweeper task: no timer per connection
/// or per request (per-connection timers measurably slowed WebSocket fan-out under load).
#[derive(Debug)]
struct Deadlines {
    base: std::time::Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Deadline>>>,
}

impl Deadlines {
    fn new() -> Self {
        Self {
            base: std::time::Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(NO_DEADLINE - 1)
    }

    fn after(&self, timeout: Duration) -> u64 {
        self.now_ms()
            .saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(NO_DEADLINE - 1))
            .min(NO_DEADLINE - 1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Deadline>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(self: &Arc<Self>, timeout: Duration) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let deadline = Arc::new(Deadline {
            at_ms: AtomicU64::new(self.after(timeout)),
            expired: CancellationToken::new(),
        });
        self.lock().insert(id, Arc::clone(&deadline));
        Registered {
            deadlines: Arc::clone(self),
            id,
            deadline,
        }
    }

    /// Cancels every connection whose deadline has passed.
    fn sweep(&self) {
        let now = self.now_ms();
        for deadline in self.lock().values() {
            if deadline.at_ms.load(Ordering::Relaxed) <= now {
                deadline.expired.cancel();
            }
        }
    }
}

/// A connection's entry in `Deadlines`, removed on drop.
struct Registered {
    deadlines: Arc<Deadlines>,
    id: u64,
    deadline: Arc<Deadline>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.deadlines.lock().remove(&self.id);
    }
}

/// Serves one connection. A request head must arrive within `head_timeout` of the
/// connection being ready or of the previous response: the deadline is lifted while a
/// request is handled and set again when its response is ready. A connection past its
/// deadline is dropped (slowloris, idle keep-alive). A first request for a WebSocket path
/// leaves the deadlines and hyper behind for the [`WebSocketRoute`]; after an upgrade
/// through hyper the connection future ends and the WebSocket lives on without a deadline.
/// HTTP/2 connections are timed only until their first request.
async fn serve_io(mut io: Transport, peer: SocketAddr, shared: Arc<Shared>, watcher: Watcher) {
    let head_timeout = shared.head_timeout;
    let registered = shared.deadlines.register(head_timeout);
    let first = tokio::select! {
        first = read_first_request(&mut io) => first,
        () = registered.deadline.expired.cancelled() => {
            telemetry::limit_rejected(UPGRADE_TIMEOUT);
            tracing::debug!(%peer, "no complete request head in time; disconnected");
            return;
        }
        () = shared.stopping.cancelled() => {
            tracing::debug!(%peer, "no request yet at shutdown; disconnected");
            return;
        }
    };
    let unread = match first {
        FirstRequest::Head(head, rest) if shared.websocket.takes(&head) => {
            drop(registered);
            (shared.websocket.accept)(io, peer, head, rest).await;
            return;
        }
        FirstRequest::Head(head, rest) => [head.into_bytes(), rest].concat(),
        FirstRequest::Other(bytes) => bytes,
        FirstRequest::Gone => return,
    };
    // Boxed: hyper's connection state is large, and a WebSocket connection's task would
    // otherwise carry room for it all its life.
    Box::pin(serve_http(io, unread, peer, shared, watcher, registered)).await;
}

/// Serves a connection through hyper and the router, `unread` being the bytes already read.
async fn serve_http(
    io: Transport,
    unread: Vec<u8>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    watcher: Watcher,
    registered: Registered,
) {
    let head_timeout = shared.head_timeout;
    let io = Rewound {
        unread,
        position: 0,
        inner: io,
    };
    let deadline = Arc::clone(&registered.deadline);
    let service_shared = Arc::clone(&shared);
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        deadline.at_ms.store(NO_DEADLINE, Ordering::Relaxed);
        // HTTP/2 multiplexes requests on one connection: once it has sent a request, it is
        // not timed out here.
        let http1 = request.version() < hyper::Version::HTTP_2;
        let bad_host = if http1 { host_refusal(&request) } else { None };
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = service_shared.app.clone();
        let deadline = Arc::clone(&deadline);
        let shared = Arc::clone(&service_shared);
        async move {
            let response = match bad_host {
                Some(refusal) => Ok(refusal),
                None => app.call(request.map(axum::body::Body::new)).await,
            };
            if http1 {
                deadline
                    .at_ms
                    .store(shared.deadlines.after(head_timeout), Ordering::Relaxed);
            }
            Ok::<_, Infallible>(match response {
                Ok(response) => response,
                Err(never) => match never {},
            })
        }
    });
    let connection = shared
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    let connection = watcher.watch(connection.into_owned());
    tokio::select! {
        result = connection => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        }
        () = registered.deadline.expired.cancelled() => {
            telemetry::limit_rejected(UPGRADE_TIMEOUT);
            tracing::debug!(%peer, "no complete request head in time; disconnected");
        }
    }
}

/// RFC 9112 §3.2: an HTTP/1.x request with a repeated or invalid `Host`, or an HTTP/1.1
/// one without `Host`, is answered 400 (and the connection closed) before any route sees
/// it. (The first request of a connection, when it is a WebSocket upgrade, is checked by
/// `handshake::check` instead.)
fn host_refusal(request: &Request<Incoming>) -> Option<axum::response::Response> {
    let hosts = request.headers().get_all(hyper::header::HOST);
    let error = crate::handshake::check_host(hosts.iter().map(|value| value.as_bytes())).err()?;
    if error == HostError::Missing && request.version() < hyper::Version::HTTP_11 {
        return None;
    }
    telemetry::bad_request(error.label());
    Some(crate::errors::bad_request(error.to_string()))
}

/// Notifications are small writes that must leave at once: no Nagle delay (which, against a
/// client's delayed ACK, holds a second small frame for up to 40 ms). Linux copies
/// TCP_NODELAY from the listening socket to each accepted one, so it is set there once
/// instead of with a system call per connection. Returns whether that worked; elsewhere
/// each accepted socket is set on its own.
fn set_nodelay_for_accepted(listener: &TcpListener) -> bool {
    cfg!(target_os = "linux")
        && socket2::SockRef::from(listener)
            .set_tcp_nodelay(true)
            .is_ok()
}

/// Bounds the kernel's send queue of each accepted socket to `bytes` (`SO_SNDBUF`, which
/// Linux doubles for its bookkeeping and which turns off send-buffer autotuning, otherwise
/// up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB, per socket whose peer does not read).
/// Linux copies it from the listening socket to each accepted one, like TCP_NODELAY; returns
/// whether that was done, else each accepted socket is set on its own. 0 leaves the kernel's
/// default.
fn set_send_buffer_for_accepted(listener: &TcpListener, bytes: usize) -> bool {
    bytes == 0
        || (cfg!(target_os = "linux")
            && socket2::SockRef::from(listener)
                .set_send_buffer_size(bytes)
                .is_ok())
}

/// Serves `app` on `listener` until `signal` completes, then stops accepting and waits (at
/// most `grace`) for open HTTP connections to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    serving: Serving,
    signal: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own header_read_timeout (which needs its timer on HTTP/1) is not used: with it
    // the WebSocket fan-out measurably slowed down; `serve_io` keeps its own deadline.
    // h2c is served for the HTTP endpoints; WebSockets need HTTP/1.1 (`handshake`).
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let deadlines = Arc::new(Deadlines::new());
    let shared = Arc::new(Shared {
        app,
        websocket: serving.websocket.clone(),
        builder,
        deadlines: Arc::clone(&deadlines),
        head_timeout: serving.upgrade_timeout,
        stopping: CancellationToken::new(),
    });
    let tick =
        (serving.upgrade_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let sweeper = tokio::spawn({
        let deadlines = Arc::clone(&deadlines);
        async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                deadlines.sweep();
            }
        }
    });
    let nodelay_inherited = set_nodelay_for_accepted(&listener);
    let send_buffer_inherited = set_send_buffer_for_accepted(&listener, serving.send_buffer_bytes);
    tokio::pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if !nodelay_inherited {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "TCP_NODELAY not set");
            }
        }
        if !send_buffer_inherited {
            let socket = socket2::SockRef::from(&stream);
            if let Err(error) = socket.set_send_buffer_size(serving.send_buffer_bytes) {
                tracing::debug!(%error, "SO_SNDBUF not set");
            }
        }
        let shared = Arc::clone(&shared);
        let watcher = graceful.watcher();
        let timeout = serving.upgrade_timeout;
        match &serving.tls {
            None => {
                tokio::spawn(serve_io(Transport::Plain(stream), peer, shared, watcher));
            }
            Some(tls) => {
                let acceptor = tls.acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let io = Transport::Tls(Box::new(stream));
                            serve_io(io, peer, shared, watcher).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                        }
                        Err(_) => {
                            telemetry::limit_rejected(UPGRADE_TIMEOUT);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    shared.stopping.cancel();
    // The sweeper runs on through the graceful shutdown: a connection whose request head is
    // still arriving is ended by its deadline, not kept until `grace`.
    if tokio::time::timeout(serving.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over with HTTP connections still open");
    }
    sweeper.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `serve` relies on when it skips the per-connection `set_nodelay`.
    #[tokio::test]
    async fn accepted_sockets_take_nodelay_from_the_listener() -> std::io::Result<()> {
        let listener = bind("127.0.0.1:0".parse().map_err(std::io::Error::other)?)?;
        let inherited = set_nodelay_for_accepted(&listener);
        assert_eq!(inherited, cfg!(target_os = "linux"));
        let _client = TcpStream::connect(listener.local_addr()?).await?;
        let (accepted, _) = listener.accept().await?;
        if inherited {
            assert!(accepted.nodelay()?, "TCP_NODELAY was not inherited");
        }
        Ok(())
    }

    /// What `serve` relies on when it skips the per-connection `SO_SNDBUF`.
    #[tokio::test]
    async fn accepted_sockets_take_the_send_buffer_from_the_listener() -> std::io::Result<()> {
        let listener = bind("127.0.0.1:0".parse().map_err(std::io::Error::other)?)?;
        let bytes = 32 * 1024;
        let inherited = set_send_buffer_for_accepted(&listener, bytes);
        assert_eq!(inherited, cfg!(target_os = "linux"));
        let _client = TcpStream::connect(listener.local_addr()?).await?;
        let (accepted, _) = listener.accept().await?;
        if inherited {
            // Linux reports twice the value set (its bookkeeping share).
            let size = socket2::SockRef::from(&accepted).send_buffer_size()?;
            assert_eq!(size, 2 * bytes, "SO_SNDBUF was not inherited");
        }
        Ok(())
    }
}
