//! The store server behind `tessera store`: serves any [`Store`] to remote clients over TCP.
//!
//! Owns: the accept loop (at most [`ServerOptions::connections_max`] connections), one task
//! per connection that reads and answers frames, the transactions it holds for clients that
//! read inside a transaction (at most [`ServerOptions::transactions_held_max`] per
//! connection, dropped on disconnect or once older than the transaction age limit), and the
//! counters of what it served.
//!
//! Must never: let one connection's bad input touch another connection or the store (a bad
//! frame closes only its own connection, with a warning naming the reason); buffer answers
//! without bound (a connection has at most [`ServerOptions::requests_in_flight_max`]
//! requests awaiting the store and [`ServerOptions::replies_queued_max`] answers waiting for
//! its socket, and stops reading while either is full); or block its runtime on a commit.
//!
//! Requests of one connection are applied in arrival order up to the store's commit call,
//! so the store queues one client's commits in the order the client sent them. Awaiting
//! the outcome happens in a task per commit, so group commit batches commits from every
//! connection. Reads inside a server-held transaction are awaited in the connection's task
//! (the embedded backend answers them at once).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cells::store::limits::TRANSACTION_DURATION_MS_MAX;
use cells::store::{BoxFuture, CommitError, KeyValue, Store, StoreError, Transaction};
use futures::FutureExt as _;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::frame::{FrameError, FrameReader, FRAME_HEADER_BYTES};
use crate::metrics::{self as wire_metrics, Role};
use crate::store_protocol::{
    apply_mutations, encode_message, Bytes, Request, RequestFrame, Response, ResponseFrame, Row,
    TransactionRef, WireCommitError, WireRange, WireStats, WireStoreError, NO_REPLY,
    RESPONSE_PART_BYTES,
};

/// Default of [`ServerOptions::connections_max`].
pub const CONNECTIONS_MAX_DEFAULT: usize = 256;
/// Default of [`ServerOptions::transactions_held_max`].
pub const TRANSACTIONS_HELD_MAX_DEFAULT: usize = 16_384;
/// Default of [`ServerOptions::requests_in_flight_max`].
pub const REQUESTS_IN_FLIGHT_MAX_DEFAULT: usize = 65_536;
/// Default of [`ServerOptions::replies_queued_max`].
pub const REPLIES_QUEUED_MAX_DEFAULT: usize = 4_096;
/// How often a connection drops held transactions past the age limit.
pub const HELD_SWEEP_INTERVAL_MS: u64 = 100;
/// Buffer of a connection's socket writer.
pub const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// Limits of a [`serve`] call.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Connections served at once; one more is closed at accept (and counted).
    pub connections_max: usize,
    /// Transactions one connection may hold open for reads inside a transaction.
    pub transactions_held_max: usize,
    /// Requests of one connection awaiting the store at once.
    pub requests_in_flight_max: usize,
    /// Encoded answers of one connection waiting for its socket.
    pub replies_queued_max: usize,
    /// The age limit of transactions, from the client's `begin`; at most
    /// [`TRANSACTION_DURATION_MS_MAX`]. Set it to the served store's own limit.
    pub transaction_duration_ms_max: u64,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            connections_max: CONNECTIONS_MAX_DEFAULT,
            transactions_held_max: TRANSACTIONS_HELD_MAX_DEFAULT,
            requests_in_flight_max: REQUESTS_IN_FLIGHT_MAX_DEFAULT,
            replies_queued_max: REPLIES_QUEUED_MAX_DEFAULT,
            transaction_duration_ms_max: TRANSACTION_DURATION_MS_MAX,
        }
    }
}

/// Serves `store` on `listener` until `shutdown` resolves, then closes every connection
/// and returns once their tasks (and the store handles and transactions they held) are
/// gone. Errors of one connection never end the server.
pub async fn serve(
    store: Arc<dyn Store>,
    listener: TcpListener,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    assert!(options.connections_max > 0 && options.requests_in_flight_max > 0);
    assert!(options.replies_queued_max > 0);
    let options = Arc::new(options);
    let slots = Arc::new(Semaphore::new(options.connections_max));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accepting a store connection failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, max = options.connections_max,
                        "refusing a store connection: connection limit reached");
                    wire_metrics::connection_refused();
                    continue;
                };
                let connection = serve_connection(store.clone(), stream, peer, options.clone());
                connections.spawn(connection.map(move |()| drop(slot)));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
    Ok(())
}

