//! The outbox/inbox scenarios on PostgreSQL: a fresh database per test on
//! the server at FERRY_TEST_PG_URL (default: the local server). Built with
//! `--features db-tests`; an unreachable server fails every test.

#![cfg(feature = "db-tests")]

mod common;

scenarios!(common::TestDb::postgres);
