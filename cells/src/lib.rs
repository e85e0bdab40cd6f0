//! # cells — the cell model of Tessera
//!
//! This crate owns everything that is true of a cell regardless of how it is run:
//!
//! * [`ids`]: client-chosen identifiers (users, accounts, transfers, holds);
//! * [`money`]: currencies and amounts as checked integer minor units
//!   (`rust_decimal` only at the edges, with exact scale checks);
//! * [`slot`]: the fixed, seeded, documented `user -> slot -> cell` hash;
//! * [`keys`] and [`records`]: the tuple-encoded key schema and the records stored under it;
//! * [`ownership`]: the versioned ownership table (slot / whitelisted user → DC, epoch),
//!   the fence every money commit carries, DC leases and takeovers;
//! * [`ledger`]: the ledger rules (result codes, the posting rules every actor applies)
//!   and the audit that checks the money invariants over a whole store;
//! * [`store`]: the storage interface (shaped like FoundationDB), its conformance suite
//!   and the embedded backend (a group-committed write-ahead log).
//!
//! It must never depend on actix, tokio, HTTP or FoundationDB (FoundationDB sits behind
//! a cargo feature in a backend module). No function here blocks on the network.
//!
//! ```
//! use cells::{ids::UserId, slot};
//! let user: UserId = "merchant-42".parse().unwrap();
//! let slot = slot::slot_of(&user);
//! assert_eq!(slot.cell().index(), slot.index() / 256);
//! ```

pub mod ids;
pub mod keys;
pub mod ledger;
pub mod money;
pub mod ownership;
pub mod records;
pub mod shift;
pub mod slot;
pub mod store;
