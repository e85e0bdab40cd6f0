//! # wire — Tessera's network transport
//!
//! Owns: the bounded, versioned, length-prefixed frame codec every Tessera process speaks
//! over TCP ([`frame`]), the store protocol ([`store_protocol`]) with its two ends: the
//! `remote` storage client ([`remote::RemoteStore`]) and the server behind `tessera store`
//! ([`store_server::serve`]), the DC protocol between routers and DC nodes, and the
//! thread-own connections of both clients ([`local_io`]).
//!
//! Must never: hold ledger state, interpret money, accept a frame larger than its bound,
//! or queue without a limit.
//!
//! ```no_run
//! use std::sync::Arc;
//! use cells::store::embedded::{EmbeddedOptions, EmbeddedStore};
//! use cells::store::Store;
//! use wire::remote::{ClientOptions, RemoteStore};
//! use wire::store_server::{serve, ServerOptions};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let store: Arc<dyn Store> = EmbeddedStore::open(
//!     std::path::Path::new("/tmp/store"),
//!     EmbeddedOptions::default(),
//! )?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7400").await?;
//! tokio::spawn(serve(store, listener, ServerOptions::default(), std::future::pending()));
//! // In a DC node (any executor):
//! let remote = RemoteStore::connect("127.0.0.1:7400", ClientOptions::default())?;
//! let mut transaction = remote.begin()?;
//! transaction.set(b"key", b"value")?;
//! let version = transaction.commit().await?;
//! # let _ = version; Ok(()) }
//! ```

pub mod dc_client;
pub mod dc_protocol;
pub mod dc_server;
pub mod frame;
pub mod local_io;
pub mod metrics;
pub mod remote;
pub mod store_protocol;
pub mod store_server;
