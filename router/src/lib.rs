//! Tessera's router: what clients reach first.
//!
//! Owns routing (user → slot → owning DC from the cached, followed ownership table) and
//! forwarding batches to DC nodes over the DC protocol. Holds no money state: everything
//! durable is in the store, every answer comes from the DC that owns the user.
//!
//! Must never: serve a command itself that changes money; retry with new ids.

pub mod admin;
pub mod auth;
pub mod http;
pub mod ops;
pub mod routing;
pub mod server;

pub use routing::{RouteStats, Routing, RoutingOptions};
