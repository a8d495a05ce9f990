//! The SQLite handling both services share.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::Res;

/// Opens (creating) a service's database: WAL, so a kill -9 never loses a
/// committed transaction, and one connection, so the service's own
/// transactions (the order loop and its checker, or concurrent stock
/// handlers) take turns instead of failing on SQLite's single writer.
pub async fn open(path: &Path) -> Res<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    Ok(SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?)
}

/// Rows of `table` in the database at `path` (the driver's progress checks).
pub async fn count(path: &Path, table: &str) -> Res<u64> {
    let pool = open(path).await?;
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(n as u64)
}
