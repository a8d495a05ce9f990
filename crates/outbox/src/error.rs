//! The library's one error type.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum OutboxError {
    /// Input refused before anything was written.
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    /// The database said no, or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored row the library cannot read back (edited by hand?).
    #[error("corrupt outbox row {id}: {why}")]
    CorruptRow { id: i64, why: String },
}

impl OutboxError {
    /// Transient: a conflict the database resolved by aborting this
    /// transaction (deadlock, serialization failure, lock wait timeout),
    /// or the connection failing (I/O error, no pooled connection in
    /// time). Roll back and run the whole transaction again; a refused
    /// statement or bad input is not retryable.
    pub fn is_retryable(&self) -> bool {
        let e = match self {
            OutboxError::Database(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut) => return true,
            OutboxError::Database(sqlx::Error::Database(e)) => e,
            _ => return false,
        };
        // MySQL: deadlock 1213, lock wait timeout 1205 (SQLSTATE HY000,
        // too general to match on).
        if let Some(my) = e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
            return matches!(my.number(), 1205 | 1213);
        }
        // SQLSTATE 40001 serialization failure, 40P01 PostgreSQL deadlock;
        // SQLite's busy/locked result codes.
        matches!(
            e.code().as_deref(),
            Some("40001" | "40P01" | "5" | "6" | "517")
        )
    }

    pub(crate) fn invalid(what: &'static str, why: impl Into<String>) -> Self {
        OutboxError::Invalid {
            what,
            why: why.into(),
        }
    }
}

pub type Result<T, E = OutboxError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_failures_are_retryable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(OutboxError::Database(sqlx::Error::Io(io)).is_retryable());
        assert!(OutboxError::Database(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(!OutboxError::Database(sqlx::Error::RowNotFound).is_retryable());
        assert!(!OutboxError::invalid("x", "y").is_retryable());
    }
}
