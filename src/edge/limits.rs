//! Abuse limits enforced before a connection or a publish costs anything: who the client is
//! (peer address, or `X-Forwarded-For` behind a trusted proxy), how many WebSockets are open
//! in all and per client address, how fast one address opens new ones, and how many events
//! per second one ingest token may publish.
//!
//! Also the ingest backlog: the bytes of events accepted (by `POST /events` or a broker
//! source) that the dispatcher has not matched yet, bounded by
//! `limits.max_ingest_backlog_bytes` ([`Backlog`]).
//!
//! Owns the counters and token buckets. Does not own how a refusal is rendered (see
//! `errors`) nor the per-connection limits of a session (frame size, actions per second,
//! rules: `session` and `hub` own those).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use crate::config::Limits;
use crate::units::parse_cidr;

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
    #[error("the gateway is behind: events accepted but not yet matched exceed limits.max_ingest_backlog_bytes ({limit}); retry later")]
    IngestBacklogFull { limit: usize },
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
            LimitError::IngestBacklogFull { .. } => "max_ingest_backlog_bytes",
        }
    }

    /// Whole seconds for a `Retry-After` header, at least 1.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        match self {
            LimitError::NewConnectionRate { retry_after }
            | LimitError::IngestRate { retry_after } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            LimitError::IngestBatchTooLarge | LimitError::IngestBacklogFull { .. } => Some(1),
            _ => None,
        }
    }
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

/// The ingest backlog: bytes of event JSON handed to the dispatcher and not yet matched.
/// Ingest takes room with [`Backlog::try_hold`] and is refused when there is none; broker
/// sources wait for room with [`Backlog::hold`] (they acknowledge only after the hand-off,
/// so waiting slows their consumption instead of losing messages). The dispatcher drops the
/// [`BacklogHeld`] of a batch once it has matched the batch, which frees the room.
#[derive(Debug)]
pub struct Backlog {
    bytes: AtomicUsize,
    limit: usize,
    room: tokio::sync::Notify,
}

/// Room taken in the [`Backlog`]; freed on drop.
#[derive(Debug)]
pub struct BacklogHeld {
    backlog: Arc<Backlog>,
    bytes: usize,
}

impl Drop for BacklogHeld {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let left = self.backlog.bytes.fetch_sub(self.bytes, Ordering::AcqRel) - self.bytes;
        crate::telemetry::ingest_backlog(left);
        self.backlog.room.notify_waiters();
    }
}

impl Backlog {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            bytes: AtomicUsize::new(0),
            limit,
            room: tokio::sync::Notify::new(),
        })
    }

    /// What a batch of events weighs in the backlog: the bytes of their JSON.
    pub fn weight(events: &[Arc<eventgate_protocol::envelope::Event>]) -> usize {
        events.iter().map(|event| event.json.len()).sum()
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// `limits.max_ingest_backlog_bytes`.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Adds `bytes` when they fit under the limit, or (`alone`) when nothing is held, so a
    /// waiting batch larger than the limit still goes through on its own.
    fn try_add(self: &Arc<Self>, bytes: usize, alone: bool) -> Option<BacklogHeld> {
        let mut current = self.bytes.load(Ordering::Acquire);
        loop {
            let fits = current
                .checked_add(bytes)
                .is_some_and(|total| total <= self.limit)
                || (alone && current == 0);
            if !fits {
                return None;
            }
            match self.bytes.compare_exchange_weak(
                current,
                current + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    crate::telemetry::ingest_backlog(current + bytes);
                    return Some(BacklogHeld {
                        backlog: Arc::clone(self),
                        bytes,
                    });
                }
                Err(now) => current = now,
            }
        }
    }

    /// Takes room for `bytes`, or refuses at once when the backlog has none.
    pub fn try_hold(self: &Arc<Self>, bytes: usize) -> Result<BacklogHeld, LimitError> {
        self.try_add(bytes, false)
            .ok_or(LimitError::IngestBacklogFull { limit: self.limit })
    }

    /// Takes room for `bytes`, waiting until the dispatcher has freed enough.
    pub async fn hold(self: &Arc<Self>, bytes: usize) -> BacklogHeld {
        let mut waited = false;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a release between the check and the wait
            // is not missed.
            room.as_mut().enable();
            if let Some(held) = self.try_add(bytes, true) {
                return held;
            }
            if !waited {
                waited = true;
                crate::telemetry::ingest_backlog_waited();
            }
            room.await;
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

    fn held_bytes(held: &[BacklogHeld]) -> usize {
        held.iter().map(|h| h.bytes).sum()
    }

    #[test]
    fn the_backlog_refuses_past_its_limit_and_frees_on_drop() {
        let backlog = Backlog::new(100);
        let first = backlog.try_hold(60).expect("fits");
        assert_eq!(
            backlog.try_hold(41).err(),
            Some(LimitError::IngestBacklogFull { limit: 100 })
        );
        let second = backlog.try_hold(40).expect("fits exactly");
        assert_eq!(backlog.bytes(), 100);
        assert_eq!(held_bytes(&[first, second]), 100);
        // Both dropped above.
        assert_eq!(backlog.bytes(), 0);
        // More than the whole limit never fits a refusing caller...
        assert!(backlog.try_hold(101).is_err());
    }

    #[tokio::test]
    async fn a_waiting_hold_goes_through_once_room_is_freed() {
        let backlog = Backlog::new(100);
        let held = backlog.try_hold(90).expect("fits");
        let waiter = tokio::spawn({
            let backlog = Arc::clone(&backlog);
            async move { backlog.hold(50).await.bytes }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert_eq!(backlog.bytes(), 90);
        drop(held);
        let bytes = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken when room was freed")
            .expect("no panic");
        assert_eq!(bytes, 50);
        assert_eq!(backlog.bytes(), 0);
        // ...but a waiting one goes alone when nothing else is held.
        let alone = backlog.hold(500).await;
        assert_eq!(backlog.bytes(), 500);
        drop(alone);
        assert_eq!(backlog.bytes(), 0);
    }
}
