//! The outbox/inbox scenarios on SQLite (a file in a temporary directory).

mod common;

scenarios!(common::TestDb::sqlite);
