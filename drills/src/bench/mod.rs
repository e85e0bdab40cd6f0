//! Benchmark harnesses. [`engine`]: the ledger core in one process.

pub mod engine;