/// Serves one connection until the peer closes it, a frame is bad or the socket fails.
async fn serve_connection(
    store: Arc<dyn Store>,
    stream: TcpStream,
    peer: SocketAddr,
    options: Arc<ServerOptions>,
) {
    wire_metrics::connection_opened(Role::StoreServer);
    tracing::debug!(%peer, "store connection opened");
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    let (read, write) = stream.into_split();
    let (replies, queued) = mpsc::channel(options.replies_queued_max);
    let mut writer = tokio::spawn(write_replies(write, queued));
    let mut connection = Connection {
        store,
        replies,
        in_flight: JoinSet::new(),
        in_flight_slots: Arc::new(Semaphore::new(options.requests_in_flight_max)),
        held: HashMap::new(),
        options,
    };
    let result = tokio::select! {
        read = connection.run(FrameReader::new(read)) => read,
        written = &mut writer => match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(FrameError::Io(error)),
            Err(join) => Err(FrameError::Io(io::Error::other(join))),
        },
    };
    writer.abort();
    drop(connection);
    match result {
        Ok(()) => tracing::debug!(%peer, "store connection closed by the peer"),
        Err(error) => {
            wire_metrics::frame_error(Role::StoreServer, error.reason());
            tracing::warn!(%peer, reason = error.reason(), %error, "closing store connection");
        }
    }
    wire_metrics::connection_closed(Role::StoreServer);
}

/// Writes encoded answers, flushing whenever the queue runs empty.
async fn write_replies(
    write: OwnedWriteHalf,
    mut queued: mpsc::Receiver<Vec<u8>>,
) -> io::Result<()> {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, write);
    while let Some(bytes) = queued.recv().await {
        writer.write_all(&bytes).await?;
        while let Ok(bytes) = queued.try_recv() {
            writer.write_all(&bytes).await?;
        }
        writer.flush().await?;
    }
    Ok(())
}

/// A transaction the server holds for a client that read inside it.
struct Held {
    transaction: Box<dyn Transaction>,
    begun: Instant,
}

struct Connection {
    store: Arc<dyn Store>,
    replies: mpsc::Sender<Vec<u8>>,
    in_flight: JoinSet<()>,
    in_flight_slots: Arc<Semaphore>,
    held: HashMap<u64, Held>,
    options: Arc<ServerOptions>,
}

