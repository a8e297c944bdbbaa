//! The HTTP/1 header read timeout at one timer registration per connection,
//! not one per request.
//!
//! hyper arms its header read timer afresh for every request head it waits
//! for: with hyper-util's `TokioTimer` that is a boxed tokio `Sleep`,
//! registered in the runtime's timer wheel and removed again when the head
//! arrives. On a keep-alive connection that is per request an allocation, a
//! clock read, and two trips through the time driver's lock: about 3 % of
//! the proxy's user-space instructions (callgrind; docs/benchmarks.md).
//!
//! [`HeadTimer`] is the `hyper::rt::Timer` of one client connection. It owns
//! one tokio `Sleep`; the `HeadSleep`s it hands hyper only carry their
//! deadline. Polling one polls the shared `Sleep`, which stays armed where
//! it is while that is no later than the deadline asked for. Deadlines only
//! move forward (now + the timeout), so the shared timer moves when it fires
//! early, at most once per timeout period, not per request. The timeout
//! means what it means in hyper: a request head must be complete within the
//! timeout of hyper starting to wait for it.
//!
//! Nothing else uses it: hyper's HTTP/1 server asks its timer only for the
//! header read timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// One connection's timer; see the module docs.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeadTimer {
    shared: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

/// A deadline on the connection's one timer.
#[derive(Debug)]
struct HeadSleep {
    deadline: tokio::time::Instant,
    timer: HeadTimer,
}

impl HeadTimer {
    pub fn new() -> Self {
        Self::default()
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep {
            deadline: tokio::time::Instant::from_std(deadline),
            timer: self.clone(),
        })
    }

    fn now(&self) -> Instant {
        // tokio's clock, so a paused clock in tests pauses this timer too.
        tokio::time::Instant::now().into_std()
    }
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        // Only this connection's task polls it: the lock is never contended.
        let mut shared = self.timer.shared.lock().unwrap_or_else(|e| e.into_inner());
        let sleep = shared.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        loop {
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if sleep.deadline() >= deadline => return Poll::Ready(()),
                // It fired for an earlier deadline: move it to this one.
                Poll::Ready(()) => sleep.as_mut().reset(deadline),
            }
        }
    }
}

impl hyper::rt::Sleep for HeadSleep {}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use hyper::rt::Timer as _;

    use super::*;

    fn is_ready(sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        sleep.as_mut().poll(&mut cx).is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn each_sleep_ends_at_its_own_deadline_on_one_shared_timer() {
        let timer = HeadTimer::new();
        let mut first = timer.sleep(Duration::from_secs(10));
        assert!(!is_ready(&mut first));

        // The next head read on a keep-alive connection, 4 s later: the
        // shared timer still stands at the first deadline (10 s).
        tokio::time::advance(Duration::from_secs(4)).await;
        drop(first);
        let mut second = timer.sleep(Duration::from_secs(10));
        assert!(!is_ready(&mut second));

        // The first deadline passes: the shared timer fires and moves on.
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(!is_ready(&mut second), "11 s in, 7 s into the second wait");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!is_ready(&mut second), "13 s in, 9 s into the second wait");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(is_ready(&mut second), "14 s in, the second wait is over");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sooner_deadline_moves_the_shared_timer_back() {
        let timer = HeadTimer::new();
        let mut long = timer.sleep(Duration::from_secs(30));
        assert!(!is_ready(&mut long));
        drop(long);
        let mut short = timer.sleep(Duration::from_secs(1));
        let started = tokio::time::Instant::now();
        poll_fn(|cx| short.as_mut().poll(cx)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_sleep_is_woken_at_its_deadline() {
        let timer = HeadTimer::new();
        let mut first = timer.sleep(Duration::from_secs(2));
        assert!(!is_ready(&mut first));
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut second = timer.sleep(Duration::from_secs(2));
        let started = tokio::time::Instant::now();
        // Awaited, not polled by hand: the wake-up itself must come, through
        // the early firing at 2 s and the move to 3 s.
        poll_fn(|cx| second.as_mut().poll(cx)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
