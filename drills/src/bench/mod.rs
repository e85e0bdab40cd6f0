//! Benchmark harnesses. [`engine`]: the ledger core in one process. [`dcs`]: a store and
//! three DC node processes on loopback, through the router's routing core. [`http`]: the router's
//! HTTP API from outside.

pub mod dcs;
pub mod engine;
pub mod http;