impl Connection {
    async fn run<R>(&mut self, mut reader: FrameReader<R>) -> Result<(), FrameError>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        let mut sweep = tokio::time::interval(Duration::from_millis(HELD_SWEEP_INTERVAL_MS));
        loop {
            let payload = tokio::select! {
                frame = reader.next() => match frame? {
                    Some(payload) => payload,
                    None => return Ok(()),
                },
                _ = sweep.tick() => {
                    self.sweep_held();
                    continue;
                }
            };
            wire_metrics::frame_received(Role::StoreServer, FRAME_HEADER_BYTES + payload.len());
            let frame: RequestFrame = crate::store_protocol::decode_message(payload)?;
            self.handle(frame).await?;
            while self.in_flight.try_join_next().is_some() {}
        }
    }

    fn sweep_held(&mut self) {
        let max = Duration::from_millis(self.options.transaction_duration_ms_max);
        let before = self.held.len();
        self.held.retain(|_, held| held.begun.elapsed() <= max);
        if self.held.len() < before {
            wire_metrics::transactions_expired(before - self.held.len());
        }
    }

    async fn handle(&mut self, frame: RequestFrame<'_>) -> Result<(), FrameError> {
        let id = frame.id;
        if id == NO_REPLY && !matches!(frame.request, Request::Abort { .. }) {
            return Err(FrameError::malformed(
                "a request without an id expects no answer",
            ));
        }
        match frame.request {
            Request::Get { key } => {
                let future = self.store.get(key.0);
                self.answer(id, future, encode_value).await
            }
            Request::GetMany { keys } => {
                let keys = keys.into_iter().map(|key| key.0.to_vec()).collect();
                let future = self.store.get_many(keys);
                self.answer(id, future, encode_values).await
            }
            Request::GetRange { range } => {
                let future = self.store.get_range(range.to_request());
                self.answer(id, future, encode_rows).await
            }
            Request::TransactionGet {
                transaction,
                mutations,
                key,
            } => self.transaction_get(id, transaction, mutations, key).await,
            Request::TransactionGetRange {
                transaction,
                mutations,
                range,
            } => {
                self.transaction_get_range(id, transaction, mutations, range)
                    .await
            }
            Request::Commit {
                transaction,
                age_ms,
                mutations,
            } => self.commit(id, transaction, age_ms, mutations).await,
            Request::Abort { transaction } => {
                self.held.remove(&transaction);
                Ok(())
            }
        }
    }

    /// Answers at once when the store already has the answer, else in a task.
    async fn answer<T: Send + 'static>(
        &mut self,
        id: u64,
        mut future: BoxFuture<'static, T>,
        encode: fn(u64, WireStats, T) -> Vec<u8>,
    ) -> Result<(), FrameError> {
        if let Some(output) = (&mut future).now_or_never() {
            let reply = encode(id, self.store.stats().into(), output);
            return self.send(reply).await;
        }
        let slot = self.in_flight_slot().await?;
        let (store, replies) = (self.store.clone(), self.replies.clone());
        self.in_flight.spawn(async move {
            let output = future.await;
            let reply = encode(id, store.stats().into(), output);
            // A closed channel means the connection is closing; its answers go nowhere.
            let _ = replies.send(reply).await;
            drop(slot);
        });
        Ok(())
    }

    async fn in_flight_slot(&mut self) -> Result<OwnedSemaphorePermit, FrameError> {
        self.in_flight_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|closed| FrameError::Io(io::Error::other(closed)))
    }

    async fn send(&mut self, reply: Vec<u8>) -> Result<(), FrameError> {
        self.replies
            .send(reply)
            .await
            .map_err(|_| FrameError::Io(io::ErrorKind::BrokenPipe.into()))
    }

    /// The held transaction a read joins, begun on its first read; an error answer when it
    /// cannot be had. Reusing a live id breaks the protocol.
    fn held_for_read(
        &mut self,
        reference: TransactionRef,
    ) -> Result<Result<&mut Held, StoreError>, FrameError> {
        if reference.begin {
            if self.held.contains_key(&reference.id) {
                return Err(FrameError::malformed("transaction id reused"));
            }
            if self.held.len() >= self.options.transactions_held_max {
                wire_metrics::transactions_held_limit_hit();
                return Ok(Err(StoreError::Backend {
                    detail: format!(
                        "store server holds {} transactions for this connection already",
                        self.options.transactions_held_max
                    ),
                }));
            }
            let transaction = match self.store.begin() {
                Ok(transaction) => transaction,
                Err(error) => return Ok(Err(error)),
            };
            let held = Held {
                transaction,
                begun: Instant::now(),
            };
            return Ok(Ok(self.held.entry(reference.id).or_insert(held)));
        }
        Ok(self.held.get_mut(&reference.id).ok_or_else(not_held))
    }

    /// Applies shipped mutations to a held transaction; a refused one drops it.
    fn prepare_read(
        &mut self,
        reference: TransactionRef,
        mutations: Bytes<'_>,
    ) -> Result<Result<&mut Held, StoreError>, FrameError> {
        let held = match self.held_for_read(reference)? {
            Ok(held) => held,
            Err(error) => return Ok(Err(error)),
        };
        if let Err(error) = apply_mutations(mutations.0, held.transaction.as_mut())? {
            self.held.remove(&reference.id);
            return Ok(Err(error));
        }
        Ok(self.held.get_mut(&reference.id).ok_or_else(not_held))
    }

    async fn transaction_get(
        &mut self,
        id: u64,
        reference: TransactionRef,
        mutations: Bytes<'_>,
        key: Bytes<'_>,
    ) -> Result<(), FrameError> {
        let result = match self.prepare_read(reference, mutations)? {
            Ok(held) => held.transaction.get(key.0).await,
            Err(error) => Err(error),
        };
        let reply = encode_value(id, self.store.stats().into(), result);
        self.send(reply).await
    }

    async fn transaction_get_range(
        &mut self,
        id: u64,
        reference: TransactionRef,
        mutations: Bytes<'_>,
        range: WireRange<'_>,
    ) -> Result<(), FrameError> {
        let result = match self.prepare_read(reference, mutations)? {
            Ok(held) => held.transaction.get_range(range.to_request()).await,
            Err(error) => Err(error),
        };
        let reply = encode_rows(id, self.store.stats().into(), result);
        self.send(reply).await
    }

    async fn commit(
        &mut self,
        id: u64,
        transaction: Option<u64>,
        age_ms: u64,
        mutations: Bytes<'_>,
    ) -> Result<(), FrameError> {
        let held = transaction.and_then(|transaction| self.held.remove(&transaction));
        let max_ms = self.options.transaction_duration_ms_max;
        let begun = match (transaction, held) {
            _ if age_ms > max_ms => Err(StoreError::TransactionTooOld { max_ms }),
            (Some(_), Some(held)) => Ok(held.transaction),
            (Some(_), None) => Err(not_held()),
            (None, _) => self.store.begin(),
        };
        let mut transaction = match begun {
            Ok(transaction) => transaction,
            Err(error) => return self.refuse_commit(id, error).await,
        };
        // The block's size is close to what its writes and preconditions take: sized once,
        // instead of grown (and copied) by doubling while the block is applied.
        transaction.reserve(mutations.0.len());
        if let Err(error) = apply_mutations(mutations.0, transaction.as_mut())? {
            return self.refuse_commit(id, error).await;
        }
        let future = transaction.commit();
        self.answer(id, future, encode_committed).await
    }

    async fn refuse_commit(&mut self, id: u64, error: StoreError) -> Result<(), FrameError> {
        let reply = encode_committed(
            id,
            self.store.stats().into(),
            Err(CommitError::Rejected(error)),
        );
        self.send(reply).await
    }
}

