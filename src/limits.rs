//! Abuse limits enforced before a connection or a publish costs anything: who the client is
//! (peer address, or `X-Forwarded-For` behind a trusted proxy), how many WebSockets are open
//! in all and per client address, how fast one address opens new ones, and how many events
//! per second one ingest token may publish.
//!
//! Owns the counters and token buckets. Does not own how a refusal is rendered (see
//! `errors`) nor the per-connection limits of a session (frame size, actions per second,
//! rules: `session` and `hub` own those).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use crate::config::Limits;

/// Why a connection or a publish was refused by a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("too many connections to this server")]
    TooManyConnections,
    #[error("too many connections from this address")]
    TooManyConnectionsFromIp,
    #[error("too many new connections from this address; retry later")]
    NewConnectionRate { retry_after: Duration },
    #[error("too many events per second for this ingest token; retry later")]
    IngestRate { retry_after: Duration },
    #[error("the request holds more events than this ingest token may publish per second")]
    IngestBatchTooLarge,
}

impl LimitError {
    /// The `limit` label of `eventgate_limit_rejections_total`.
    pub fn label(&self) -> &'static str {
        match self {
            LimitError::TooManyConnections => "max_connections",
            LimitError::TooManyConnectionsFromIp => "max_connections_per_ip",
            LimitError::NewConnectionRate { .. } => "new_connections_per_second_per_ip",
            LimitError::IngestRate { .. } | LimitError::IngestBatchTooLarge => {
                "max_ingest_events_per_second_per_token"
            }
        }
    }

    /// Whole seconds for a `Retry-After` header, at least 1.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        match self {
            LimitError::NewConnectionRate { retry_after }
            | LimitError::IngestRate { retry_after } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            LimitError::IngestBatchTooLarge => Some(1),
            _ => None,
        }
    }
}

/// Parses `10.0.0.0/8`, `::1/128` or a bare address (a /32 or /128).
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// How often idle entries are dropped from the per-key token buckets.
const RETAIN_EVERY: u64 = 1024;

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// The limits of one running gateway.
pub struct Limiter {
    max_connections: usize,
    max_per_ip: usize,
    trusted_proxies: Vec<IpNet>,
    open: Mutex<Open>,
    new_connections: Option<DefaultKeyedRateLimiter<IpAddr>>,
    ingest: Option<DefaultKeyedRateLimiter<[u8; 32]>>,
    checks: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("max_connections", &self.max_connections)
            .field("max_per_ip", &self.max_per_ip)
            .field("trusted_proxies", &self.trusted_proxies)
            .finish_non_exhaustive()
    }
}

/// A reserved WebSocket slot; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionSlot {
    limiter: Arc<Limiter>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limiter.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_ip.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

fn keyed<K: std::hash::Hash + Eq + Clone>(per_second: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(per_second).map(|rate| RateLimiter::keyed(Quota::per_second(rate)))
}

impl Limiter {
    pub fn new(limits: &Limits) -> Self {
        Self {
            max_connections: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            trusted_proxies: limits
                .trusted_proxies
                .iter()
                .filter_map(|cidr| parse_cidr(cidr))
                .collect(),
            open: Mutex::new(Open::default()),
            new_connections: keyed(limits.new_connections_per_second_per_ip),
            ingest: keyed(limits.max_ingest_events_per_second_per_token),
            checks: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy; then the
    /// right-most `X-Forwarded-For` address that is not a trusted proxy itself.
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'a [u8]>,
    ) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.is_trusted(client) {
            return client;
        }
        let hops: Vec<&str> = forwarded_for
            .filter_map(|value| std::str::from_utf8(value).ok())
            .flat_map(|value| value.split(','))
            .collect();
        for hop in hops.iter().rev() {
            if !self.is_trusted(client) {
                break;
            }
            match parse_hop(hop) {
                Some(ip) => client = ip.to_canonical(),
                None => break,
            }
        }
        client
    }

