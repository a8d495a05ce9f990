//! An outbox relay: claims committed rows from the order service's
//! PostgreSQL outbox, publishes them to Ferry, marks them sent. Two run at
//! once; their leases keep them off each other's rows.

use std::sync::Mutex;
use std::time::Duration;

use ferry_client::{ClientConfig, Producer};
use ferry_outbox::{
    FerryPublisher, PendingMessage, PublishError, Publisher, Relay, RelayConfig, Store,
};

use crate::process::kill_self;
use crate::random::{seed_from_clock, Random};
use crate::{topic, Res};

/// Short, so the rows of a killed relay come back within the demo (the
/// default is 30 s).
pub const LEASE: Duration = Duration::from_secs(3);

/// Ferry, with a chance of the relay dying right after a batch was
/// published, before the relay could mark its rows sent: the worst moment.
/// The rows come back when the lease runs out and are published again,
/// under the same message ids; the stock service's inbox drops them.
struct DyingPublisher {
    ferry: FerryPublisher,
    crash: f64,
    rng: Mutex<Random>,
}

impl Publisher for DyingPublisher {
    fn max_batch(&self) -> usize {
        self.ferry.max_batch()
    }

    async fn publish(&self, batch: &[PendingMessage]) -> Result<(), PublishError> {
        self.ferry.publish(batch).await?;
        if self.rng.lock().is_ok_and(|mut r| r.chance(self.crash)) {
            kill_self(); // published, not marked sent
        }
        Ok(())
    }
}

pub async fn run(server: &str, url: &str, run: &str, name: &str, crash: f64) -> Res<()> {
    let store = Store::connect(url, 4).await?;
    let producer = Producer::builder(ClientConfig::new(server))
        .topics([topic(run)])
        .start()
        .await?;
    let publisher = DyingPublisher {
        ferry: FerryPublisher::new(producer),
        crash,
        rng: Mutex::new(Random::new(
            seed_from_clock() ^ u64::from(std::process::id()),
        )),
    };
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
    let relay = Relay::start(store, publisher, config)?;
    // The demo kills it; run by hand, Ctrl-C hands its claimed rows back.
    tokio::signal::ctrl_c().await?;
    relay.shutdown().await;
    Ok(())
}
