//! How long to wait before trying a broker again.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The first wait after every node failed once.
const FIRST: Duration = Duration::from_millis(100);
/// The longest wait before jitter; with jitter a wait is at most twice this.
const CAP: Duration = Duration::from_millis(2_500);

/// Exponential backoff (100 ms doubling up to 2.5 s) with random jitter of up to the delay
/// itself, so a thousand daemons that lost one node do not all knock on the next one at the
/// same instant. Every driver uses this one.
#[derive(Debug)]
pub struct Backoff {
    delays: ExponentialBackoff,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// A fresh backoff, starting at its first (shortest) delay.
    pub fn new() -> Self {
        Self {
            delays: ExponentialBuilder::default()
                .with_min_delay(FIRST)
                .with_max_delay(CAP)
                .with_factor(2.0)
                .with_jitter()
                .without_max_times()
                .build(),
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(CAP)
    }

    /// The longest delay [`next_delay`](Self::next_delay) can give.
    pub const fn max_delay() -> Duration {
        CAP.saturating_mul(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_and_stays_under_the_cap() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..30).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= FIRST && delays[0] <= FIRST * 2, "{delays:?}");
        assert!(
            delays.iter().all(|d| *d <= Backoff::max_delay()),
            "{delays:?}"
        );
        assert!(delays[20..].iter().all(|d| *d >= CAP), "{delays:?}");
        // Jitter: two backoffs do not wait the same.
        let mut other = Backoff::new();
        let others: Vec<Duration> = (0..30).map(|_| other.next_delay()).collect();
        assert_ne!(delays, others);
    }
}
