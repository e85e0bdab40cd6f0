//! Helpers shared by the wire crate's integration tests.

use std::future::Future;
use std::time::{Duration, Instant};

/// Runs `body` on a new thread that opted in to thread-own connections
/// (`wire::local_io::local_io_here`) inside a current-thread runtime, and waits for it.
pub fn on_opted_in_thread<F>(body: impl FnOnce() -> F + Send + 'static)
where
    F: Future<Output = ()>,
{
    std::thread::spawn(move || {
        wire::local_io::local_io_here();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(body());
    })
    .join()
    .expect("opted-in thread");
}

/// Waits (at most 10 s, on the current runtime) until `up` says the thread's own
/// connection is up.
pub async fn until_own_connection_up(up: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !up() {
        assert!(Instant::now() < deadline, "own connection never came up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
