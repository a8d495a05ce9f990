//! A fresh database per test, on the server a test names, reached both
//! natively (the application's side: enqueue, inbox) and through the
//! library's own pool (relay, cleanup).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ferry_outbox::{Dialect, Inbox, Outbox, OutboxError, OutboxMessage, Processed, Store};
use sqlx::{Connection as _, Database, Encode, Executor, IntoArguments, Transaction, Type};

pub const PG_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MYSQL_DEFAULT: &str = "mysql://root@127.0.0.1:3306/test";

/// The application's pool, native to the database.
#[derive(Clone)]
pub enum Native {
    Pg(sqlx::PgPool),
    My(sqlx::MySqlPool),
    Lite(sqlx::SqlitePool),
}

pub struct TestDb {
    pub url: String,
    pub dialect: Dialect,
    pub native: Native,
    /// Drops the database at the end (server databases only).
    admin: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn fresh_name() -> String {
    format!(
        "ferry_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a fresh database on the server named by `env` (or `default`);
/// returns the server URL, the database's name and its URL. An
/// unreachable server fails the test, naming the URL it tried.
async fn create_database(env: &str, default: &str, what: &str) -> (String, String, String) {
    sqlx::any::install_default_drivers();
    let server = std::env::var(env).unwrap_or_else(|_| default.into());
    let name = fresh_name();
    let mut admin = sqlx::AnyConnection::connect(&server)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{what} is not reachable at {server}: {e}. These tests need a running \
                 server; start one or point {env} at one."
            )
        });
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let url = with_database(&server, &name);
    (server, name, url)
}

