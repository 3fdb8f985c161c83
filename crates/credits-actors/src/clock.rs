//! The one clock of the system. Everything that needs "now" or waits for an instant asks a
//! `Clock`; tests and `--manual-clock` use `ManualClock`, which moves only when told to.
//! This module must never be bypassed with `Utc::now()` elsewhere.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::watch;

/// A source of time that can also wait for an instant.
#[derive(Clone)]
pub enum Clock {
    System,
    Manual(Arc<ManualClock>),
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Clock::System => f.write_str("Clock::System"),
            Clock::Manual(m) => write!(f, "Clock::Manual({})", m.now()),
        }
    }
}

impl Clock {
    pub fn manual(start: DateTime<Utc>) -> Clock {
        Clock::Manual(Arc::new(ManualClock::new(start)))
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            // The store keeps microseconds (so does the manual clock): an instant with more
            // would differ between a receipt and the history, and between their sorts.
            Clock::System => Utc::now().trunc_subsecs(6),
            Clock::Manual(m) => m.now(),
        }
    }

    pub fn as_manual(&self) -> Option<&Arc<ManualClock>> {
        match self {
            Clock::Manual(m) => Some(m),
            Clock::System => None,
        }
    }

    /// Returns at or after `t` by this clock.
    pub async fn sleep_until(&self, t: DateTime<Utc>) {
        match self {
            Clock::System => {
                // Re-check after waking: the system clock may have been adjusted meanwhile.
                loop {
                    let left = t - Utc::now();
                    if left <= chrono::Duration::zero() {
                        return;
                    }
                    let left = left
                        .to_std()
                        .unwrap_or_default()
                        .min(std::time::Duration::from_secs(3600));
                    tokio::time::sleep(left).await;
                }
            }
            Clock::Manual(m) => m.sleep_until(t).await,
        }
    }
}

/// A clock that moves only forward, and only when `advance` is called.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock {
            now: watch::Sender::new(start.trunc_subsecs(6)),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    /// Moves the clock forward and returns the new instant.
    pub fn advance(&self, by: chrono::Duration) -> DateTime<Utc> {
        let by = by.max(chrono::Duration::zero());
        let by = by - chrono::Duration::nanoseconds(i64::from(by.subsec_nanos() % 1_000));
        self.now.send_modify(|t| *t += by);
        self.now()
    }

    async fn sleep_until(&self, t: DateTime<Utc>) {
        let mut rx = self.now.subscribe();
        // `wait_for` checks the current value first, so an instant already passed returns at once.
        let _ = rx.wait_for(|now| *now >= t).await;
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone, Timelike};

    use super::*;

    #[test]
    fn every_instant_is_whole_microseconds() {
        let whole = |t: DateTime<Utc>| t.nanosecond().is_multiple_of(1_000);
        for _ in 0..1_000 {
            assert!(whole(Clock::System.now()));
        }
        let start = Utc.timestamp_opt(1_800_000_000, 123_456_789).unwrap();
        let clock = Clock::manual(start);
        assert!(whole(clock.now()));
        let m = clock.as_manual().unwrap();
        assert!(whole(m.advance(Duration::nanoseconds(1_999))));
        assert_eq!(clock.now().nanosecond(), 123_457_000);
    }
}
