//! Reading an HTTP request body within its limits: a declared `Content-Length` over the
//! limit is refused before a byte of the body is read, a body that grows past it is refused
//! as soon as it does, a body that has not arrived in full within `limits.body_timeout` is
//! cut, and a malformed body (a bad chunk size, say) is told apart from a large one.
//!
//! Owns how a handler reads its body. Does not own how a refusal is rendered (see `errors`)
//! nor the time a request head may take (see `listener`).

use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use futures_util::StreamExt;

use crate::errors::BodyError;
use crate::telemetry;

/// The limits a body is read under.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Most bytes.
    pub max_bytes: usize,
    /// The config key of `max_bytes`, the `limit` label when it refuses a body.
    pub max_bytes_key: &'static str,
    /// Time for the whole body, from the call (`limits.body_timeout`).
    pub timeout: Duration,
}

/// Reads `body` whole within `limits`; a refusal by a limit is counted in
/// `eventgate_limit_rejections_total`.
pub async fn read(body: Body, limits: BodyLimits) -> Result<Bytes, BodyError> {
    let result = read_within(body, limits.max_bytes, limits.timeout).await;
    match &result {
        Err(BodyError::TooLarge { .. }) => telemetry::limit_rejected(limits.max_bytes_key),
        Err(BodyError::Timeout(_)) => telemetry::limit_rejected("body_timeout"),
        _ => {}
    }
    result
}

async fn read_within(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, BodyError> {
    // hyper's body knows a declared Content-Length: refuse it before waiting for the bytes.
    let declared = body.size_hint().lower();
    if usize::try_from(declared).map_or(true, |declared| declared > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    tokio::time::timeout(timeout, collect(body, limit))
        .await
        .map_err(|_| BodyError::Timeout(timeout))?
}

async fn collect(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut chunks = body.into_data_stream();
    // The usual body is one chunk: kept as it is, not copied.
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|error| BodyError::Malformed(error.to_string()))?;
        let so_far = first.as_ref().map_or(joined.len(), Bytes::len);
        if so_far + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        match first.take() {
            None if joined.is_empty() => first = Some(chunk),
            None => joined.extend_from_slice(&chunk),
            Some(earlier) => {
                joined.reserve(earlier.len() + chunk.len());
                joined.extend_from_slice(&earlier);
                joined.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(joined)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(parts: Vec<Result<&'static [u8], &'static str>>) -> Body {
        let stream = futures_util::stream::iter(
            parts
                .into_iter()
                .map(|part| part.map(Bytes::from_static).map_err(std::io::Error::other)),
        );
        Body::from_stream(stream)
    }

    const LONG: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn chunks_are_joined_up_to_the_limit() {
        let body = chunked(vec![Ok(b"ab"), Ok(b""), Ok(b"cd"), Ok(b"e")]);
        assert_eq!(
            read_within(body, 5, LONG).await,
            Ok(Bytes::from_static(b"abcde"))
        );
        let body = chunked(vec![Ok(b"abc"), Ok(b"def")]);
        assert_eq!(
            read_within(body, 5, LONG).await,
            Err(BodyError::TooLarge { limit: 5 })
        );
        assert_eq!(
            read_within(Body::from("12345"), 5, LONG).await,
            Ok(Bytes::from_static(b"12345"))
        );
        assert_eq!(read_within(Body::empty(), 5, LONG).await, Ok(Bytes::new()));
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_unread() {
        // A full body's size is known up front, as a Content-Length is.
        assert_eq!(
            read_within(Body::from("123456"), 5, LONG).await,
            Err(BodyError::TooLarge { limit: 5 })
        );
    }

    #[tokio::test]
    async fn a_broken_body_is_malformed_not_too_large() {
        let body = chunked(vec![Ok(b"ab"), Err("invalid chunk size line")]);
        match read_within(body, 5, LONG).await {
            Err(BodyError::Malformed(message)) => {
                assert!(message.contains("chunk size"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_body_that_stalls_is_cut_at_the_timeout() {
        let stalled =
            futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"ab"))])
                .chain(futures_util::stream::pending());
        let body = Body::from_stream(stalled);
        assert_eq!(
            read_within(body, 5, Duration::from_millis(50)).await,
            Err(BodyError::Timeout(Duration::from_millis(50)))
        );
    }
}
