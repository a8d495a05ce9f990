//! Everything `ferry serve` can be told.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_broker::CoreConfig;
use ferry_store::retention::RetentionPolicy;
use ferry_store::{DiskHook, FlushMode};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub grpc_listen: String,
    pub http_listen: String,
    /// Address clients are told to connect to in route answers; by default
    /// the address the client itself used.
    pub advertise: Option<String>,
    pub flush: FlushMode,
    pub async_flush_interval: Duration,
    pub segment_bytes: u64,
    pub retention: RetentionPolicy,
    pub retention_check: Duration,
    /// Largest gRPC request frame, checked before the frame is buffered.
    pub max_request_bytes: usize,
    pub max_clients: usize,
    /// Invisible duration for receives that do not give one (push consumers).
    pub default_invisible: Duration,
    /// Long-polling timeout for receives that do not give one.
    pub default_long_polling: Duration,
    /// Serve `ferry.v1.Extensions` (Ferry's own cheaper forms of standard
    /// calls). Off, Ferry answers its own clients as any RocketMQ broker
    /// would, and they fall back to the standard calls.
    pub extensions: bool,
    pub core: CoreConfig,
    /// How often a failed commit log tries to heal (see `Engine::heal`).
    pub heal_interval: Duration,
    /// Passed to the commit log (`LogConfig::disk_hook`): tests inject disk
    /// faults through it. Never set in production (no flag sets it).
    pub disk_hook: Option<Arc<dyn DiskHook>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("./ferry-data"),
            grpc_listen: "127.0.0.1:8081".into(),
            http_listen: "127.0.0.1:8082".into(),
            advertise: None,
            flush: FlushMode::Sync,
            async_flush_interval: Duration::from_millis(1000),
            segment_bytes: 256 << 20,
            retention: RetentionPolicy::default(),
            retention_check: Duration::from_secs(60),
            max_request_bytes: 16 << 20,
            max_clients: 10_000,
            default_invisible: Duration::from_secs(60),
            default_long_polling: Duration::from_secs(20),
            extensions: true,
            core: CoreConfig::default(),
            heal_interval: Duration::from_secs(1),
            disk_hook: None,
        }
    }
}
