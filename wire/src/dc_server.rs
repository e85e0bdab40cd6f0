//! The DC protocol server: accepts connections from the router and other DCs and hands
//! each decoded request to a [`DcHandler`] (the DC node's ledger).
//!
//! Owns connection handling: bounded connections, bounded requests in flight per
//! connection, bounded answers queued per connection; a bad frame (truncated, oversized,
//! unknown version, garbage) or a request that breaks the protocol closes that connection
//! with a logged reason and touches nothing else.
//!
//! Must never: run a request it could not fully decode and check, or block the accept loop
//! on one connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cells::keys::Keyspace;
use cells::ledger::{Command, CommandResult, ErrorCode};
use cells::store::{BoxFuture, KeyValue};
use futures::FutureExt;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::dc_protocol::{self, DcRequest, DcResponse, NodeStatus};
use crate::frame::{FrameError, FrameReader};
use crate::metrics::{self as wire_metrics, Role};

/// Connections served at once by default.
pub const DC_CONNECTIONS_MAX_DEFAULT: usize = 256;
/// Requests of one connection in flight at once by default.
pub const DC_REQUESTS_IN_FLIGHT_MAX_DEFAULT: usize = 1_024;
/// Encoded answers of one connection waiting for its socket, by default.
pub const DC_REPLIES_QUEUED_MAX_DEFAULT: usize = 1_024;
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// What a DC node does with requests.
pub trait DcHandler: Send + Sync + 'static {
    /// Runs a batch; one result per command, or why the whole batch was refused.
    fn execute(
        &self,
        space: Keyspace,
        commands: Vec<Command>,
    ) -> BoxFuture<'static, Result<Vec<CommandResult>, ErrorCode>>;
    /// Takes credit legs from another DC (best effort; must not block).
    fn credits(&self, space: Keyspace, legs: Vec<KeyValue>);
    /// The node's status.
    fn status(&self) -> NodeStatus;
    /// Freezes payer slots `first..=last` and drains them (at most `max_ms`); answers
    /// whether they drained and how long that took, in microseconds.
    fn freeze(&self, first: u16, last: u16, max_ms: u32) -> BoxFuture<'static, (bool, u64)>;
    /// Reloads the ownership table, then thaws `first..=last`; answers the table version.
    fn thaw(&self, first: u16, last: u16) -> BoxFuture<'static, u64>;
    /// Reloads the ownership table; answers its version.
    fn reload(&self) -> BoxFuture<'static, u64>;
}

/// Limits of a [`serve`] call.
#[derive(Debug, Clone)]
pub struct DcServerOptions {
    pub connections_max: usize,
    pub requests_in_flight_max: usize,
    pub replies_queued_max: usize,
}

impl Default for DcServerOptions {
    fn default() -> Self {
        DcServerOptions {
            connections_max: DC_CONNECTIONS_MAX_DEFAULT,
            requests_in_flight_max: DC_REQUESTS_IN_FLIGHT_MAX_DEFAULT,
            replies_queued_max: DC_REPLIES_QUEUED_MAX_DEFAULT,
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` resolves.
pub async fn serve(
    handler: Arc<dyn DcHandler>,
    listener: TcpListener,
    options: DcServerOptions,
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
                        tracing::warn!(%error, "accepting a DC connection failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, max = options.connections_max,
                        "refusing a DC connection: connection limit reached");
                    wire_metrics::connection_refused();
                    continue;
                };
                let connection = serve_connection(handler.clone(), stream, peer, options.clone());
                connections.spawn(connection.map(move |()| drop(slot)));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
    Ok(())
}

async fn serve_connection(
    handler: Arc<dyn DcHandler>,
    stream: TcpStream,
    peer: SocketAddr,
    options: Arc<DcServerOptions>,
) {
    wire_metrics::connection_opened(Role::DcServer);
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    let (read, write) = stream.into_split();
    let (replies, queued) = mpsc::channel(options.replies_queued_max);
    let mut writer = tokio::spawn(write_replies(write, queued));
    let in_flight = Arc::new(Semaphore::new(options.requests_in_flight_max));
    let mut tasks = JoinSet::new();
    let result = tokio::select! {
        read = read_requests(&handler, FrameReader::new(read), &replies, &in_flight, &mut tasks) => read,
        written = &mut writer => match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(FrameError::Io(error)),
            Err(join) => Err(FrameError::Io(io::Error::other(join))),
        },
    };
    // Requests already handed to the ledger finish (their commits are the ledger's); their
    // answers go out if the socket still takes them.
    drop(replies);
    while tasks.join_next().await.is_some() {}
    let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer).await;
    writer.abort();
    match result {
        Ok(()) => tracing::debug!(%peer, "DC connection closed by the peer"),
        Err(error) => {
            wire_metrics::frame_error(Role::DcServer, error.reason());
            tracing::warn!(%peer, reason = error.reason(), %error, "closing DC connection");
        }
    }
    wire_metrics::connection_closed(Role::DcServer);
}

async fn read_requests(
    handler: &Arc<dyn DcHandler>,
    mut frames: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    replies: &mpsc::Sender<Vec<u8>>,
    in_flight: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
) -> Result<(), FrameError> {
    loop {
        while tasks.try_join_next().is_some() {}
        let Some(payload) = frames.next().await? else {
            return Ok(());
        };
        let request: DcRequest = dc_protocol::decode(payload)?;
        if let Err(error) = request.check() {
            match (error.code(), request.id()) {
                (Some(code), Some(id)) => {
                    let answer = DcResponse::Executed {
                        id,
                        results: Err(code),
                    };
                    send(replies, &answer).await?;
                    continue;
                }
                _ => return Err(FrameError::malformed(error)),
            }
        }
        match request {
            DcRequest::Execute {
                id,
                space,
                commands,
            } => {
                let permit = in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| FrameError::malformed("server closing"))?;
                let run = handler.execute(space, commands);
                let replies = replies.clone();
                tasks.spawn(async move {
                    let results = run.await;
                    drop(permit);
                    let _ = send(&replies, &DcResponse::Executed { id, results }).await;
                });
            }
            DcRequest::Credits { space, legs } => handler.credits(space, legs),
            DcRequest::Status { id } => {
                let status = handler.status();
                send(replies, &DcResponse::Status { id, status }).await?;
            }
            DcRequest::Freeze {
                id,
                first,
                last,
                max_ms,
            } => {
                let run = handler.freeze(first, last, max_ms);
                let replies = replies.clone();
                tasks.spawn(async move {
                    let (drained, drain_us) = run.await;
                    let answer = DcResponse::Frozen {
                        id,
                        drained,
                        drain_us,
                    };
                    let _ = send(&replies, &answer).await;
                });
            }
            DcRequest::Thaw { id, first, last } => {
                let run = handler.thaw(first, last);
                let replies = replies.clone();
                tasks.spawn(async move {
                    let table_version = run.await;
                    let _ = send(&replies, &DcResponse::Thawed { id, table_version }).await;
                });
            }
            DcRequest::Reload { id } => {
                let run = handler.reload();
                let replies = replies.clone();
                tasks.spawn(async move {
                    let table_version = run.await;
                    let _ = send(&replies, &DcResponse::Reloaded { id, table_version }).await;
                });
            }
        }
    }
}

async fn send(replies: &mpsc::Sender<Vec<u8>>, answer: &DcResponse) -> Result<(), FrameError> {
    let mut out = Vec::new();
    dc_protocol::encode(answer, &mut out)?;
    replies
        .send(out)
        .await
        .map_err(|_| FrameError::Io(io::Error::from(io::ErrorKind::BrokenPipe)))
}

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
