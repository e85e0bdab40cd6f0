//! The DC protocol client: what the router and peer DC nodes use to reach a DC node.
//!
//! Owns one connection to one DC node, kept up by a private I/O thread (so callers may run
//! on any executor: actix arbiters, tokio, plain threads), with request ids, a bounded
//! table of requests in flight, a reply timeout, and reconnection with backoff.
//!
//! A thread that opted in with [`crate::local_io::local_io_here`] gets a connection of its
//! own, driven on it, which its calls use whenever it is up (see [`crate::local_io`]).
//!
//! A call fails with [`DcCallError::NotSent`] when the request never left this process
//! (not connected, queue full): it is safe to retry anywhere. It fails with
//! [`DcCallError::Lost`] when the connection dropped (or the answer was overdue) after the
//! request was written: the batch may have run, so its transfers' outcome is unknown and a
//! retry must reuse the same transfer ids.
//!
//! Must never: hold more than [`DcClientOptions::in_flight_max`] requests, retry a request
//! on its own, or block its caller.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cells::keys::Keyspace;
use cells::ledger::{Command, CommandResult, ErrorCode};
use cells::store::KeyValue;
use futures::channel::oneshot;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

use crate::dc_protocol::{self, DcRequest, DcResponse, NodeStatus};
use crate::frame::{FrameError, FrameReader, FRAME_HEADER_BYTES};
use crate::local_io::{self, ThreadLinks};
use crate::metrics::{self as wire_metrics, Role};

/// Requests awaiting an answer at once, by default.
pub const DC_CLIENT_IN_FLIGHT_MAX_DEFAULT: usize = 4_096;
/// Bytes of encoded requests waiting for the socket, by default.
pub const DC_CLIENT_OUTGOING_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// Settings of a [`DcClient`].
#[derive(Debug, Clone)]
pub struct DcClientOptions {
    pub in_flight_max: usize,
    pub outgoing_bytes_max: usize,
    pub connect_timeout_ms: u64,
    /// An answer not back within this is given up: the request fails with `Lost` and the
    /// connection is reset (a peer that does not answer is not trusted to answer later).
    pub reply_timeout_ms: u64,
    pub reconnect_backoff_ms_min: u64,
    pub reconnect_backoff_ms_max: u64,
}

