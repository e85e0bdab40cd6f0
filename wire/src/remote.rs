//! The `remote` storage client: a [`Store`] served by `tessera store` over TCP.
//!
//! Owns: one multiplexed connection to the store server, its I/O thread (a private
//! single-threaded tokio runtime, so callers may use any executor), the requests in flight
//! on it (at most [`ClientOptions::requests_in_flight_max`], answered through oneshot
//! channels), the encoded frames waiting for the socket (at most
//! [`ClientOptions::outgoing_bytes_max`]), and reconnection with bounded backoff.
//!
//! Must never: block a caller on the network (every refusal is immediate and typed), report
//! a commit that may have reached the server as anything but [`CommitError::Unknown`], or
//! let a transaction whose server-held part died with a connection commit.
//!
//! A thread that opted in with [`crate::local_io::local_io_here`] (a DC node's own thread
//! and its actor arbiters) also gets a connection of its own, driven on it; its reads and
//! the transactions it begins use that one whenever it is up (see [`crate::local_io`]). A
//! transaction stays on the connection it began on.
//!
//! # How a transaction travels
//! `set`, `clear`, `clear_range` and `require` check the limits exactly as the embedded
//! backend does and append to a local mutation block. A read inside the transaction ships
//! the block with the read; the server applies it to a transaction it holds for this client
//! and reads there, so the read joins the read set and sees the earlier writes. `commit`
//! ships what is left in one frame; a transaction that never read commits with that single
//! frame and no round trip before it.
//!
//! # Connection loss
//! Commits in flight resolve [`CommitError::Unknown`]; reads in flight resolve a retryable
//! [`StoreError::Backend`]. While disconnected, reads fail at once with a retryable
//! [`StoreError::Backend`] and commits with [`CommitError::Overloaded`] (nothing was sent);
//! a transaction that had read on the lost connection commits as [`CommitError::Conflict`]
//! (its reads are void; rebuild it). The client reconnects in the background.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cells::store::embedded::TRANSACTION_WRITES_MAX;
use cells::store::limits::{GET_MANY_KEYS_MAX, TRANSACTION_BYTES_MAX};
use cells::store::{
    check_key, check_value, BoxFuture, CommitError, KeyValue, RangeRequest, Store, StoreError,
    StoreStats, Transaction,
};
use futures::channel::oneshot;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

use crate::frame::{FrameError, FrameReader, FRAME_BYTES_MAX, FRAME_HEADER_BYTES};
use crate::local_io::{self, ThreadLinks};
use crate::metrics::{self as wire_metrics, Role};
use crate::store_protocol::{
    decode_message, encode, encode_message, rows_to_owned, Bytes, Request, RequestFrame, Response,
    ResponseFrame, TransactionRef, WireRange, WireStats, NO_REPLY,
};

/// Default of [`ClientOptions::requests_in_flight_max`].
pub const REQUESTS_IN_FLIGHT_MAX_DEFAULT: usize = 65_536;
/// Default of [`ClientOptions::outgoing_bytes_max`].
pub const OUTGOING_BYTES_MAX_DEFAULT: usize = 256 * 1024 * 1024;
/// Buffer of the connection's socket writer.
pub const WRITE_BUFFER_BYTES: usize = 256 * 1024;

const _: () = assert!(OUTGOING_BYTES_MAX_DEFAULT >= FRAME_BYTES_MAX);

/// Settings of a [`RemoteStore`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long [`RemoteStore::connect`] keeps trying before it gives up, and the bound of
    /// each later connection attempt.
    pub connect_timeout_ms: u64,
    /// A connection with requests in flight that receives nothing for this long is cut
    /// (its requests fail as on any connection loss) and replaced.
    pub reply_timeout_ms: u64,
    /// First wait between reconnection attempts; doubled per failure up to the maximum.
    pub reconnect_backoff_ms_min: u64,
    pub reconnect_backoff_ms_max: u64,
    /// Requests awaiting an answer at once; one more is refused at once.
    pub requests_in_flight_max: usize,
    /// Encoded frames waiting for the socket, in bytes; one more is refused at once.
    pub outgoing_bytes_max: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout_ms: 5_000,
            reply_timeout_ms: 15_000,
            reconnect_backoff_ms_min: 10,
            reconnect_backoff_ms_max: 1_000,
            requests_in_flight_max: REQUESTS_IN_FLIGHT_MAX_DEFAULT,
            outgoing_bytes_max: OUTGOING_BYTES_MAX_DEFAULT,
        }
    }
}

