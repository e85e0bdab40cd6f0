//! # wire — Tessera's network transport
//!
//! Owns: the bounded, versioned, length-prefixed frame codec every Tessera process speaks
//! over TCP, the store protocol (the `remote` storage client and the server behind
//! `tessera store`), and (later) the DC protocol between routers and DC nodes.
//!
//! Must never: hold ledger state, interpret money, or accept a frame larger than its
//! bound.
