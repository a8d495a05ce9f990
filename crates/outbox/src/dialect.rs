//! The SQL that differs between PostgreSQL, MySQL/MariaDB and SQLite. Every
//! statement the library sends is written here or assembled from these
//! pieces, so a reader sees all three variants side by side.

use crate::error::OutboxError;

/// Values bound per inserted outbox row.
pub const INSERT_BINDS: usize = 10;

/// Which SQL the database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Dialect {
    /// From a connection URL's scheme.
    pub fn from_url(url: &str) -> Result<Dialect, OutboxError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            "mysql" | "mariadb" => Ok(Dialect::MySql),
            "sqlite" => Ok(Dialect::Sqlite),
            _ => Err(OutboxError::Invalid {
                what: "database URL",
                why: format!(
                    "scheme {scheme:?} is not one of postgres://, mysql://, mariadb://, sqlite://"
                ),
            }),
        }
    }

    /// From sqlx's `Database::NAME`. The caller's transaction must be a
    /// native one: through sqlx's `Any` the database is not known here.
    pub fn from_driver_name(name: &str) -> Result<Dialect, OutboxError> {
        match name {
            "PostgreSQL" => Ok(Dialect::Postgres),
            "MySQL" => Ok(Dialect::MySql),
            "SQLite" => Ok(Dialect::Sqlite),
            other => Err(OutboxError::Invalid {
                what: "database",
                why: format!(
                    "{other}: pass a PostgreSQL, MySQL or SQLite transaction (not sqlx::Any)"
                ),
            }),
        }
    }

    /// The `n`th (1-based) bind placeholder.
    pub fn ph(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::MySql | Dialect::Sqlite => "?".to_string(),
        }
    }

    /// `(p_from, …, p_from+count-1)` for an `IN` list.
    pub fn in_list(self, from: usize, count: usize) -> String {
        assert!(count > 0, "an IN list needs at least one element");
        let parts: Vec<String> = (from..from + count).map(|n| self.ph(n)).collect();
        format!("({})", parts.join(", "))
    }

    /// The database's clock, in Unix milliseconds. Leases and ages use the
    /// database's clock, never a relay's: relays on different hosts then
    /// agree on when a lease has run out.
    pub fn now_ms(self) -> &'static str {
        match self {
            Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            // From UTC directly: UNIX_TIMESTAMP(NOW()) goes through the
            // session time zone and repeats an hour when DST ends.
            Dialect::MySql => {
                "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) DIV 1000)"
            }
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        }
    }

    /// Row locks that other claimers step over instead of waiting on.
    /// SQLite has one writer at a time, so it needs (and has) none.
    pub fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Postgres | Dialect::MySql => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        }
    }

    /// Opens a claim transaction. SQLite takes its write lock up front, so
    /// a read-then-write transaction cannot fail half way on a busy lock.
    pub fn begin(self) -> &'static str {
        match self {
            Dialect::Postgres | Dialect::MySql => "BEGIN",
            Dialect::Sqlite => "BEGIN IMMEDIATE",
        }
    }

    /// Takes the per-key lock row that serialises writers of one ordering
    /// key, so their row ids come out in commit order. The update (not "do
    /// nothing") matters: only an update locks an existing row.
    pub fn lock_key(self) -> String {
        let now = self.now_ms();
        match self {
            Dialect::Postgres | Dialect::Sqlite => format!(
                "INSERT INTO ferry_outbox_keys (ordering_key, locked_ms) VALUES ({}, {now}) \
                 ON CONFLICT (ordering_key) DO UPDATE SET locked_ms = excluded.locked_ms",
                self.ph(1)
            ),
            Dialect::MySql => format!(
                "INSERT INTO ferry_outbox_keys (ordering_key, locked_ms) VALUES (?, {now}) \
                 ON DUPLICATE KEY UPDATE locked_ms = VALUES(locked_ms)"
            ),
        }
    }

    /// Inserts `rows` outbox rows in one statement, ids ascending in
    /// order; each binds [`INSERT_BINDS`] values in `crate::enqueue`'s
    /// order.
    pub fn insert_rows(self, rows: usize) -> String {
        assert!(rows > 0, "an insert needs at least one row");
        let cols = "message_id, topic, tag, keys_json, properties_json, message_group, \
                    ordering_key, key_slot, deliver_at_ms, body, created_ms, state, attempts";
        let now = self.now_ms();
        let values: Vec<String> = (0..rows)
            .map(|r| {
                let phs: Vec<String> = (1..=INSERT_BINDS)
                    .map(|n| self.ph(r * INSERT_BINDS + n))
                    .collect();
                format!("({}, {now}, 0, 0)", phs.join(", "))
            })
            .collect();
        format!(
            "INSERT INTO ferry_outbox ({cols}) VALUES {}",
            values.join(", ")
        )
    }

    /// Records a consumed message id; "already there" is not an error
    /// (PostgreSQL, SQLite: no row comes back).
    /// MySQL has no "do nothing" form that leaves other errors alone
    /// (`INSERT IGNORE` would also swallow truncation), so there the
    /// duplicate-key error itself is the signal.
    pub fn inbox_insert(self) -> String {
        let now = self.now_ms();
        let (a, b) = (self.ph(1), self.ph(2));
        match self {
            Dialect::Postgres | Dialect::Sqlite => format!(
                "INSERT INTO ferry_inbox (consumer, message_id, received_ms) VALUES ({a}, {b}, {now}) \
                 ON CONFLICT (consumer, message_id) DO NOTHING RETURNING 1"
            ),
            Dialect::MySql => format!(
                "INSERT INTO ferry_inbox (consumer, message_id, received_ms) VALUES (?, ?, {now})"
            ),
        }
    }

    /// Deletes at most `limit` (placeholder 2) rows of `table` matching
    /// `condition` (placeholder 1), in `order`, in one short statement.
    /// `key` lists the primary key's columns.
    pub fn delete_batch(self, table: &str, key: &[&str], order: &str, condition: &str) -> String {
        let limit = self.ph(2);
        let columns = key.join(", ");
        let row = if key.len() == 1 {
            columns.clone()
        } else {
            format!("({columns})")
        };
        match self {
            // MySQL cannot LIMIT a subquery of the table it deletes from,
            // but takes ORDER BY/LIMIT on DELETE itself.
            Dialect::MySql => {
                format!("DELETE FROM {table} WHERE {condition} ORDER BY {order} LIMIT {limit}")
            }
            // PostgreSQL: rows a writer holds (a key being locked) are
            // stepped over, so a cleanup never waits on, or deadlocks with,
            // a writer.
            Dialect::Postgres => format!(
                "DELETE FROM {table} WHERE {row} IN \
                 (SELECT {columns} FROM {table} WHERE {condition} ORDER BY {order} LIMIT {limit} \
                 FOR UPDATE SKIP LOCKED)"
            ),
            Dialect::Sqlite => format!(
                "DELETE FROM {table} WHERE {row} IN \
                 (SELECT {columns} FROM {table} WHERE {condition} ORDER BY {order} LIMIT {limit})"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_dialect() {
        assert_eq!(Dialect::Postgres.in_list(3, 2), "($3, $4)");
        assert_eq!(Dialect::MySql.in_list(3, 2), "(?, ?)");
        assert!(Dialect::Postgres.insert_rows(1).contains("$10"));
        assert!(Dialect::Postgres.insert_rows(2).contains("($11, $12"));
        assert_eq!(Dialect::Sqlite.insert_rows(3).matches('?').count(), 30);
    }

    #[test]
    fn urls_name_their_dialect() {
        assert_eq!(
            Dialect::from_url("postgres://x/y").unwrap(),
            Dialect::Postgres
        );
        assert_eq!(Dialect::from_url("mariadb://x/y").unwrap(), Dialect::MySql);
        assert_eq!(Dialect::from_url("sqlite://f.db").unwrap(), Dialect::Sqlite);
        let e = Dialect::from_url("oracle://x").unwrap_err().to_string();
        assert!(e.contains("oracle"), "{e}");
        // A sqlx::Any transaction hides its database: refused, no panic.
        let e = Dialect::from_driver_name("Any").unwrap_err().to_string();
        assert!(e.contains("not sqlx::Any"), "{e}");
        assert_eq!(Dialect::from_driver_name("MySQL").unwrap(), Dialect::MySql);
    }
}
