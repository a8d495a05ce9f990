//! Wire definitions of the Apache RocketMQ 5 gRPC protocol, and of Ferry's
//! extensions to it.
//!
//! The `.proto` files under `proto/` are Ferry's own rendition of the public
//! `apache.rocketmq.v2` contract: package, service, message names and field
//! numbers match it exactly, because that is what the official clients put on
//! the wire. They are compiled at build time by `protox` (pure Rust), so no
//! system `protoc` is needed. Nothing else lives here: no logic, no helpers
//! beyond the generated code.

#![allow(clippy::all, clippy::pedantic)]

/// Generated code, one module per protobuf package: the nesting mirrors
/// the package names so that generated cross-package paths resolve.
pub mod apache {
    pub mod rocketmq {
        /// Generated types of package `apache.rocketmq.v2`.
        pub mod v2 {
            tonic::include_proto!("apache.rocketmq.v2");
        }
    }
}

/// Ferry's own additions (package `ferry.v1`, `proto/ferry/v1/`): calls
/// only Ferry's clients make, each with a standard RocketMQ fallback.
pub mod ferry {
    pub mod v1 {
        tonic::include_proto!("ferry.v1");

        /// Request header by which a consumer accepts CRC32 body digests
        /// (eight upper-case hex digits) instead of MD5 on delivery.
        pub const ACCEPT_DIGEST_HEADER: &str = "x-ferry-accept-digest";
    }
}

pub use apache::rocketmq::v2;
pub use ferry::v1 as ext;

pub use prost_types;