impl Default for DcClientOptions {
    fn default() -> Self {
        DcClientOptions {
            in_flight_max: DC_CLIENT_IN_FLIGHT_MAX_DEFAULT,
            outgoing_bytes_max: DC_CLIENT_OUTGOING_BYTES_MAX_DEFAULT,
            connect_timeout_ms: 1_000,
            reply_timeout_ms: 10_000,
            reconnect_backoff_ms_min: 20,
            reconnect_backoff_ms_max: 1_000,
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DcCallError {
    /// The request never left this process; nothing ran. Safe to retry.
    #[error("request to DC node {addr} not sent: {reason}")]
    NotSent { addr: String, reason: &'static str },
    /// The request was sent but its answer will never come; it may have run.
    #[error("answer from DC node {addr} lost: {reason}")]
    Lost { addr: String, reason: String },
    /// The node refused the whole batch.
    #[error("DC node {addr} refused the batch: {code}")]
    Refused { addr: String, code: ErrorCode },
    /// The node answered something this client did not ask for.
    #[error("DC node {addr} broke the protocol: {detail}")]
    Protocol { addr: String, detail: String },
}

impl DcCallError {
    /// The error code a caller reports for a command of the failed call.
    pub fn code(&self) -> ErrorCode {
        match self {
            DcCallError::NotSent { .. } => ErrorCode::Unavailable,
            DcCallError::Lost { .. } | DcCallError::Protocol { .. } => ErrorCode::OutcomeUnknown,
            DcCallError::Refused { code, .. } => *code,
        }
    }
}

struct Waiting {
    since: Instant,
    reply: oneshot::Sender<Result<DcResponse, DcCallError>>,
}

#[derive(Default)]
struct State {
    /// Bumped by every established connection; 0 = never connected.
    generation: u64,
    connected: bool,
    closed: bool,
    outgoing: Vec<Vec<u8>>,
    outgoing_bytes: usize,
    waiting: HashMap<u64, Waiting>,
}

struct Link {
    addr: String,
    options: DcClientOptions,
    next_id: AtomicU64,
    state: Mutex<State>,
    wake_writer: Notify,
    shutdown: watch::Sender<bool>,
    ever_connected: AtomicBool,
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
    fn new(addr: &str, options: DcClientOptions) -> Arc<Link> {
        let (shutdown, _) = watch::channel(false);
        Arc::new(Link {
            addr: addr.to_string(),
            options,
            next_id: AtomicU64::new(1),
            state: Mutex::new(State::default()),
            wake_writer: Notify::new(),
            shutdown,
            ever_connected: AtomicBool::new(false),
        })
    }

    fn close(&self) {
        self.lock().closed = true;
        let _ = self.shutdown.send(true);
        self.wake_writer.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn not_sent(&self, reason: &'static str) -> DcCallError {
        wire_metrics::request_refused(reason);
        DcCallError::NotSent {
            addr: self.addr.clone(),
            reason,
        }
    }

    /// Queues `request` (id already set, or none) for the writer.
    fn submit(
        &self,
        request: &DcRequest,
        reply: Option<oneshot::Sender<Result<DcResponse, DcCallError>>>,
    ) -> Result<(), DcCallError> {
        let mut frame = Vec::new();
        if dc_protocol::encode(request, &mut frame).is_err() {
            return Err(self.not_sent("too_large"));
        }
        let mut state = self.lock();
        if state.closed || !state.connected {
            return Err(self.not_sent("not_connected"));
        }
        if state.outgoing_bytes + frame.len() > self.options.outgoing_bytes_max {
            return Err(self.not_sent("queue_full"));
        }
        if let (Some(reply), Some(id)) = (reply, request.id()) {
            if state.waiting.len() >= self.options.in_flight_max {
                return Err(self.not_sent("queue_full"));
            }
            state.waiting.insert(
                id,
                Waiting {
                    since: Instant::now(),
                    reply,
                },
            );
        }
        state.outgoing_bytes += frame.len();
        state.outgoing.push(frame);
        drop(state);
        self.wake_writer.notify_one();
        Ok(())
    }

    fn deliver(&self, response: DcResponse) -> Result<(), FrameError> {
        let waiting = self.lock().waiting.remove(&response.id());
        match waiting {
            Some(waiting) => {
                let _ = waiting.reply.send(Ok(response));
                Ok(())
            }
            None => Err(FrameError::malformed(format_args!(
                "answer to request {} that is not in flight",
                response.id()
            ))),
        }
    }

    fn connected(&self) -> u64 {
        let mut state = self.lock();
        state.generation += 1;
        state.connected = true;
        self.ever_connected.store(true, Ordering::Release);
        state.generation
    }

    /// Fails everything in flight (`Lost`) and everything unsent (`NotSent`).
    fn disconnected(&self, reason: &str) {
        let (waiting, unsent) = {
            let mut state = self.lock();
            state.connected = false;
            state.outgoing_bytes = 0;
            let unsent = std::mem::take(&mut state.outgoing).len();
            (std::mem::take(&mut state.waiting), unsent)
        };
        wire_metrics::requests_lost("dc_call", waiting.len());
        if unsent > 0 {
            wire_metrics::request_refused("not_connected");
        }
        for (_, waiting) in waiting {
            let _ = waiting.reply.send(Err(DcCallError::Lost {
                addr: self.addr.clone(),
                reason: reason.to_string(),
            }));
        }
    }

    fn reply_overdue(&self) -> bool {
        let limit = Duration::from_millis(self.options.reply_timeout_ms);
        self.lock()
            .waiting
            .values()
            .any(|w| w.since.elapsed() > limit)
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

/// A connection to one DC node. Cheap to share (`Arc`); closing happens on drop.
pub struct DcClient {
    link: Arc<Link>,
    /// Connections of opted-in threads (see [`crate::local_io`]).
    local: ThreadLinks<Link>,
}

impl std::fmt::Debug for DcClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DcClient")
            .field("addr", &self.link.addr)
            .finish()
    }
}

impl DcClient {
    /// Starts keeping a connection to the DC node at `addr`. Returns at once: until the
    /// first connection is up (see [`DcClient::wait_connected`]) calls fail `NotSent`.
    pub fn connect(addr: &str, options: DcClientOptions) -> std::io::Result<DcClient> {
        assert!(options.in_flight_max > 0 && options.outgoing_bytes_max > 0);
        let link = Link::new(addr, options);
        let thread_link = Arc::clone(&link);
        std::thread::Builder::new()
            .name(format!("dc-client-{addr}"))
            .spawn(move || run_io_thread(thread_link))?;
        Ok(DcClient {
            link,
            local: ThreadLinks::default(),
        })
    }

    /// The connection a call from this thread uses: this thread's own when it opted in
    /// and that connection is up, else the shared one.
    fn link(&self) -> Arc<Link> {
        self.local.pick(
            &self.link,
            || Link::new(&self.link.addr, self.link.options.clone()),
            supervise,
        )
    }

    pub fn addr(&self) -> &str {
        &self.link.addr
    }

    pub fn is_connected(&self) -> bool {
        self.link.lock().connected
    }

    /// Whether this thread has a connection of its own that is up (see
    /// [`crate::local_io`]).
    pub fn own_connection_up(&self) -> bool {
        self.local.own_up()
    }

    /// Blocks the calling thread until connected or `timeout` passes; returns whether it
    /// is connected. For tools and tests; a server keeps calling and handles `NotSent`.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_connected() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    fn call(
        &self,
        make: impl FnOnce(u64) -> DcRequest,
    ) -> impl Future<Output = Result<DcResponse, DcCallError>> + Send + 'static {
        let link = self.link();
        let id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let request = make(id);
        let (reply, answer) = oneshot::channel();
        let submitted = link.submit(&request, Some(reply));
        let addr = link.addr.clone();
        async move {
            submitted?;
            match answer.await {
                Ok(result) => result,
                Err(_) => Err(DcCallError::Lost {
                    addr,
                    reason: "client closed".into(),
                }),
            }
        }
    }

    /// Runs a batch on the node; one result per command, in order.
    pub fn execute(
        &self,
        space: Keyspace,
        commands: Vec<Command>,
    ) -> impl Future<Output = Result<Vec<CommandResult>, DcCallError>> + Send + 'static {
        let count = commands.len();
        let addr = self.link.addr.clone();
        let call = self.call(move |id| DcRequest::Execute {
            id,
            space,
            commands,
        });
        async move {
            match call.await? {
                DcResponse::Executed {
                    results: Ok(results),
                    ..
                } if results.len() == count => Ok(results),
                DcResponse::Executed {
                    results: Err(code), ..
                } => Err(DcCallError::Refused { addr, code }),
                other => Err(DcCallError::Protocol {
                    addr,
                    detail: format!("unexpected answer to a batch of {count}: {other:?}"),
                }),
            }
        }
    }

    /// Sends credit legs to the node (no answer; the sender's outbox rescan covers loss).
    pub fn credits(&self, space: Keyspace, legs: Vec<KeyValue>) -> Result<(), DcCallError> {
        self.link()
            .submit(&DcRequest::Credits { space, legs }, None)
    }

    /// Asks the node for its status.
    pub fn status(&self) -> impl Future<Output = Result<NodeStatus, DcCallError>> + Send + 'static {
        let addr = self.link.addr.clone();
        let call = self.call(|id| DcRequest::Status { id });
        async move {
            match call.await? {
                DcResponse::Status { status, .. } => Ok(status),
                other => Err(DcCallError::Protocol {
                    addr,
                    detail: format!("unexpected answer to status: {other:?}"),
                }),
            }
        }
    }
}

impl DcClient {
    /// Handover: freezes and drains payer slots `first..=last` at the node; answers
    /// whether they drained and how long that took (µs).
    pub fn freeze(
        &self,
        first: u16,
        last: u16,
        max_ms: u32,
    ) -> impl Future<Output = Result<(bool, u64), DcCallError>> + Send + 'static {
        let addr = self.link.addr.clone();
        let call = self.call(move |id| DcRequest::Freeze {
            id,
            first,
            last,
            max_ms,
        });
        async move {
            match call.await? {
                DcResponse::Frozen {
                    drained, drain_us, ..
                } => Ok((drained, drain_us)),
                other => Err(unexpected(addr, "freeze", &other)),
            }
        }
    }