/// What an answer completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Commit,
}

/// An answer, owned.
#[derive(Debug)]
enum Answer {
    Value(Result<Option<Vec<u8>>, StoreError>),
    Values(Result<Vec<Option<Vec<u8>>>, StoreError>),
    Rows(Result<Vec<KeyValue>, StoreError>),
    Committed(Result<u64, CommitError>),
}

/// The connection carrying a request was lost before its answer came.
#[derive(Debug)]
struct Lost {
    reason: String,
}

type Reply = oneshot::Sender<Result<Answer, Lost>>;

struct Pending {
    kind: Kind,
    reply: Reply,
    /// Leading parts of an answer split over several frames.
    values: Vec<Option<Vec<u8>>>,
    rows: Vec<KeyValue>,
}

/// Why a request was not sent.
#[derive(Debug)]
enum Refused {
    NotConnected,
    /// The request was bound to a connection that is gone.
    WrongConnection,
    QueueFull,
    TooLarge {
        bytes: usize,
    },
    Closed,
}

impl Refused {
    fn label(&self) -> &'static str {
        match self {
            Refused::NotConnected | Refused::WrongConnection => "not_connected",
            Refused::QueueFull => "queue_full",
            Refused::TooLarge { .. } => "too_large",
            Refused::Closed => "closed",
        }
    }

    fn read_error(&self, addr: &str) -> StoreError {
        match self {
            Refused::NotConnected | Refused::WrongConnection => StoreError::Backend {
                detail: format!("not connected to the store server at {addr}"),
            },
            Refused::QueueFull => StoreError::Backend {
                detail: "too many store requests in flight".to_string(),
            },
            Refused::TooLarge { bytes } => StoreError::RequestTooLarge {
                requested: *bytes,
                max: FRAME_BYTES_MAX,
            },
            Refused::Closed => StoreError::Closed,
        }
    }
}

struct LinkState {
    /// Counts established connections; requests and held transactions belong to one.
    generation: u64,
    connected: bool,
    closed: bool,
    pending: HashMap<u64, Pending>,
    outgoing: VecDeque<Vec<u8>>,
    outgoing_bytes: usize,
    /// When the connection last showed progress (a frame arrived, or the first request
    /// after an idle spell was queued).
    progress: Instant,
    stats: WireStats,
}

/// State shared by the store handle, its transactions and the I/O thread.
struct Link {
    addr: String,
    options: ClientOptions,
    state: Mutex<LinkState>,
    wake_writer: Notify,
    shutdown: watch::Sender<bool>,
    request_ids: AtomicU64,
    transaction_ids: AtomicU64,
}

impl local_io::Link for Link {
    fn is_up(&self) -> bool {
        self.lock().connected
    }

    fn stopped(&self, reason: &str) {
        self.disconnected(reason);
    }
}

impl Link {
    fn new(addr: &str, options: ClientOptions) -> Arc<Link> {
        let (shutdown, _) = watch::channel(false);
        let state = LinkState {
            generation: 0,
            connected: false,
            closed: false,
            pending: HashMap::new(),
            outgoing: VecDeque::new(),
            outgoing_bytes: 0,
            progress: Instant::now(),
            stats: WireStats::default(),
        };
        Arc::new(Link {
            addr: addr.to_string(),
            options,
            state: Mutex::new(state),
            wake_writer: Notify::new(),
            shutdown,
            request_ids: AtomicU64::new(NO_REPLY + 1),
            transaction_ids: AtomicU64::new(1),
        })
    }

