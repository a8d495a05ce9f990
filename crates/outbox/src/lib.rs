//! `ferry-outbox`: the local message table (transactional outbox) with a
//! relay, and the idempotent consumer (inbox), on PostgreSQL, MySQL 8 /
//! MariaDB 10.6+ and SQLite through sqlx.
//!
//! The pattern, for a service that cannot use half messages:
//!
//! 1. **Write**: in the transaction that changes business rows, also
//!    [`Outbox::enqueue`] the message. Both commit, or neither.
//! 2. **Relay**: a [`Relay`] (in the service, or `ferry outbox relay`)
//!    claims pending rows under a lease timed by the database's clock,
//!    publishes them through a [`Publisher`] ([`FerryPublisher`] for
//!    Ferry), and marks them sent. Several relays share the table without
//!    publishing a row twice; a crashed relay's rows return when its lease
//!    runs out and are published again, under the same message id.
//! 3. **Consume**: in the transaction that applies a message's effect,
//!    [`Inbox::process_once`] records the message id first; a redelivery
//!    finds it and is skipped, so the effect happens once.
//!
//! ```no_run
//! use ferry_outbox::{Inbox, Outbox, OutboxMessage, Processed};
//! # async fn demo(pg: sqlx::PgPool, my: sqlx::MySqlPool) -> Result<(), ferry_outbox::OutboxError> {
//! ferry_outbox::migrate("postgres://localhost/orders").await?;
//! let outbox = Outbox::new();
//! let mut tx = pg.begin().await?;
//! sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
//! let message = ferry_client::Message::new("orders", "order 42").with_key("42");
//! outbox.enqueue(&mut tx, &OutboxMessage::from(message).ordered_by("customer-7")).await?;
//! tx.commit().await?;
//!
//! // On the consumer, for a received message `id`:
//! let inbox = Inbox::new();
//! let mut tx = my.begin().await?;
//! let id = "0102...";
//! let r = inbox
//!     .process_once(&mut tx, "stock", id, |tx| {
//!         Box::pin(async move {
//!             sqlx::query("UPDATE stock SET n = n - 1").execute(&mut **tx).await?;
//!             Ok::<_, ferry_outbox::OutboxError>(())
//!         })
//!     })
//!     .await?;
//! tx.commit().await?;
//! assert!(!matches!(r, Processed::Duplicate));
//! # Ok(()) }
//! ```

mod cleanup;
mod dialect;
mod enqueue;
mod error;
mod inbox;
mod message;
mod metrics;
pub mod plan;
mod publisher;
mod relay;
mod schema;
mod store;

pub use cleanup::{sweep, Janitor, JanitorConfig, Swept};
pub use dialect::Dialect;
pub use enqueue::{key_slot, Outbox, KEY_SLOTS, MAX_INSERT_BYTES, MAX_ROWS_PER_INSERT};
pub use error::{OutboxError, Result};
pub use inbox::{HandlerFuture, Inbox, Processed, DEFAULT_WINDOW};
pub use message::{limits, OutboxMessage, PendingMessage};
pub use metrics::{InboxMetrics, OutboxMetrics, RelayMetrics};
pub use publisher::{FerryPublisher, PublishError, Publisher};
pub use relay::{Relay, RelayConfig};
pub use schema::VERSION as SCHEMA_VERSION;
pub use store::{Claim, FailedRow, Stats, Store, MAX_CLAIM};

/// Creates or upgrades the outbox and inbox tables at `url`
/// (`postgres://`, `mysql://`, `mariadb://`, `sqlite://`). Idempotent;
/// safe to call from every process at start-up.
pub async fn migrate(url: &str) -> Result<()> {
    let store = Store::connect(url, 1).await?;
    store.pool().close().await;
    Ok(())
}
