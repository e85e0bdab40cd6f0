//! Runs the storage conformance suite against the `remote` client, served by the store
//! server over loopback in front of an embedded store; and checks that bad input on one
//! connection closes only that connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

mod common;

use cells::store::conformance::{self, ConformanceTarget};
use cells::store::embedded::{EmbeddedOptions, EmbeddedStore};
use cells::store::Store;
use wire::remote::{ClientOptions, RemoteStore};
use wire::store_server::{serve, ServerOptions};

/// A short age limit so that the too-old check waits a fraction of a second.
const TEST_TRANSACTION_DURATION_MS_MAX: u64 = 300;

/// A store server on its own thread and runtime, serving an embedded store in `dir`.
struct Server {
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(dir: &std::path::Path) -> Server {
        let options = EmbeddedOptions {
            transaction_duration_ms_max: TEST_TRANSACTION_DURATION_MS_MAX,
            ..EmbeddedOptions::default()
        };
        let store: Arc<dyn Store> = EmbeddedStore::open(dir, options).expect("open the store");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, addr) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind loopback");
                bound
                    .send(listener.local_addr().expect("address").to_string())
                    .expect("report the address");
                let options = ServerOptions {
                    transaction_duration_ms_max: TEST_TRANSACTION_DURATION_MS_MAX,
                    ..ServerOptions::default()
                };
                let shutdown = async {
                    let _ = stopped.await;
                };
                serve(store, listener, options, shutdown)
                    .await
                    .expect("serve");
            });
        });
        Server {
            addr: addr.recv().expect("server address"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("server thread");
        }
    }
}

/// Each `open` serves a new empty store; `reopen` restarts the server on the same data.
struct Remote {
    dirs: Vec<tempfile::TempDir>,
    server: Option<Server>,
}

impl Remote {
    fn new() -> Self {
        Remote {
            dirs: Vec::new(),
            server: None,
        }
    }

    fn serve_last(&mut self) -> Arc<dyn Store> {
        self.server = None;
        let dir = self.dirs.last().expect("opened before").path();
        let server = Server::start(dir);
        let client = RemoteStore::connect(&server.addr, ClientOptions::default())
            .expect("connect to the store server");
        self.server = Some(server);
        Arc::new(client)
    }
}

impl ConformanceTarget for Remote {
    fn open(&mut self) -> Arc<dyn Store> {
        self.dirs
            .push(tempfile::tempdir().expect("temporary directory"));
        self.serve_last()
    }

    fn reopen(&mut self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "the test holds the last handle"
        );
        drop(store);
        self.serve_last()
    }

    fn transaction_duration_ms_max(&self) -> u64 {
        TEST_TRANSACTION_DURATION_MS_MAX
    }
}

macro_rules! conformance_tests {
    ($($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                conformance::$check(&mut Remote::new());
            }
        )*
    };
}

conformance_tests!(
    check_key_order_and_ranges,
    check_read_your_writes,
    check_clears,
    check_conflict_on_key,
    check_conflict_on_range,
    check_blind_writes_never_conflict,
    check_preconditions,
    check_atomic_visibility,
    check_limits,
    check_limits_nothing_written,
    check_transaction_too_old,
    check_durability_across_reopen,
    check_concurrent_committers,
    check_commit_versions_increase,
);

/// Reads from `stream` until the server closes it; panics if it stays open.
fn assert_closed_by_server(mut stream: TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(error) => panic!("the server kept a bad connection open: {error}"),
        }
    }
}

#[test]
fn bad_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let server = Server::start(dir.path());
    let client = RemoteStore::connect(&server.addr, ClientOptions::default()).expect("connect");
    let write = |key: &[u8], value: &[u8]| {
        let mut transaction = client.begin().expect("begin");
        transaction.set(key, value).expect("set");
        futures::executor::block_on(transaction.commit()).expect("commit")
    };
    write(b"before", b"1");

    let garbage: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),          // not a frame at all
        vec![0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0], // length far past the bound
        vec![4, 0, 0, 0, 0xEE, 1, 2, 3],             // unknown version byte
        vec![9, 0, 0, 0, 1, 0xff, 0xff, 0xff],       // truncated, then closed
        vec![3, 0, 0, 0, 1, 0xff, 0xff, 0xff],       // a whole frame of garbage
    ];
    for bytes in garbage {
        let mut raw = TcpStream::connect(&server.addr).expect("raw connect");
        raw.write_all(&bytes).expect("send garbage");
        if bytes[0] == 9 {
            // The truncated frame: the peer half-closes; the server must drop it.
            raw.shutdown(std::net::Shutdown::Write).expect("half close");
        }
        assert_closed_by_server(raw);
    }

    write(b"after", b"2");
    let read = |key: &[u8]| futures::executor::block_on(client.get(key)).expect("read");
    assert_eq!(read(b"before").as_deref(), Some(&b"1"[..]));
    assert_eq!(read(b"after").as_deref(), Some(&b"2"[..]));
}

/// A thread that opted in gets a connection of its own: calls work before it is up (on the
/// shared connection) and after (on its own), and both see the same store.
#[test]
fn an_opted_in_thread_reads_and_commits_on_its_own_connection() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let server = Server::start(dir.path());
    let client =
        Arc::new(RemoteStore::connect(&server.addr, ClientOptions::default()).expect("connect"));
    assert!(!client.own_connection_up(), "this thread did not opt in");
    let on_thread = Arc::clone(&client);
    common::on_opted_in_thread(move || async move {
        let client = on_thread;
        // The first call starts the thread's own connection and is served meanwhile.
        let mut first = client.begin().expect("begin");
        first.set(b"before", b"1").expect("set");
        first
            .commit()
            .await
            .expect("commit on the shared connection");
        common::until_own_connection_up(|| client.own_connection_up()).await;
        let mut own = client.begin().expect("begin");
        assert_eq!(
            own.get(b"before").await.expect("read").as_deref(),
            Some(&b"1"[..])
        );
        own.set(b"after", b"2").expect("set");
        own.require(b"absent", None).expect("require");
        own.commit().await.expect("commit on the own connection");
        assert_eq!(
            client.get(b"after").await.expect("get").as_deref(),
            Some(&b"2"[..])
        );
        // A precondition still fences a commit made on the own connection.
        let mut fenced = client.begin().expect("begin");
        fenced.set(b"never", b"3").expect("set");
        fenced.require(b"after", None).expect("require");
        assert!(
            fenced.commit().await.is_err(),
            "a failed precondition commits nothing"
        );
    });
    // The shared connection sees what the own connection wrote, and nothing it refused.
    let read = |key: &'static [u8]| futures::executor::block_on(client.get(key)).expect("get");
    assert_eq!(read(b"after").as_deref(), Some(&b"2"[..]));
    assert_eq!(read(b"never"), None);
    assert!(!client.own_connection_up());
}