    fn close(&self) {
        self.lock().closed = true;
        self.shutdown.send_replace(true);
        self.wake_writer.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a request built by `build` for the current connection (or for `generation`
    /// only); returns the connection's generation and the answer's receiver.
    fn submit<'a>(
        &self,
        kind: Kind,
        generation: Option<u64>,
        request: Request<'a>,
    ) -> Result<(u64, oneshot::Receiver<Result<Answer, Lost>>), Refused> {
        let id = self.request_ids.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        let message = RequestFrame { id, request };
        if let Err(error) = encode_message(&mut frame, &message) {
            let bytes = match error {
                FrameError::Oversized { len, .. } => len,
                _ => 0,
            };
            return Err(refused(Refused::TooLarge { bytes }));
        }
        let (reply, answer) = oneshot::channel();
        let mut state = self.lock();
        check_submit(&state, &self.options, generation, frame.len()).map_err(refused)?;
        if state.pending.is_empty() {
            state.progress = Instant::now();
        }
        state.outgoing_bytes += frame.len();
        wire_metrics::frame_sent(Role::StoreClient, frame.len());
        state.outgoing.push_back(frame);
        let pending = Pending {
            kind,
            reply,
            values: Vec::new(),
            rows: Vec::new(),
        };
        state.pending.insert(id, pending);
        let generation = state.generation;
        drop(state);
        self.wake_writer.notify_one();
        Ok((generation, answer))
    }

    /// Queues a message that expects no answer; dropped when it cannot be queued.
    fn send_without_reply(&self, generation: u64, request: Request<'_>) {
        let mut frame = Vec::new();
        let message = RequestFrame {
            id: NO_REPLY,
            request,
        };
        if encode_message(&mut frame, &message).is_err() {
            return;
        }
        let mut state = self.lock();
        if check_submit(&state, &self.options, Some(generation), frame.len()).is_err() {
            return;
        }
        state.outgoing_bytes += frame.len();
        wire_metrics::frame_sent(Role::StoreClient, frame.len());
        state.outgoing.push_back(frame);
        drop(state);
        self.wake_writer.notify_one();
    }

    /// Hands an answer to its caller. An answer nobody asked for breaks the protocol.
    fn deliver(&self, frame: ResponseFrame<'_>) -> Result<(), FrameError> {
        let mut state = self.lock();
        state.stats = frame.stats;
        let Some(pending) = state.pending.get_mut(&frame.id) else {
            return Err(FrameError::malformed(format!(
                "answer to unknown request {}",
                frame.id
            )));
        };
        let answer = match frame.response {
            Response::ValuesPart(values) => {
                let values = values.into_iter().map(|v| v.map(|v| v.0.to_vec()));
                pending.values.extend(values);
                return Ok(());
            }
            Response::RowsPart(rows) => {
                pending.rows.extend(rows_to_owned(rows));
                return Ok(());
            }
            response => response,
        };
        let Some(mut pending) = state.pending.remove(&frame.id) else {
            return Err(FrameError::malformed("answer vanished"));
        };
        drop(state);
        let answer = owned_answer(answer, &mut pending)?;
        // The caller may have stopped waiting; its answer is then dropped.
        let _ = pending.reply.send(Ok(answer));
        Ok(())
    }

    /// Marks the current connection established; returns its generation.
    fn connected(&self) -> u64 {
        let mut state = self.lock();
        state.generation += 1;
        state.connected = true;
        state.progress = Instant::now();
        state.generation
    }

    /// Fails everything in flight on the lost connection.
    fn disconnected(&self, reason: &str) {
        let mut state = self.lock();
        state.connected = false;
        state.outgoing.clear();
        state.outgoing_bytes = 0;
        let pending: Vec<Pending> = state.pending.drain().map(|(_, pending)| pending).collect();
        drop(state);
        let commits = pending.iter().filter(|p| p.kind == Kind::Commit).count();
        wire_metrics::requests_lost("commit", commits);
        wire_metrics::requests_lost("read", pending.len() - commits);
        for pending in pending {
            let lost = Lost {
                reason: reason.to_string(),
            };
            let _ = pending.reply.send(Err(lost));
        }
    }

    fn reply_overdue(&self) -> bool {
        let state = self.lock();
        !state.pending.is_empty()
            && state.progress.elapsed() > Duration::from_millis(self.options.reply_timeout_ms)
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    fn transaction_generation_alive(&self, generation: u64) -> bool {
        let state = self.lock();
        state.connected && state.generation == generation
    }
}

fn refused(refusal: Refused) -> Refused {
    wire_metrics::request_refused(refusal.label());
    refusal
}

fn check_submit(
    state: &LinkState,
    options: &ClientOptions,
    generation: Option<u64>,
    bytes: usize,
) -> Result<(), Refused> {
    if state.closed {
        return Err(Refused::Closed);
    }
    if !state.connected {
        return Err(Refused::NotConnected);
    }
    if generation.is_some_and(|generation| generation != state.generation) {
        return Err(Refused::WrongConnection);
    }
    if state.pending.len() >= options.requests_in_flight_max
        || state.outgoing_bytes + bytes > options.outgoing_bytes_max
    {
        return Err(Refused::QueueFull);
    }
    Ok(())
}

fn owned_answer(response: Response<'_>, pending: &mut Pending) -> Result<Answer, FrameError> {
    Ok(match response {
        Response::Value(result) => Answer::Value(
            result
                .map(|value| value.map(|value| value.0.to_vec()))
                .map_err(StoreError::from),
        ),
        Response::Values(result) => Answer::Values(
            result
                .map(|values| {
                    let mut all = std::mem::take(&mut pending.values);
                    all.extend(values.into_iter().map(|v| v.map(|v| v.0.to_vec())));
                    all
                })
                .map_err(StoreError::from),
        ),
        Response::Rows(result) => Answer::Rows(
            result
                .map(|rows| {
                    let mut all = std::mem::take(&mut pending.rows);
                    all.extend(rows_to_owned(rows));
                    all
                })
                .map_err(StoreError::from),
        ),
        Response::Committed(result) => {
            Answer::Committed(result.map_err(|error| error.into_error()))
        }
        Response::ValuesPart(_) | Response::RowsPart(_) => {
            return Err(FrameError::malformed("a part where a whole answer belongs"))
        }
    })
}

/// A [`Store`] served by a `tessera store` server.
pub struct RemoteStore {
    link: Arc<Link>,
    /// Connections of opted-in threads (see [`crate::local_io`]).
    local: ThreadLinks<Link>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RemoteStore")
            .field("addr", &self.link.addr)
            .finish()
    }
}

impl RemoteStore {
    /// Connects to the store server at `addr` (`host:port`), trying for up to
    /// [`ClientOptions::connect_timeout_ms`]. Later losses reconnect in the background.
    pub fn connect(addr: &str, options: ClientOptions) -> Result<Self, StoreError> {
        let link = Link::new(addr, options);
        let (first, first_result) = std::sync::mpsc::sync_channel(1);
        let thread_link = link.clone();
        let thread = std::thread::Builder::new()
            .name("tessera-store-client".to_string())
            .spawn(move || run_io_thread(thread_link, first))?;
        let store = RemoteStore {
            link,
            local: ThreadLinks::default(),
            thread: Some(thread),
        };
        match first_result.recv() {
            Ok(Ok(())) => Ok(store),
            Ok(Err(detail)) => Err(StoreError::Backend { detail }),
            Err(_) => Err(StoreError::Backend {
                detail: "the store client thread stopped".to_string(),
            }),
        }
    }

