//! # drills — load generators, invariant checks and the benchmark harness
//!
//! Owns the code that exercises a deployment from the outside as users and operators do:
//! [`bench::engine`] (`tessera bench engine`: a cell and the embedded engine in one
//! process), [`bench::dcs`] (`tessera bench dcs`: a store and three DC node processes),
//! [`local`] (a local deployment as child processes, for `tessera up` and the benchmarks), [`crashload`] (a load that prints every acknowledged transfer, for kill -9
//! tests) and [`verify`] (checks a store against the acknowledgements and the money
//! invariants). Later: fault injection, drill scenarios and reports.
//!
//! Must never write to a real keyspace when pointed at a live deployment unless told to,
//! and never run unbounded: every load has a count and stops by itself.

pub mod bench;
pub mod cpu;
pub mod crashload;
pub mod httpc;
pub mod local;
pub mod rss;
pub mod up;
pub mod verify;