fn not_held() -> StoreError {
    StoreError::Backend {
        detail: "the store server no longer holds this transaction (expired, refused or \
                 reconnected); restart it"
            .to_string(),
    }
}

/// Encodes one answer frame; an answer that cannot be encoded becomes a backend error.
fn encode_response(out: &mut Vec<u8>, id: u64, stats: WireStats, response: Response<'_>) {
    let start = out.len();
    let frame = ResponseFrame {
        id,
        stats,
        response,
    };
    if let Err(error) = encode_message(out, &frame) {
        tracing::error!(%error, "cannot encode a store answer");
        let fallback = ResponseFrame {
            id,
            stats,
            response: Response::Value(Err(WireStoreError::Backend {
                detail: format!("the store server cannot encode its answer: {error}"),
            })),
        };
        out.truncate(start);
        // A small fixed message always fits in a frame.
        encode_message(out, &fallback).expect("a fallback answer fits in a frame");
    }
    wire_metrics::frame_sent(Role::StoreServer, out.len() - start);
}

fn encode_value(id: u64, stats: WireStats, result: Result<Option<Vec<u8>>, StoreError>) -> Vec<u8> {
    let response = match &result {
        Ok(value) => Response::Value(Ok(value.as_deref().map(Bytes))),
        Err(error) => Response::Value(Err(error.into())),
    };
    let mut out = Vec::new();
    encode_response(&mut out, id, stats, response);
    out
}

/// Splits `items` into leading parts of about [`RESPONSE_PART_BYTES`] and a last part.
fn split_parts<T>(items: &[T], bytes: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut parts = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (index, item) in items.iter().enumerate() {
        size += bytes(item) + 16;
        if size >= RESPONSE_PART_BYTES {
            parts.push(&items[start..=index]);
            (start, size) = (index + 1, 0);
        }
    }
    parts.push(&items[start..]);
    parts
}

fn encode_values(
    id: u64,
    stats: WireStats,
    result: Result<Vec<Option<Vec<u8>>>, StoreError>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let values = match result {
        Ok(values) => values,
        Err(error) => {
            encode_response(&mut out, id, stats, Response::Values(Err((&error).into())));
            return out;
        }
    };
    let parts = split_parts(&values, |value| value.as_ref().map_or(0, Vec::len));
    let last = parts.len() - 1;
    for (index, part) in parts.into_iter().enumerate() {
        let part: Vec<Option<Bytes>> = part.iter().map(|v| v.as_deref().map(Bytes)).collect();
        let response = if index == last {
            Response::Values(Ok(part))
        } else {
            Response::ValuesPart(part)
        };
        encode_response(&mut out, id, stats, response);
    }
    out
}

fn encode_rows(id: u64, stats: WireStats, result: Result<Vec<KeyValue>, StoreError>) -> Vec<u8> {
    let mut out = Vec::new();
    let rows = match result {
        Ok(rows) => rows,
        Err(error) => {
            encode_response(&mut out, id, stats, Response::Rows(Err((&error).into())));
            return out;
        }
    };
    let parts = split_parts(&rows, |(key, value)| key.len() + value.len());
    let last = parts.len() - 1;
    for (index, part) in parts.into_iter().enumerate() {
        let part: Vec<Row> = part.iter().map(|(k, v)| (Bytes(k), Bytes(v))).collect();
        let response = if index == last {
            Response::Rows(Ok(part))
        } else {
            Response::RowsPart(part)
        };
        encode_response(&mut out, id, stats, response);
    }
    out
}

fn encode_committed(id: u64, stats: WireStats, result: Result<u64, CommitError>) -> Vec<u8> {
    let response = match &result {
        Ok(version) => Response::Committed(Ok(*version)),
        Err(error) => Response::Committed(Err(WireCommitError::from_error(error))),
    };
    let mut out = Vec::new();
    encode_response(&mut out, id, stats, response);
    out
}
