//! An outbox relay: claims committed rows from the order service's
//! PostgreSQL outbox, publishes them to Ferry, marks them sent. Two run at
//! once; their leases keep them off each other's rows.

use std::time::Duration;

use ferry_client::{ClientConfig, Producer};
use ferry_outbox::{FerryPublisher, Relay, RelayConfig, Store};

use crate::{topic, Res};

/// Short, so the rows of a killed relay come back within the demo (the
/// default is 30 s).
pub const LEASE: Duration = Duration::from_secs(3);

pub async fn run(server: &str, url: &str, run: &str, name: &str) -> Res<()> {
    let store = Store::connect(url, 4).await?;
    let producer = Producer::builder(ClientConfig::new(server))
        .topics([topic(run)])
        .start()
        .await?;
    let config = RelayConfig {
        // Unique per process: a restarted relay is a new lease owner.
        owner: format!("{name}-{}", std::process::id()),
        lease: LEASE,
        batch: 50,
        idle_poll: Duration::from_millis(50),
        retry_base: Duration::from_millis(200),
        retry_max: Duration::from_secs(2),
        stats_interval: Duration::from_secs(1),
        ..RelayConfig::default()
    };
    let relay = Relay::start(store, FerryPublisher::new(producer), config)?;
    // The demo kills it; run by hand, Ctrl-C hands its claimed rows back.
    tokio::signal::ctrl_c().await?;
    relay.shutdown().await;
    Ok(())
}