    /// Handover: the node reloads the table and thaws `first..=last`; answers the version.
    pub fn thaw(
        &self,
        first: u16,
        last: u16,
    ) -> impl Future<Output = Result<u64, DcCallError>> + Send + 'static {
        let addr = self.link.addr.clone();
        let call = self.call(move |id| DcRequest::Thaw { id, first, last });
        async move {
            match call.await? {
                DcResponse::Thawed { table_version, .. } => Ok(table_version),
                other => Err(unexpected(addr, "thaw", &other)),
            }
        }
    }

    /// The node reloads the ownership table; answers its version.
    pub fn reload(&self) -> impl Future<Output = Result<u64, DcCallError>> + Send + 'static {
        let addr = self.link.addr.clone();
        let call = self.call(|id| DcRequest::Reload { id });
        async move {
            match call.await? {
                DcResponse::Reloaded { table_version, .. } => Ok(table_version),
                other => Err(unexpected(addr, "reload", &other)),
            }
        }
    }
}

fn unexpected(addr: String, what: &str, answer: &DcResponse) -> DcCallError {
    DcCallError::Protocol {
        addr,
        detail: format!("unexpected answer to {what}: {answer:?}"),
    }
}

impl Drop for DcClient {
    fn drop(&mut self) {
        self.link.close();
        for link in self.local.all() {
            link.close();
        }
    }
}

