//! Metric names and recording helpers of the wire crate (`tessera_wire_*`).
//!
//! Owns: the names and labels of every metric this crate records. Must never: record a
//! label with unbounded values (peers and ids go to logs, not labels).

/// Which side of a link recorded a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The remote storage client.
    StoreClient,
    /// The `tessera store` server.
    StoreServer,
    /// A DC node's server (router and peer DCs connect to it).
    DcServer,
    /// A client of a DC node (the router, or a peer DC forwarding credits).
    DcClient,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::StoreClient => "store_client",
            Role::StoreServer => "store_server",
            Role::DcServer => "dc_server",
            Role::DcClient => "dc_client",
        }
    }
}

/// The per-frame counters of one role, resolved once: frames are counted by the million,
/// and a lookup in the recorder's registry per frame showed in profiles. (Handles resolved
/// before a recorder is installed stay no-ops; every binary installs its recorder first.)
struct FrameCounters {
    frames_sent: metrics::Counter,
    bytes_sent: metrics::Counter,
    frames_received: metrics::Counter,
    bytes_received: metrics::Counter,
}

fn frame_counters(role: Role) -> &'static FrameCounters {
    static COUNTERS: [std::sync::OnceLock<FrameCounters>; 4] =
        [const { std::sync::OnceLock::new() }; 4];
    let index = match role {
        Role::StoreClient => 0,
        Role::StoreServer => 1,
        Role::DcServer => 2,
        Role::DcClient => 3,
    };
    COUNTERS[index].get_or_init(|| {
        let label = role.label();
        FrameCounters {
            frames_sent: metrics::counter!("tessera_wire_frames_sent_total", "role" => label),
            bytes_sent: metrics::counter!("tessera_wire_bytes_sent_total", "role" => label),
            frames_received: metrics::counter!("tessera_wire_frames_received_total", "role" => label),
            bytes_received: metrics::counter!("tessera_wire_bytes_received_total", "role" => label),
        }
    })
}

pub fn frame_sent(role: Role, bytes: usize) {
    let counters = frame_counters(role);
    counters.frames_sent.increment(1);
    counters.bytes_sent.increment(bytes as u64);
}

pub fn frame_received(role: Role, bytes: usize) {
    let counters = frame_counters(role);
    counters.frames_received.increment(1);
    counters.bytes_received.increment(bytes as u64);
}

/// A connection closed because of a bad frame or a failed socket.
pub fn frame_error(role: Role, reason: &'static str) {
    metrics::counter!(
        "tessera_wire_frame_errors_total",
        "role" => role.label(),
        "reason" => reason
    )
    .increment(1);
}

pub fn connection_opened(role: Role) {
    metrics::counter!("tessera_wire_connections_opened_total", "role" => role.label()).increment(1);
    metrics::gauge!("tessera_wire_connections_open", "role" => role.label()).increment(1.0);
}

pub fn connection_closed(role: Role) {
    metrics::gauge!("tessera_wire_connections_open", "role" => role.label()).decrement(1.0);
}

/// The server refused a connection at its connection limit.
pub fn connection_refused() {
    metrics::counter!("tessera_wire_connections_refused_total").increment(1);
}

/// The client refused a request before sending it (`not_connected`, `queue_full`,
/// `too_large`).
pub fn request_refused(reason: &'static str) {
    metrics::counter!("tessera_wire_requests_refused_total", "reason" => reason).increment(1);
}

/// Requests in flight when their connection was lost (`read`, `commit`).
pub fn requests_lost(kind: &'static str, count: usize) {
    metrics::counter!("tessera_wire_requests_lost_total", "kind" => kind).increment(count as u64);
}

/// The server refused a transaction read at its held-transactions limit.
pub fn transactions_held_limit_hit() {
    metrics::counter!("tessera_wire_transactions_held_limit_hits_total").increment(1);
}

/// Server-held transactions dropped for age.
pub fn transactions_expired(count: usize) {
    metrics::counter!("tessera_wire_transactions_expired_total").increment(count as u64);
}