    /// The server address this client connects to.
    pub fn addr(&self) -> &str {
        &self.link.addr
    }

    /// Whether a connection is established right now.
    pub fn is_connected(&self) -> bool {
        self.link.lock().connected
    }

    /// Whether this thread has a connection of its own that is up (see
    /// [`crate::local_io`]).
    pub fn own_connection_up(&self) -> bool {
        self.local.own_up()
    }

    /// The connection a call from this thread uses: this thread's own when it opted in
    /// and that connection is up, else the shared one.
    fn link(&self) -> Arc<Link> {
        self.local.pick(
            &self.link,
            || Link::new(&self.link.addr, self.link.options.clone()),
            |link| supervise(link, None),
        )
    }

    fn read(&self, request: Request<'_>) -> Result<oneshot::Receiver<ReadAnswer>, StoreError> {
        self.link()
            .submit(Kind::Read, None, request)
            .map(|(_, answer)| answer)
            .map_err(|refusal| refusal.read_error(&self.link.addr))
    }
}

type ReadAnswer = Result<Answer, Lost>;

impl Drop for RemoteStore {
    fn drop(&mut self) {
        self.link.close();
        // Their tasks end on their own threads.
        for link in self.local.all() {
            link.close();
        }
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

fn lost_read(lost: Lost) -> StoreError {
    StoreError::Backend {
        detail: format!("connection to the store server lost: {}", lost.reason),
    }
}

fn unexpected() -> StoreError {
    StoreError::Backend {
        detail: "the store server answered with the wrong kind of answer".to_string(),
    }
}

async fn await_value(answer: oneshot::Receiver<ReadAnswer>) -> Result<Option<Vec<u8>>, StoreError> {
    match answer.await {
        Ok(Ok(Answer::Value(result))) => result,
        Ok(Ok(_)) => Err(unexpected()),
        Ok(Err(lost)) => Err(lost_read(lost)),
        Err(_) => Err(StoreError::Closed),
    }
}

async fn await_rows(answer: oneshot::Receiver<ReadAnswer>) -> Result<Vec<KeyValue>, StoreError> {
    match answer.await {
        Ok(Ok(Answer::Rows(result))) => result,
        Ok(Ok(_)) => Err(unexpected()),
        Ok(Err(lost)) => Err(lost_read(lost)),
        Err(_) => Err(StoreError::Closed),
    }
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

impl Store for RemoteStore {
    fn begin(&self) -> Result<Box<dyn Transaction>, StoreError> {
        if self.link.is_closed() {
            return Err(StoreError::Closed);
        }
        Ok(Box::new(RemoteTransaction::new(self.link())))
    }

    fn get(&self, key: &[u8]) -> BoxFuture<'static, Result<Option<Vec<u8>>, StoreError>> {
        if let Err(error) = check_key(key) {
            return ready(Err(error));
        }
        match self.read(Request::Get { key: Bytes(key) }) {
            Ok(answer) => Box::pin(await_value(answer)),
            Err(error) => ready(Err(error)),
        }
    }

    fn get_many(
        &self,
        keys: Vec<Vec<u8>>,
    ) -> BoxFuture<'static, Result<Vec<Option<Vec<u8>>>, StoreError>> {
        if keys.len() > GET_MANY_KEYS_MAX {
            return ready(Err(StoreError::RequestTooLarge {
                requested: keys.len(),
                max: GET_MANY_KEYS_MAX,
            }));
        }
        if let Some(error) = keys.iter().find_map(|key| check_key(key).err()) {
            return ready(Err(error));
        }
        let keys = keys.iter().map(|key| Bytes(key)).collect();
        let answer = match self.read(Request::GetMany { keys }) {
            Ok(answer) => answer,
            Err(error) => return ready(Err(error)),
        };
        Box::pin(async move {
            match answer.await {
                Ok(Ok(Answer::Values(result))) => result,
                Ok(Ok(_)) => Err(unexpected()),
                Ok(Err(lost)) => Err(lost_read(lost)),
                Err(_) => Err(StoreError::Closed),
            }
        })
    }

    fn get_range(
        &self,
        request: RangeRequest,
    ) -> BoxFuture<'static, Result<Vec<KeyValue>, StoreError>> {
        if let Err(error) = request.validate() {
            return ready(Err(error));
        }
        let range = WireRange::from_request(&request);
        match self.read(Request::GetRange { range }) {
            Ok(answer) => Box::pin(await_rows(answer)),
            Err(error) => ready(Err(error)),
        }
    }