fn run_io_thread(link: Arc<Link>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(addr = %link.addr, %error, "cannot start the DC client runtime");
            return;
        }
    };
    runtime.block_on(supervise(link));
}

async fn supervise(link: Arc<Link>) {
    let options = link.options.clone();
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
                run_connection(&link, stream).await;
                failures = 0;
                backoff_ms = options.reconnect_backoff_ms_min;
                continue;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no connection within {} ms", options.connect_timeout_ms),
        };
        failures += 1;
        if failures == 1 && link.ever_connected.load(Ordering::Acquire) {
            tracing::warn!(addr = %link.addr, %error, "cannot reach the DC node; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
            _ = shutdown.wait_for(|closed| *closed) => return,
        }
        backoff_ms = (backoff_ms * 2).min(options.reconnect_backoff_ms_max);
    }
}

async fn run_connection(link: &Arc<Link>, stream: TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let generation = link.connected();
    wire_metrics::connection_opened(Role::DcClient);
    tracing::debug!(addr = %link.addr, generation, "connected to the DC node");
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
            _ = shutdown.wait_for(|closed| *closed) => break "DC client closed".to_string(),
        }
    };
    reader.abort();
    writer.abort();
    link.disconnected(&reason);
    wire_metrics::connection_closed(Role::DcClient);
    if !link.is_closed() {
        tracing::warn!(addr = %link.addr, %reason, "lost the connection to the DC node");
    }
}

fn ended(what: &str, result: Result<Result<(), FrameError>, tokio::task::JoinError>) -> String {
    match result {
        Ok(Ok(())) => format!("the DC node closed the connection ({what})"),
        Ok(Err(error)) => {
            wire_metrics::frame_error(Role::DcClient, error.reason());
            format!("{what}: {error}")
        }
        Err(join) => format!("{what} task failed: {join}"),
    }
}

async fn read_answers(link: Arc<Link>, read: OwnedReadHalf) -> Result<(), FrameError> {
    let mut reader = FrameReader::new(read);
    while let Some(payload) = reader.next().await? {
        wire_metrics::frame_received(Role::DcClient, FRAME_HEADER_BYTES + payload.len());
        let response: DcResponse = dc_protocol::decode(payload)?;
        link.deliver(response)?;
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
            wire_metrics::frame_sent(Role::DcClient, frame.len());
            writer.write_all(&frame).await?;
        }
    }
}
