//! The accept loop: TCP connections, the optional TLS handshake, HTTP/1.1 (and h2c) with
//! upgrades, the client address for `ConnectInfo`, and graceful shutdown of HTTP
//! connections.
//!
//! Owns the listening socket's accept backlog and the time a client has to finish its TLS handshake and request head
//! (`limits.upgrade_timeout`, against slowloris). Does not own routes (see `server`) nor
//! WebSocket sessions after the upgrade (the server tracks and closes those).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

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
/// deadline is dropped (slowloris, idle keep-alive). After an upgrade the connection future
/// ends and the WebSocket lives on without a deadline. HTTP/2 connections are timed only
/// until their first request.
async fn serve_io<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    deadlines: Arc<Deadlines>,
    head_timeout: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let registered = deadlines.register(head_timeout);
    let deadline = Arc::clone(&registered.deadline);
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        deadline.at_ms.store(NO_DEADLINE, Ordering::Relaxed);
        // HTTP/2 multiplexes requests (and WebSockets, RFC 8441) on one connection: once it
        // has sent a request, it is not timed out here.
        let http1 = request.version() < hyper::Version::HTTP_2;
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        let deadline = Arc::clone(&deadline);
        let deadlines = Arc::clone(&deadlines);
        async move {
            let response = app.call(request.map(axum::body::Body::new)).await;
            if http1 {
                deadline
                    .at_ms
                    .store(deadlines.after(head_timeout), Ordering::Relaxed);
            }
            Ok::<_, Infallible>(match response {
                Ok(response) => response,
                Err(never) => match never {},
            })
        }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
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
    // As axum::serve: WebSockets over HTTP/2 (RFC 8441) on h2c.
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol();
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let deadlines = Arc::new(Deadlines::new());
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
        // Notifications are small writes that must leave at once: no Nagle delay (which,
        // against a client's delayed ACK, holds a second small frame for up to 40 ms).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
        let app = app.clone();
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        let timeout = serving.upgrade_timeout;
        match &serving.tls {
            None => {
                tokio::spawn(serve_io(
                    stream,
                    peer,
                    app,
                    builder,
                    watcher,
                    Arc::clone(&deadlines),
                    timeout,
                ));
            }
            Some(tls) => {
                let acceptor = tls.acceptor.clone();
                let deadlines = Arc::clone(&deadlines);
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_io(stream, peer, app, builder, watcher, deadlines, timeout).await;
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
    sweeper.abort();
    if tokio::time::timeout(serving.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over with HTTP connections still open");
    }
    Ok(())
}
