//! Wire definitions of the Apache RocketMQ 5 gRPC protocol.
//!
//! The `.proto` files under `proto/` are Ferry's own rendition of the public
//! `apache.rocketmq.v2` contract: package, service, message names and field
//! numbers match it exactly, because that is what the official clients put on
//! the wire. They are compiled at build time by `protox` (pure Rust), so no
//! system `protoc` is needed. Nothing else lives here: no logic, no helpers
//! beyond the generated code.

#![allow(clippy::all, clippy::pedantic)]

/// Generated types of package `apache.rocketmq.v2`.
pub mod v2 {
    tonic::include_proto!("apache.rocketmq.v2");
}

pub use prost_types;
