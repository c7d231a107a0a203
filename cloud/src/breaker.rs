//! A circuit breaker per provider: it opens after `failures` failures within `window`,
//! refuses calls for `cool_down`, then lets exactly one probe through (half-open); the
//! probe's success closes it, its failure opens it again.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    pub failures: u32,
    pub window: Duration,
    pub cool_down: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: 5,
            window: Duration::from_secs(60),
            cool_down: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    /// The gauge value of `qefleet_circuit_breaker_state`: 0 closed, 1 half-open, 2 open.
    pub fn gauge(&self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// Leave to make one call; hand it back with the call's outcome.
#[derive(Debug)]
#[must_use = "report the call's outcome with record_success or record_failure"]
pub struct Permit {
    probe: bool,
}

#[derive(Debug, Default)]
struct Inner {
    failures: VecDeque<Instant>,
    opened_at: Option<Instant>,
    probing: bool,
}

#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain data: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        self.state_at(Instant::now())
    }

    pub fn state_at(&self, now: Instant) -> BreakerState {
        let inner = self.lock();
        match inner.opened_at {
            None => BreakerState::Closed,
            Some(_) if inner.probing => BreakerState::HalfOpen,
            Some(at) if now.duration_since(at) >= self.settings.cool_down => BreakerState::HalfOpen,
            Some(_) => BreakerState::Open,
        }
    }

    /// A permit when closed, or the one probe when the cool-down has passed; `None` when
    /// open (or a probe is already out).
    pub fn try_acquire(&self) -> Option<Permit> {
        self.try_acquire_at(Instant::now())
    }

    pub fn try_acquire_at(&self, now: Instant) -> Option<Permit> {
        let mut inner = self.lock();
        match inner.opened_at {
            None => Some(Permit { probe: false }),
            Some(at) if !inner.probing && now.duration_since(at) >= self.settings.cool_down => {
                inner.probing = true;
                Some(Permit { probe: true })
            }
            Some(_) => None,
        }
    }

    pub fn record_success(&self, permit: Permit) {
        let mut inner = self.lock();
        if permit.probe || inner.opened_at.is_none() {
            *inner = Inner::default();
        }
    }

    pub fn record_failure(&self, permit: Permit) {
        self.record_failure_at(permit, Instant::now());
    }

    pub fn record_failure_at(&self, permit: Permit, now: Instant) {
        let mut inner = self.lock();
        if permit.probe {
            inner.opened_at = Some(now);
            inner.probing = false;
            return;
        }
        if inner.opened_at.is_some() {
            return;
        }
        inner.failures.push_back(now);
        while inner
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.settings.window)
        {
            inner.failures.pop_front();
        }
        if inner.failures.len() as u32 >= self.settings.failures.max(1) {
            inner.opened_at = Some(now);
            inner.failures.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            failures: 3,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(5),
        })
    }

    #[test]
    fn opens_after_n_failures_within_the_window_only() {
        let b = breaker();
        let t0 = Instant::now();
        let fail = |at: Duration| {
            let p = b.try_acquire_at(t0 + at).expect("closed");
            b.record_failure_at(p, t0 + at);
        };
        fail(Duration::from_secs(0));
        fail(Duration::from_secs(1));
        // Both have left the 10 s window by 12 s: three failures in all, one within it.
        fail(Duration::from_secs(12));
        fail(Duration::from_secs(13));
        assert_eq!(
            b.state_at(t0 + Duration::from_secs(13)),
            BreakerState::Closed
        );
        fail(Duration::from_secs(14));
        assert_eq!(b.state_at(t0 + Duration::from_secs(14)), BreakerState::Open);
        assert!(b.try_acquire_at(t0 + Duration::from_secs(15)).is_none());
    }

    #[test]
    fn one_probe_at_a_time_after_the_cool_down() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            let p = b.try_acquire_at(t0).expect("closed");
            b.record_failure_at(p, t0);
        }
        assert!(
            b.try_acquire_at(t0 + Duration::from_secs(4)).is_none(),
            "cooling down"
        );
        let later = t0 + Duration::from_secs(5);
        assert_eq!(b.state_at(later), BreakerState::HalfOpen);
        let probe = b.try_acquire_at(later).expect("the probe");
        assert!(
            b.try_acquire_at(later).is_none(),
            "a second probe while one is out"
        );
        // The probe fails: open again, for another cool-down.
        b.record_failure_at(probe, later);
        assert_eq!(
            b.state_at(later + Duration::from_secs(1)),
            BreakerState::Open
        );
        let again = later + Duration::from_secs(5);
        let probe = b.try_acquire_at(again).expect("next probe");
        b.record_success(probe);
        assert_eq!(b.state_at(again), BreakerState::Closed);
        assert!(b.try_acquire_at(again).is_some());
    }

    #[test]
    fn successes_while_closed_do_not_reset_a_later_open() {
        let b = breaker();
        let ok = b.try_acquire().expect("closed");
        b.record_success(ok);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(BreakerState::Open.gauge(), 2);
    }
}
