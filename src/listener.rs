//! The accept loop: TCP connections, the optional TLS handshake, HTTP/1.1 (and h2c) with
//! upgrades, the client address for `ConnectInfo`, and graceful shutdown of HTTP
//! connections.
//!
//! Owns the time a client has to finish its TLS handshake and request head
//! (`limits.upgrade_timeout`, against slowloris). Does not own routes (see `server`) nor
//! WebSocket sessions after the upgrade (the server tracks and closes those).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
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
use tower_service::Service;

use crate::telemetry;
use crate::tls::Tls;

/// The `limit` label for clients too slow with their handshake or request head.
const UPGRADE_TIMEOUT: &str = "upgrade_timeout";

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

async fn serve_io<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move {
            let response = app.call(request.map(axum::body::Body::new)).await;
            Ok::<_, Infallible>(match response {
                Ok(response) => response,
                Err(never) => match never {},
            })
        }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(error) = watcher.watch(connection.into_owned()).await {
        let timed_out = error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout);
        if timed_out {
            telemetry::limit_rejected(UPGRADE_TIMEOUT);
        }
        tracing::debug!(%peer, %error, "connection ended with an error");
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
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(serving.upgrade_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
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
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        match &serving.tls {
            None => {
                tokio::spawn(serve_io(stream, peer, app, builder, watcher));
            }
            Some(tls) => {
                let acceptor = tls.acceptor.clone();
                let timeout = serving.upgrade_timeout;
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_io(stream, peer, app, builder, watcher).await,
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
    if tokio::time::timeout(serving.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over with HTTP connections still open");
    }
    Ok(())
}