/// Swaps the database name at the end of a server URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let cut = base.rfind('/').expect("a server URL names a database");
    let mut out = format!("{}/{db}", &base[..cut]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(30))
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await
            .unwrap();
        ferry_outbox::migrate(&url).await.unwrap();
        TestDb {
            url,
            dialect: Dialect::Sqlite,
            native: Native::Lite(pool),
            admin: None,
            _dir: Some(dir),
        }
    }

    pub async fn postgres() -> TestDb {
        let (server, name, url) =
            create_database("FERRY_TEST_PG_URL", PG_DEFAULT, "PostgreSQL").await;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(32)
            .connect(&url)
            .await
            .unwrap();
        TestDb::on_server(url, Dialect::Postgres, Native::Pg(pool), server, name).await
    }

    pub async fn mysql() -> TestDb {
        let (server, name, url) =
            create_database("FERRY_TEST_MYSQL_URL", MYSQL_DEFAULT, "MySQL/MariaDB").await;
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(32)
            .connect(&url)
            .await
            .unwrap();
        TestDb::on_server(url, Dialect::MySql, Native::My(pool), server, name).await
    }

    async fn on_server(
        url: String,
        dialect: Dialect,
        native: Native,
        server: String,
        name: String,
    ) -> TestDb {
        ferry_outbox::migrate(&url).await.unwrap();
        TestDb {
            url,
            dialect,
            native,
            admin: Some((server, name)),
            _dir: None,
        }
    }

    /// Another handle on the same database, for a spawned task; dropping
    /// it drops nothing.
    pub fn view(url: String, dialect: Dialect, native: Native) -> TestDb {
        TestDb {
            url,
            dialect,
            native,
            admin: None,
            _dir: None,
        }
    }

    /// The library's own pool, as a relay has it.
    pub async fn store(&self) -> Store {
        Store::connect(&self.url, 8).await.unwrap()
    }

    /// Plain SQL through the native pool (test tables, counts).
    pub async fn exec(&self, sql: &str) {
        match &self.native {
            Native::Pg(p) => p.execute(sql).await.map(|_| ()),
            Native::My(p) => p.execute(sql).await.map(|_| ()),
            Native::Lite(p) => p.execute(sql).await.map(|_| ()),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// One number from a query.
    pub async fn count(&self, sql: &str) -> i64 {
        match &self.native {
            Native::Pg(p) => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await,
            Native::My(p) => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await,
            Native::Lite(p) => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// One transaction: enqueue `messages`, then (if `counter` names a
    /// row of `counters`) bump that row and return its new value, hold the
    /// transaction open for `hold`, then commit or roll back.
    pub async fn write(
        &self,
        outbox: &Outbox,
        messages: &[OutboxMessage],
        counter: Option<&str>,
        hold: Duration,
        commit: bool,
    ) -> Result<(Vec<String>, Option<i64>), OutboxError> {
        let d = self.dialect;
        match &self.native {
            Native::Pg(p) => {
                write_in(p.begin().await?, d, outbox, messages, counter, hold, commit).await
            }
            Native::My(p) => {
                write_in(p.begin().await?, d, outbox, messages, counter, hold, commit).await
            }
            Native::Lite(p) => {
                write_in(p.begin().await?, d, outbox, messages, counter, hold, commit).await
            }
        }
    }

    /// One delivery through the inbox: the handler adds 1 to
    /// `applied.n` (or fails, when `fail`); commits unless it failed.
    pub async fn consume(
        &self,
        inbox: &Inbox,
        consumer: &str,
        message_id: &str,
        fail: bool,
    ) -> Result<Processed<()>, OutboxError> {
        let d = self.dialect;
        match &self.native {
            Native::Pg(p) => {
                consume_in(p.begin().await?, d, inbox, consumer, message_id, fail).await
            }
            Native::My(p) => {
                consume_in(p.begin().await?, d, inbox, consumer, message_id, fail).await
            }
            Native::Lite(p) => {
                consume_in(p.begin().await?, d, inbox, consumer, message_id, fail).await
            }
        }
    }

    pub async fn drop_database(self) {
        let Some((server, name)) = self.admin.as_ref() else {
            return;
        };
        match &self.native {
            Native::Pg(p) => p.close().await,
            Native::My(p) => p.close().await,
            Native::Lite(p) => p.close().await,
        }
        // A relay's pool may still hold connections; PostgreSQL refuses to
        // drop a database in use unless forced.
        let sql = match self.dialect {
            Dialect::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            _ => format!("DROP DATABASE IF EXISTS {name}"),
        };
        let dropped = match sqlx::AnyConnection::connect(server).await {
            Ok(mut c) => c.execute(sql.as_str()).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = dropped {
            eprintln!("could not drop test database {name}: {e}");
        }
    }
}

async fn write_in<DB>(
    mut tx: Transaction<'_, DB>,
    d: Dialect,
    outbox: &Outbox,
    messages: &[OutboxMessage],
    counter: Option<&str>,
    hold: Duration,
    commit: bool,
) -> Result<(Vec<String>, Option<i64>), OutboxError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    for<'r> i64: sqlx::Decode<'r, DB> + Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    // One message through `enqueue`, several through `enqueue_batch`.
    let ids = match messages {
        [one] => vec![outbox.enqueue(&mut tx, one).await?],
        many => outbox.enqueue_batch(&mut tx, many).await?,
    };
    tokio::time::sleep(hold).await;
    let mut n = None;
    if let Some(k) = counter {
        sqlx::query(&format!(
            "UPDATE counters SET n = n + 1 WHERE k = {}",
            d.ph(1)
        ))
        .bind(k.to_string())
        .execute(&mut *tx)
        .await?;
        let v: (i64,) = sqlx::query_as(&format!("SELECT n FROM counters WHERE k = {}", d.ph(1)))
            .bind(k.to_string())
            .fetch_one(&mut *tx)
            .await?;
        n = Some(v.0);
    }
    if commit {
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok((ids, n))
}

async fn consume_in<DB>(
    mut tx: Transaction<'_, DB>,
    _d: Dialect,
    inbox: &Inbox,
    consumer: &str,
    message_id: &str,
    fail: bool,
) -> Result<Processed<()>, OutboxError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
{
    let r = inbox
        .process_once(&mut tx, consumer, message_id, |tx| {
            Box::pin(async move {
                sqlx::query("UPDATE applied SET n = n + 1")
                    .execute(&mut **tx)
                    .await?;
                if fail {
                    return Err(OutboxError::Invalid {
                        what: "test",
                        why: "handler failed on purpose".into(),
                    });
                }
                Ok(())
            })
        })
        .await;
    match r {
        Ok(p) => {
            tx.commit().await?;
            Ok(p)
        }
        Err(e) => {
            tx.rollback().await?;
            Err(e)
        }
    }
}
