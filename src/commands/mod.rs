//! One module per group of subcommands; each turns parsed arguments into library calls.

pub mod cluster;
pub mod engine;
pub mod local;
pub mod route;