    fn retain_now_and_then(&self) {
        let checks = self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if checks % RETAIN_EVERY == RETAIN_EVERY - 1 {
            if let Some(limiter) = &self.new_connections {
                limiter.retain_recent();
            }
            if let Some(limiter) = &self.ingest {
                limiter.retain_recent();
            }
        }
    }

    /// Takes a token from the address's new-connection bucket.
    pub fn check_new_connection(&self, ip: IpAddr) -> Result<(), LimitError> {
        self.retain_now_and_then();
        let Some(limiter) = &self.new_connections else {
            return Ok(());
        };
        limiter
            .check_key(&ip)
            .map_err(|not_until| LimitError::NewConnectionRate {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            })
    }

    /// Reserves a WebSocket slot for `ip` under the global and per-address caps.
    pub fn reserve_connection(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, LimitError> {
        let mut open = self.lock();
        if self.max_connections > 0 && open.total >= self.max_connections {
            return Err(LimitError::TooManyConnections);
        }
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        if self.max_per_ip > 0 && from_ip >= self.max_per_ip {
            return Err(LimitError::TooManyConnectionsFromIp);
        }
        open.total += 1;
        open.per_ip.insert(ip, from_ip + 1);
        Ok(ConnectionSlot {
            limiter: Arc::clone(self),
            ip,
        })
    }

    /// Takes `events` tokens from the bucket of the ingest token whose digest is `token`.
    pub fn check_ingest(&self, token: &[u8; 32], events: usize) -> Result<(), LimitError> {
        self.retain_now_and_then();
        let Some(limiter) = &self.ingest else {
            return Ok(());
        };
        let Some(events) = u32::try_from(events).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        match limiter.check_key_n(token, events) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(LimitError::IngestRate {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }),
            Err(_) => Err(LimitError::IngestBatchTooLarge),
        }
    }
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(trusted: &[&str]) -> Limiter {
        Limiter::new(&Limits {
            trusted_proxies: trusted.iter().map(|t| (*t).to_owned()).collect(),
            ..Limits::default()
        })
    }

    fn xff<'a>(values: &'a [&'a str]) -> impl Iterator<Item = &'a [u8]> + 'a {
        values.iter().map(|value| value.as_bytes())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|_| panic!("{text}"))
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let limiter = limiter(&["10.0.0.0/8", "192.168.1.1"]);
        let headers = ["1.1.1.1, 2.2.2.2", "10.1.1.1"];
        // Untrusted peer: its own address, whatever the header says.
        assert_eq!(
            limiter.client_ip(ip("8.8.8.8"), xff(&headers)),
            ip("8.8.8.8")
        );
        // Trusted peer: right-most untrusted hop (10.1.1.1 is a proxy too).
        assert_eq!(
            limiter.client_ip(ip("10.0.0.2"), xff(&headers)),
            ip("2.2.2.2")
        );
        assert_eq!(
            limiter.client_ip(ip("192.168.1.1"), xff(&["[2001:db8::1]:443"])),
            ip("2001:db8::1")
        );
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            limiter.client_ip(ip("10.0.0.2"), xff(&["1.1.1.1, junk"])),
            ip("10.0.0.2")
        );
        assert_eq!(limiter.client_ip(ip("10.0.0.2"), xff(&[])), ip("10.0.0.2"));
    }

    #[test]
    fn slots_are_counted_and_freed() {
        let limiter = Arc::new(Limiter::new(&Limits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Limits::default()
        }));
        let a = ip("1.1.1.1");
        let first = limiter.reserve_connection(a);
        let second = limiter.reserve_connection(a);
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(
            limiter.reserve_connection(a).err(),
            Some(LimitError::TooManyConnectionsFromIp)
        );
        let third = limiter.reserve_connection(ip("2.2.2.2"));
        assert!(third.is_ok());
        assert_eq!(
            limiter.reserve_connection(ip("3.3.3.3")).err(),
            Some(LimitError::TooManyConnections)
        );
        drop(first);
        assert!(limiter.reserve_connection(a).is_ok());
    }

    #[test]
    fn cidrs() {
        assert!(parse_cidr("10.0.0.0/8").is_some());
        assert!(parse_cidr("::1").is_some());
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("proxy").is_none());
    }
}
