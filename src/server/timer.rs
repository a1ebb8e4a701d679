//! The clock behind HTTP/1 connection deadlines (`header_read_timeout`): coarse, and free of system calls.
//!
//! hyper arms a fresh deadline each time a keep-alive connection starts waiting for its next request head,
//! and drops it as soon as the head has arrived. On tokio's timer each of those registrations, being
//! earlier than anything else pending, woke the runtime's own driver with an `eventfd` write: 0.4 system
//! calls and an extra wake-up per request, for a deadline that almost never fires. Here a deadline is an
//! entry in a map, and one task wakes whatever has expired every [`TICK`], so a deadline fires up to one
//! tick late, which does not matter for a limit measured in seconds.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often expired deadlines are looked for: the most a deadline can fire late.
pub const TICK: Duration = Duration::from_millis(100);

/// A [`hyper::rt::Timer`] whose sleeps are woken by [`CoarseTimer::spawn_ticker`]'s task.
#[derive(Debug, Clone, Default)]
pub struct CoarseTimer {
    deadlines: Arc<Deadlines>,
}

#[derive(Debug, Default)]
struct Deadlines {
    /// Pending sleeps by (deadline, id); the id keeps equal deadlines apart.
    waiting: Mutex<BTreeMap<(Instant, u64), Waker>>,
    next_id: AtomicU64,
}

impl Deadlines {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<(Instant, u64), Waker>> {
        // The map stays consistent even if a holder panicked: keep going.
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes every sleep whose deadline has passed.
    fn fire(&self, now: Instant) {
        let due = {
            let mut waiting = self.lock();
            let later = waiting.split_off(&(now, u64::MAX));
            std::mem::replace(&mut *waiting, later)
        };
        due.into_values().for_each(Waker::wake);
    }
}

impl CoarseTimer {
    /// Starts the task that fires deadlines; it ends on its own once every clone of this timer is gone.
    pub fn spawn_ticker(&self) -> tokio::task::JoinHandle<()> {
        let deadlines: Weak<Deadlines> = Arc::downgrade(&self.deadlines);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(TICK);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                ticks.tick().await;
                let Some(deadlines) = deadlines.upgrade() else { return };
                deadlines.fire(Instant::now());
            }
        })
    }
}

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let id = self.deadlines.next_id.fetch_add(1, Ordering::Relaxed);
        Box::pin(CoarseSleep { deadlines: self.deadlines.clone(), key: (deadline, id), registered: false })
    }
}

/// One deadline. It enters the map only when first polled before its deadline, and leaves it when it
/// fires or is dropped.
struct CoarseSleep {
    deadlines: Arc<Deadlines>,
    key: (Instant, u64),
    registered: bool,
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.key.0 {
            return Poll::Ready(());
        }
        let mut waiting = this.deadlines.lock();
        match waiting.get_mut(&this.key) {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            Some(waker) => waker.clone_from(cx.waker()),
            None => {
                waiting.insert(this.key, cx.waker().clone());
            }
        }
        this.registered = true;
        Poll::Pending
    }
}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        if self.registered {
            self.deadlines.lock().remove(&self.key);
        }
    }
}

impl hyper::rt::Sleep for CoarseSleep {}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    #[tokio::test]
    async fn a_sleep_fires_within_a_tick_of_its_deadline() {
        let timer = CoarseTimer::default();
        let ticker = timer.spawn_ticker();
        let started = Instant::now();
        timer.sleep(Duration::from_millis(150)).await;
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(150), "fired early: {elapsed:?}");
        // It fires at all, without a tokio timer of its own (generous: a loaded machine schedules late).
        assert!(elapsed < Duration::from_secs(5), "fired late: {elapsed:?}");
        assert!(timer.deadlines.lock().is_empty(), "a fired sleep is no longer waiting");
        ticker.abort();
    }

    #[tokio::test]
    async fn a_dropped_sleep_leaves_nothing_behind_and_the_ticker_ends_with_the_timer() {
        let timer = CoarseTimer::default();
        let ticker = timer.spawn_ticker();
        let mut sleep = timer.sleep(Duration::from_secs(60));
        assert!(futures_poll_once(&mut sleep).is_pending());
        assert_eq!(timer.deadlines.lock().len(), 1);
        drop(sleep);
        assert!(timer.deadlines.lock().is_empty());
        drop(timer);
        tokio::time::timeout(TICK * 20, ticker).await.expect("the ticker ends").expect("no panic");
    }

    #[test]
    fn fire_wakes_only_what_is_due() {
        let timer = CoarseTimer::default();
        let now = Instant::now();
        let mut soon = timer.sleep_until(now + Duration::from_secs(1));
        let mut late = timer.sleep_until(now + Duration::from_secs(3600));
        assert!(futures_poll_once(&mut soon).is_pending());
        assert!(futures_poll_once(&mut late).is_pending());
        timer.deadlines.fire(now + Duration::from_secs(2));
        let waiting = timer.deadlines.lock();
        assert_eq!(waiting.len(), 1);
        assert!(waiting.keys().all(|(deadline, _)| *deadline == now + Duration::from_secs(3600)));
    }

    fn futures_poll_once(sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>) -> Poll<()> {
        sleep.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }
}
