//! The store commits of one arbiter thread's account actors, and who hears when each is
//! done.
//!
//! Owns, per thread, the commit futures in flight, polled by one task of the thread (the
//! poller) that hands each outcome to its actor through a channel of the thread.
//!
//! Why: a store answers from its own thread. When each actor polled its own commit, every
//! answer woke that actor's task from another thread, and tokio's `LocalSet` serves such
//! wake-ups once in 31 of its turns while work of its own thread is ready (the window's
//! grants, the relay's deliveries), behind every other wake-up from another thread (a
//! batch's deliveries). Now only the poller is woken from the store's thread, once for all
//! the answers that arrived meanwhile; it hands them on from the actors' own thread, in the
//! order they came. With the registry's waker task, the median time from a store's answer
//! to its actor hearing it fell from 0.7–0.9 ms to 0.2–0.6 ms (BENCHMARKS.md round 19).
//!
//! Bounded by the commit window: an actor has at most one commit in flight, and holds a
//! place in its thread's window for it.
//!
//! Must never: drop a commit's outcome silently. If the poller is gone (the thread's
//! runtime stopped), the actor hears `unknown`, and the commit itself stands or not as the
//! store decided.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};

use futures::channel::oneshot;
use futures::future::LocalBoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};

use cells::store::{BoxFuture, CommitError};

/// What a commit's actor gets: the store's outcome.
pub(crate) type Outcome = Result<u64, CommitError>;

/// One thread's commits in flight and the task that polls them.
#[derive(Default)]
struct Poller {
    commits: RefCell<FuturesUnordered<LocalBoxFuture<'static, ()>>>,
    /// The poller task, when it waits for a commit to be added.
    task: RefCell<Option<Waker>>,
    /// Cleared when the poller task is dropped (its runtime stopped): the next commit
    /// starts a new poller.
    alive: std::cell::Cell<bool>,
}

thread_local! {
    static POLLER: RefCell<Option<Rc<Poller>>> = const { RefCell::new(None) };
}

/// Clears the poller's `alive` flag when its task is dropped.
struct AliveGuard(Rc<Poller>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.set(false);
    }
}

/// Starts this thread's poller task (call inside the thread's actix runtime).
fn start() -> Rc<Poller> {
    let poller = Rc::new(Poller::default());
    poller.alive.set(true);
    let guard = AliveGuard(Rc::clone(&poller));
    actix_rt::spawn(async move {
        let poller = &guard.0;
        std::future::poll_fn(|cx| {
            let mut commits = poller.commits.borrow_mut();
            // Each ready commit sends its outcome on: a push onto its actor's queue.
            while let Poll::Ready(Some(())) = commits.poll_next_unpin(cx) {}
            *poller.task.borrow_mut() = Some(cx.waker().clone());
            Poll::<()>::Pending
        })
        .await;
    });
    poller
}

/// Hands `commit` to this thread's poller; resolves to its outcome.
pub(crate) fn watch(commit: BoxFuture<'static, Outcome>) -> impl Future<Output = Outcome> {
    let (sender, receiver) = oneshot::channel();
    let poller = POLLER.with_borrow_mut(|poller| match poller {
        Some(running) if running.alive.get() => Rc::clone(running),
        _ => Rc::clone(poller.insert(start())),
    });
    poller.commits.borrow_mut().push(Box::pin(async move {
        // The actor may be gone (stopped with its commit in flight): the outcome stands.
        let _ = sender.send(commit.await);
    }));
    if let Some(task) = poller.task.borrow_mut().take() {
        task.wake();
    }
    async move {
        receiver.await.unwrap_or_else(|_| {
            Err(CommitError::Unknown {
                detail: "the thread's commit poller stopped before the store answered".into(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commits finished in any order reach their watchers, each with its own outcome, and
    /// a poller whose runtime stopped is replaced by the next runtime on the thread.
    #[test]
    fn every_commit_reaches_its_watcher() {
        for _ in 0..2 {
            actix_rt::System::new().block_on(async {
                let mut senders = Vec::new();
                let mut watched = Vec::new();
                for version in 0..16u64 {
                    let (sender, receiver) = oneshot::channel::<Outcome>();
                    senders.push((version, sender));
                    let commit: BoxFuture<'static, Outcome> =
                        Box::pin(async move { receiver.await.expect("answered") });
                    watched.push(watch(commit));
                }
                // Answered from another thread, last first, as a store might.
                std::thread::spawn(move || {
                    for (version, sender) in senders.into_iter().rev() {
                        sender.send(Ok(version)).expect("watched");
                    }
                })
                .join()
                .expect("answering thread");
                let outcomes = actix_rt::time::timeout(
                    std::time::Duration::from_secs(10),
                    futures::future::join_all(watched),
                )
                .await
                .expect("every watcher hears its commit");
                for (version, outcome) in outcomes.into_iter().enumerate() {
                    assert_eq!(outcome.expect("committed"), version as u64);
                }
            });
        }
    }
}
