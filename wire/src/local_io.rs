//! Thread-own connections: a thread that runs a current-thread tokio runtime (an actix
//! worker or arbiter) may ask the clients it calls to keep a connection driven by tasks on
//! that very thread.
//!
//! Owns: the per-thread opt-in ([`local_io_here`]) and each client's table of its threads'
//! connections ([`ThreadLinks`], at most [`THREAD_LINKS_MAX`]), each ended when the task
//! driving it ends.
//!
//! Why: every client here keeps one shared connection on a private I/O thread, so callers
//! may use any executor. A call then crosses to that thread and its answer crosses back,
//! and on this project's 2-core VM each cross-thread wake is an `eventfd` write that often
//! costs an inter-processor interrupt (BENCHMARKS.md, bench http round 11). A call made on
//! an opted-in thread uses that thread's own connection when it is up, so the call and its
//! answer never leave the thread; until it is up (and whenever it is down) calls use the
//! shared connection, so opting in never refuses a call.
//!
//! Must never: start a connection on a thread that did not opt in, or on one that is not
//! inside a current-thread tokio runtime at the time (the connection's tasks would have
//! nowhere to run).

use std::cell::Cell;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

/// Thread-own connections one client keeps at most; calls from further threads use the
/// shared connection.
pub const THREAD_LINKS_MAX: usize = 64;

thread_local! {
    static HERE: Cell<Option<ThreadId>> = const { Cell::new(None) };
}

/// Opts this thread in: [`crate::dc_client::DcClient`]s and
/// [`crate::remote::RemoteStore`]s called from it keep a connection driven by this
/// thread's tasks. Call it on a thread that runs a current-thread tokio runtime for its
/// whole life (an actix worker or arbiter); calls made while no such runtime is entered
/// keep using the shared connection.
pub fn local_io_here() {
    HERE.with(|here| here.set(Some(std::thread::current().id())));
}

/// What [`ThreadLinks`] needs of a client's connection.
pub(crate) trait Link: Send + Sync + 'static {
    /// Whether it is connected now.
    fn is_up(&self) -> bool;
    /// Marks it down and fails what is in flight, as on a connection loss.
    fn stopped(&self, reason: &str);
}

/// Ends a thread-own connection when the task driving it ends, also when it is dropped
/// because its thread's runtime stopped: what was in flight fails as on a connection loss,
/// and the thread's calls use the shared connection from then on.
struct Stopped<L: Link>(Arc<L>);

impl<L: Link> Drop for Stopped<L> {
    fn drop(&mut self) {
        self.0.stopped("the thread driving the connection stopped");
    }
}

/// The connections a client keeps for opted-in threads.
pub(crate) struct ThreadLinks<L> {
    links: Mutex<Vec<(ThreadId, Arc<L>)>>,
}

impl<L> Default for ThreadLinks<L> {
    fn default() -> Self {
        ThreadLinks {
            links: Mutex::new(Vec::new()),
        }
    }
}

impl<L: Link> ThreadLinks<L> {
    /// The connection a call from this thread uses: the thread's own when it opted in and
    /// that connection is up, else `shared`. An opted-in thread's first call starts its
    /// own connection, made by `make` and driven by the task `drive` returns, on this
    /// thread's runtime.
    pub(crate) fn pick<F>(
        &self,
        shared: &Arc<L>,
        make: impl FnOnce() -> Arc<L>,
        drive: impl FnOnce(Arc<L>) -> F,
    ) -> Arc<L>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self.here(make, drive) {
            Some(own) if own.is_up() => own,
            _ => Arc::clone(shared),
        }
    }

    fn here<F>(
        &self,
        make: impl FnOnce() -> Arc<L>,
        drive: impl FnOnce(Arc<L>) -> F,
    ) -> Option<Arc<L>>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let me = HERE.with(Cell::get)?;
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, link)) = links.iter().find(|(thread, _)| *thread == me) {
            return Some(Arc::clone(link));
        }
        if links.len() >= THREAD_LINKS_MAX {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
            return None;
        }
        let link = make();
        let stopped = Stopped(Arc::clone(&link));
        let task = drive(Arc::clone(&link));
        runtime.spawn(async move {
            let _stopped = stopped;
            task.await;
        });
        links.push((me, Arc::clone(&link)));
        Some(link)
    }

    /// Whether this thread has a connection of its own that is up (never starts one).
    pub(crate) fn own_up(&self) -> bool {
        let Some(me) = HERE.with(Cell::get) else {
            return false;
        };
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(thread, link)| *thread == me && link.is_up())
    }

    /// Every thread-own connection (to close them).
    pub(crate) fn all(&self) -> Vec<Arc<L>> {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, link)| Arc::clone(link))
            .collect()
    }
}
