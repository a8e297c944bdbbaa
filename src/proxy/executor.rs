//! The executor hyper's HTTP/2 connections spawn their per-stream tasks on.
//!
//! hyper spawns a task for every HTTP/2 stream: on the server side the
//! stream's service future (our request handler, 2.5–3.6 KB), on the client
//! side a future that waits for the response (an enum whose largest variant
//! is the whole connection, 2.6 KB). tokio moves a spawned future by value
//! several times before its first poll (into the spawn closure, the task
//! cell, the cell's box) and rewrites the task's stage when it completes, so
//! a large future is copied about six times: about 16 KB of memory traffic
//! per request on each side of the mesh hop. Boxing took 2.7k (client) and
//! 2.0k (server proxy) of about 50k instructions per request off it
//! (callgrind; docs/benchmarks.md). [`BoxingExecutor`] moves a large future
//! into a box once and spawns the box, which tokio then moves as one pointer.

use std::future::Future;

/// Futures larger than this are boxed before they are spawned; smaller ones
/// cost less to copy than to allocate.
const BOX_ABOVE_BYTES: usize = 256;

/// A `hyper::rt::Executor` on the current tokio runtime that spawns large
/// futures boxed (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BoxingExecutor;

impl<F> hyper::rt::Executor<F> for BoxingExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        // A constant per future type: the branch is resolved at compile time.
        if std::mem::size_of::<F>() > BOX_ABOVE_BYTES {
            tokio::spawn(Box::pin(fut));
        } else {
            tokio::spawn(fut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;

    /// A future that holds `N` bytes across an await and reports when done.
    async fn holding<const N: usize>(done: tokio::sync::oneshot::Sender<usize>) {
        let bytes = [1u8; N];
        tokio::task::yield_now().await;
        let _ = done.send(bytes.iter().map(|b| usize::from(*b)).sum());
    }

    #[tokio::test]
    async fn small_and_large_futures_both_run_to_completion() {
        let (small_tx, small_rx) = tokio::sync::oneshot::channel();
        let (large_tx, large_rx) = tokio::sync::oneshot::channel();
        let small = holding::<16>(small_tx);
        let large = holding::<4096>(large_tx);
        assert!(std::mem::size_of_val(&small) <= BOX_ABOVE_BYTES);
        assert!(std::mem::size_of_val(&large) > BOX_ABOVE_BYTES);
        BoxingExecutor.execute(small);
        BoxingExecutor.execute(large);
        assert_eq!(small_rx.await.ok(), Some(16));
        assert_eq!(large_rx.await.ok(), Some(4096));
    }
}
