//! # actors — account actors, the outbox relay and the ledger entry point
//!
//! Owns how ledger commands are scheduled and committed:
//!
//! * [`account::AccountActor`]: one actix actor per active account. It holds the balance in
//!   memory, checks idempotency and limits (INV-5), and commits the postings of everything
//!   that accumulated while its previous commit was in flight as one store transaction
//!   (adaptive batching: no timers on the hot path, at most
//!   [`cells::ledger::BATCH_COMMANDS_MAX`] postings per commit), fenced by its slot's epoch.
//! * [`relay::OutboxRelay`]: delivers each credit leg written to the outbox to the payee's
//!   account actor, exactly once (INV-3): the payee's commit requires the outbox entry and
//!   clears it in the same transaction.
//! * [`Ledger`]: the library entry point. It takes a batch of [`cells::ledger::Command`]s and
//!   returns one typed result per command.
//! * [`node::DcNode`]: a DC node. It hosts the ledgers of one DC in DC mode, keeps its
//!   lease, follows the ownership table, takes over dead peers and serves the DC protocol.
//!
//! Must never: acknowledge before the store says durable, queue without a limit (every
//! inbox and mailbox is bounded; a full one answers [`cells::ledger::ErrorCode::Overloaded`]), or
//! block an actor thread on I/O.
//!
//! ```no_run
//! # async fn example(store: std::sync::Arc<dyn cells::store::Store>) {
//! use actors::{Ledger, LedgerConfig};
//! let ledger = Ledger::start(store, LedgerConfig::default());
//! let results = ledger.execute(vec![]).await.unwrap();
//! assert!(results.is_empty());
//! # }
//! ```

pub mod account;
pub mod answers;
pub mod config;
mod freeze;
pub mod handover;
pub mod ledger;
pub mod node;
pub mod registry;
pub mod relay;
mod seen_holds;
pub mod shift;
pub mod split;
pub mod stats;

pub use config::LedgerConfig;
pub use ledger::{BatchError, Ledger};
pub use registry::CreditForwarder;
pub use stats::LedgerStats;
