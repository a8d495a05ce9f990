//! The operator commands: they talk to a running broker, over gRPC (as a
//! RocketMQ 5 client: `send`, `consume`) and over its admin HTTP API
//! (everything else). Tables by default, `--json` for scripts; any failure
//! names what was wrong and exits non-zero.

pub mod consume;
pub mod dlq;
pub mod group;
pub mod message;
pub mod outbox;
pub mod output;
pub mod send;
pub mod topic;
pub mod tx;

use std::time::Duration;

use clap::Args;
use ferry_admin::AdminClient;
use ferry_client::ClientConfig;

pub type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Which broker to talk to, and how to print.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Broker gRPC address, host:port (where RocketMQ clients connect)
    #[arg(
        long,
        env = "FERRY_SERVER",
        default_value = "127.0.0.1:8081",
        global = true
    )]
    pub server: String,
    /// Broker admin HTTP address, host:port [default: the --server host, port 8082]
    #[arg(long, env = "FERRY_HTTP", global = true)]
    pub http: Option<String>,
    /// Print JSON (one document, or one object per line for streams) instead of tables
    #[arg(long, global = true)]
    pub json: bool,
    /// Deadline of one call to the broker
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
}

impl Target {
    pub fn admin(&self) -> AdminClient {
        let addr = self.http.clone().unwrap_or_else(|| {
            let host = self
                .server
                .rsplit_once(':')
                .map_or(self.server.as_str(), |(h, _)| h);
            format!("{host}:8082")
        });
        AdminClient::new(addr).with_timeout(self.timeout)
    }

    pub fn client(&self) -> ClientConfig {
        ClientConfig::new(self.server.clone()).with_request_timeout(self.timeout)
    }
}

/// Runs an operator command on a small runtime of its own.
pub fn block_on<F>(work: F) -> CliResult
where
    F: std::future::Future<Output = CliResult>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(work)
}

/// An error for the user: what was wrong, in their terms.
pub fn fail(message: impl Into<String>) -> Box<dyn std::error::Error + Send + Sync> {
    message.into().into()
}
