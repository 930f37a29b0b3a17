//! Capped exponential backoff with jitter, for every input that reconnects to a broker: the
//! sources and the cluster's backplanes and shared logs.
//!
//! A leaf of `inputs`: the sources and the cluster share it without importing each other.
//! Owns the delays and the wait (cut short by shutdown). Does not own what a reconnect does
//! nor the readiness it reports (the callers do).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Capped exponential backoff with jitter for reconnects.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// What every reconnecting input uses: from 100 ms, doubling up to `max`.
    pub fn reconnect(max: Duration) -> Self {
        Self::new(Duration::from_millis(100), max)
    }

    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            next: initial,
            initial,
            max,
        }
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The delay to wait now; doubles the next one up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        // Up to 20% jitter so many gateways do not reconnect in lockstep.
        let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 5000.0;
        delay.mul_f64(1.0 + jitter).min(self.max.max(self.initial))
    }

    /// Counts a reconnect and waits the next delay; false if `shutdown` was cancelled
    /// meanwhile.
    pub async fn wait(&mut self, source: &str, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        crate::telemetry::source_reconnecting(source, delay.as_millis());
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..10 {
            assert!(backoff.next_delay() <= Duration::from_secs(1));
        }
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(130));
    }
}