    fn stats(&self) -> StoreStats {
        // The server's totals as the latest answer on any connection carried them.
        let mut stats = self.link.lock().stats;
        for link in self.local.all() {
            let other = link.lock().stats;
            stats.transactions_committed = stats
                .transactions_committed
                .max(other.transactions_committed);
            stats.durable_writes = stats.durable_writes.max(other.durable_writes);
            stats.bytes_written = stats.bytes_written.max(other.bytes_written);
        }
        stats.into()
    }
}

/// Where a transaction's server-held part stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Never read: nothing on the server.
    Nothing,
    /// Held by the server on the connection of this generation.
    On(u64),
    /// Died with its connection.
    Lost,
}

/// A read inside a transaction.
enum TransactionRead<'a> {
    Key(&'a [u8]),
    Range(&'a RangeRequest),
}

/// A transaction of a [`RemoteStore`]: buffers mutations locally (see the module docs).
struct RemoteTransaction {
    link: Arc<Link>,
    id: u64,
    begun: Instant,
    /// Mutations not yet shipped to the server.
    mutations: Vec<u8>,
    writes: usize,
    requires: usize,
    size_bytes: usize,
    held: Held,
}

impl RemoteTransaction {
    fn new(link: Arc<Link>) -> Self {
        let id = link.transaction_ids.fetch_add(1, Ordering::Relaxed);
        RemoteTransaction {
            link,
            id,
            begun: Instant::now(),
            mutations: Vec::new(),
            writes: 0,
            requires: 0,
            size_bytes: 0,
            held: Held::Nothing,
        }
    }

    fn too_large(total: usize) -> StoreError {
        StoreError::TransactionTooLarge {
            bytes: total,
            max: TRANSACTION_BYTES_MAX,
        }
    }

    /// Charges a write as the embedded backend does.
    fn charge_write(&mut self, bytes: usize) -> Result<(), StoreError> {
        let total = self.size_bytes + bytes;
        if total > TRANSACTION_BYTES_MAX || self.writes >= TRANSACTION_WRITES_MAX {
            return Err(Self::too_large(total));
        }
        self.size_bytes = total;
        self.writes += 1;
        Ok(())
    }

    fn charge_require(&mut self, bytes: usize) -> Result<(), StoreError> {
        let total = self.size_bytes + bytes;
        if total > TRANSACTION_BYTES_MAX || self.requires >= TRANSACTION_WRITES_MAX {
            return Err(Self::too_large(total));
        }
        self.size_bytes = total;
        self.requires += 1;
        Ok(())
    }

    /// Ships the buffered mutations with a read.
    fn ship_read(
        &mut self,
        read: TransactionRead<'_>,
    ) -> Result<oneshot::Receiver<ReadAnswer>, StoreError> {
        let (begin, generation) = match self.held {
            Held::Nothing => (true, None),
            Held::On(generation) => (false, Some(generation)),
            Held::Lost => return Err(transaction_lost()),
        };
        let transaction = TransactionRef { id: self.id, begin };
        let mutations = Bytes(&self.mutations);
        let request = match read {
            TransactionRead::Key(key) => Request::TransactionGet {
                transaction,
                mutations,
                key: Bytes(key),
            },
            TransactionRead::Range(range) => Request::TransactionGetRange {
                transaction,
                mutations,
                range: WireRange::from_request(range),
            },
        };
        match self.link.submit(Kind::Read, generation, request) {
            Ok((generation, answer)) => {
                self.mutations.clear();
                self.held = Held::On(generation);
                Ok(answer)
            }
            Err(Refused::WrongConnection) => {
                self.held = Held::Lost;
                Err(transaction_lost())
            }
            Err(refusal) => Err(refusal.read_error(&self.link.addr)),
        }
    }

    fn mark_lost_on<T>(&mut self, result: &Result<T, StoreError>) {
        if let (Held::On(generation), Err(StoreError::Backend { .. })) = (self.held, result) {
            if !self.link.transaction_generation_alive(generation) {
                self.held = Held::Lost;
            }
        }
    }
}

fn transaction_lost() -> StoreError {
    StoreError::Backend {
        detail: "the connection that held this transaction was lost; restart it".to_string(),
    }
}

impl Transaction for RemoteTransaction {
    fn get(&mut self, key: &[u8]) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>> {
        if let Err(error) = check_key(key) {
            return ready(Err(error));
        }
        let answer = self.ship_read(TransactionRead::Key(key));
        Box::pin(async move {
            let result = match answer {
                Ok(answer) => await_value(answer).await,
                Err(error) => Err(error),
            };
            self.mark_lost_on(&result);
            result
        })
    }

    fn get_range(
        &mut self,
        request: RangeRequest,
    ) -> BoxFuture<'_, Result<Vec<KeyValue>, StoreError>> {
        if let Err(error) = request.validate() {
            return ready(Err(error));
        }
        let answer = self.ship_read(TransactionRead::Range(&request));
        Box::pin(async move {
            let result = match answer {
                Ok(answer) => await_rows(answer).await,
                Err(error) => Err(error),
            };
            self.mark_lost_on(&result);
            result
        })
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        check_key(key)?;
        check_value(value)?;
        self.charge_write(key.len() + value.len())?;
        encode::set(&mut self.mutations, key, value);
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        check_key(key)?;
        self.charge_write(key.len())?;
        encode::clear(&mut self.mutations, key);
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
        check_key(begin)?;
        check_key(end)?;
        if begin >= end {
            return Err(StoreError::InvalidRange);
        }
        self.charge_write(begin.len() + end.len())?;
        encode::clear_range(&mut self.mutations, begin, end);
        Ok(())
    }

    fn require(&mut self, key: &[u8], expected: Option<&[u8]>) -> Result<(), StoreError> {
        check_key(key)?;
        if let Some(expected) = expected {
            check_value(expected)?;
        }
        self.charge_require(key.len() + expected.map_or(0, <[u8]>::len))?;
        encode::require(&mut self.mutations, key, expected);
        Ok(())
    }

    fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    fn reserve(&mut self, bytes: usize) {
        // One block for writes and preconditions, sized once (bounded by the transaction
        // limit whatever the hint says): grown by doubling, it was copied about twice over
        // per draft.
        self.mutations.reserve(bytes.min(TRANSACTION_BYTES_MAX));
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<u64, CommitError>> {
        let (transaction, generation) = match std::mem::replace(&mut self.held, Held::Nothing) {
            Held::Nothing => (None, None),
            Held::On(generation) => (Some(self.id), Some(generation)),
            Held::Lost => return ready(Err(CommitError::Conflict)),
        };
        let age_ms = u64::try_from(self.begun.elapsed().as_millis()).unwrap_or(u64::MAX);
        let request = Request::Commit {
            transaction,
            age_ms,
            mutations: Bytes(&self.mutations),
        };
        let answer = match self.link.submit(Kind::Commit, generation, request) {
            Ok((_, answer)) => answer,
            Err(refusal) => return ready(Err(refused_commit(refusal))),
        };
        Box::pin(async move {
            match answer.await {
                Ok(Ok(Answer::Committed(result))) => result,
                Ok(Ok(_)) => Err(CommitError::Unknown {
                    detail: "the store server answered a commit with a read".to_string(),
                }),
                Ok(Err(lost)) => Err(CommitError::Unknown {
                    detail: format!("connection to the store server lost: {}", lost.reason),
                }),
                Err(_) => Err(CommitError::Unknown {
                    detail: "the store client stopped before the answer".to_string(),
                }),
            }
        })
    }
}

fn refused_commit(refusal: Refused) -> CommitError {
    match refusal {
        Refused::NotConnected | Refused::QueueFull => CommitError::Overloaded,
        Refused::WrongConnection => CommitError::Conflict,
        Refused::TooLarge { bytes } => CommitError::Rejected(StoreError::TransactionTooLarge {
            bytes,
            max: TRANSACTION_BYTES_MAX,
        }),
        Refused::Closed => CommitError::Rejected(StoreError::Closed),
    }
}

impl Drop for RemoteTransaction {
    fn drop(&mut self) {
        if let Held::On(generation) = self.held {
            let abort = Request::Abort {
                transaction: self.id,
            };
            // When it cannot be queued the server drops the transaction at its age limit.
            self.link.send_without_reply(generation, abort);
        }
    }
}

/// The I/O thread: a private runtime that keeps one connection up until the store closes.
fn run_io_thread(link: Arc<Link>, first: std::sync::mpsc::SyncSender<Result<(), String>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = first.send(Err(format!(
                "cannot start the store client runtime: {error}"
            )));
            return;
        }
    };
    runtime.block_on(supervise(link, Some(first)));
}

