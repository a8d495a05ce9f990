//! The outbox/inbox scenarios on MySQL 8 / MariaDB 10.6+: a fresh database
//! per test on the server at FERRY_TEST_MYSQL_URL (default: the local
//! server). Built with `--features db-tests`; an unreachable server fails
//! every test.

#![cfg(feature = "db-tests")]

mod common;

scenarios!(common::TestDb::mysql);