/// Connects, serves the connection until it is lost, and reconnects with backoff. `first`
/// (the waiting [`RemoteStore::connect`], for the shared connection) hears of the first
/// outcome; without it the attempts go on until the store closes.
async fn supervise(
    link: Arc<Link>,
    mut first: Option<std::sync::mpsc::SyncSender<Result<(), String>>>,
) {
    let options = link.options.clone();
    let started = Instant::now();
    let mut backoff_ms = options.reconnect_backoff_ms_min;
    let mut shutdown = link.shutdown.subscribe();
    let mut failures = 0u64;
    while !link.is_closed() {
        let attempt = tokio::time::timeout(
            Duration::from_millis(options.connect_timeout_ms),
            TcpStream::connect(link.addr.as_str()),
        )
        .await;
        let error = match attempt {
            Ok(Ok(stream)) => {
                let connected_at = Instant::now();
                run_connection(&link, stream, failures, first.take()).await;
                failures = 0;
                if connected_at.elapsed() > Duration::from_millis(options.reconnect_backoff_ms_max)
                {
                    backoff_ms = options.reconnect_backoff_ms_min;
                }
                continue;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no connection within {} ms", options.connect_timeout_ms),
        };
        failures += 1;
        if failures == 1 {
            tracing::warn!(addr = %link.addr, %error, "cannot connect to the store server; retrying");
        }
        if first.is_some() && started.elapsed() > Duration::from_millis(options.connect_timeout_ms)
        {
            let detail = format!(
                "cannot connect to the store server at {}: {error}",
                link.addr
            );
            let _ = first.take().map(|first| first.send(Err(detail)));
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
            _ = shutdown.wait_for(|closed| *closed) => return,
        }
        backoff_ms = (backoff_ms * 2).min(options.reconnect_backoff_ms_max);
    }
}

/// Serves one established connection until it is lost or the store closes.
/// Serves one connection; `first` (the waiting [`RemoteStore::connect`]) is told only once
/// the link counts as connected, so a request right after `connect` is never refused.
async fn run_connection(
    link: &Arc<Link>,
    stream: TcpStream,
    failures_before: u64,
    first: Option<std::sync::mpsc::SyncSender<Result<(), String>>>,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let generation = link.connected();
    if let Some(first) = first {
        let _ = first.send(Ok(()));
    }
    wire_metrics::connection_opened(Role::StoreClient);
    if failures_before > 0 || generation > 1 {
        tracing::info!(addr = %link.addr, generation, "connected to the store server");
    }
    let (read, write) = stream.into_split();
    let mut reader = tokio::spawn(read_answers(link.clone(), read));
    let mut writer = tokio::spawn(write_requests(link.clone(), generation, write));
    let mut shutdown = link.shutdown.subscribe();
    let mut watchdog = tokio::time::interval(Duration::from_millis(
        (link.options.reply_timeout_ms / 4).clamp(1, 1_000),
    ));
    let reason = loop {
        tokio::select! {
            read = &mut reader => break ended("reading", read),
            written = &mut writer => break ended("writing", written),
            _ = watchdog.tick() => if link.reply_overdue() {
                break format!("no answer within {} ms", link.options.reply_timeout_ms);
            },
            _ = shutdown.wait_for(|closed| *closed) => break "store client closed".to_string(),
        }
    };
    reader.abort();
    writer.abort();
    link.disconnected(&reason);
    wire_metrics::connection_closed(Role::StoreClient);
    if !link.is_closed() {
        tracing::warn!(addr = %link.addr, %reason, "lost the connection to the store server");
    }
}

fn ended(what: &str, result: Result<Result<(), FrameError>, tokio::task::JoinError>) -> String {
    match result {
        Ok(Ok(())) => format!("the store server closed the connection ({what})"),
        Ok(Err(error)) => {
            wire_metrics::frame_error(Role::StoreClient, error.reason());
            format!("{what}: {error}")
        }
        Err(join) => format!("{what} task failed: {join}"),
    }
}

async fn read_answers(link: Arc<Link>, read: OwnedReadHalf) -> Result<(), FrameError> {
    let mut reader = FrameReader::new(read);
    while let Some(payload) = reader.next().await? {
        wire_metrics::frame_received(Role::StoreClient, FRAME_HEADER_BYTES + payload.len());
        link.lock().progress = Instant::now();
        let frame: ResponseFrame = decode_message(payload)?;
        link.deliver(frame)?;
    }
    Ok(())
}

async fn write_requests(
    link: Arc<Link>,
    generation: u64,
    write: OwnedWriteHalf,
) -> Result<(), FrameError> {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, write);
    loop {
        let batch = {
            let mut state = link.lock();
            if state.closed || state.generation != generation {
                return Ok(());
            }
            state.outgoing_bytes = 0;
            std::mem::take(&mut state.outgoing)
        };
        if batch.is_empty() {
            writer.flush().await?;
            link.wake_writer.notified().await;
            continue;
        }
        for frame in batch {
            writer.write_all(&frame).await?;
        }
    }
}
