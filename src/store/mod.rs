//! The database: one SQL dialect through sqlx's Any driver, on SQLite or PostgreSQL.
//!
//! SQLite allows one writer at a time; a write transaction that starts as a reader and then
//! writes can fail with SQLITE_BUSY when another writer got there first. So on SQLite every
//! write transaction goes through a pool of exactly one connection, and reads use a separate
//! pool (WAL lets them run beside the writer). The API's writes reach that connection
//! through group commit (`write`), which gives many of them one transaction and one fsync.
//! On PostgreSQL both pools are the same, row locks order concurrent writers, and `write`
//! is one transaction per operation: the server already shares WAL flushes between
//! concurrent commits, and unrelated operations in one transaction would wait on each
//! other's row locks.

mod group_commit;

pub use group_commit::{WriteFuture, WriteStats};

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use std::sync::Arc;

use sqlx::{Any, AnyConnection, AnyPool, Transaction};
use tokio::sync::Notify;

use group_commit::{BatchLimits, GroupCommit, WriteCounters};

use crate::config::DatabaseSettings;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

pub type Tx = Transaction<'static, Any>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("the write queue is full; try again shortly")]
    Busy,
    #[error("the database writer has stopped")]
    WriterStopped,
    #[error("the write batch could not be committed: {message}")]
    CommitFailed {
        message: String,
        /// Why, when the database was unavailable (the usual reason a commit fails).
        unavailable: Option<Unavailable>,
    },
    /// The connection broke while a commit was on its way, so whether the server committed
    /// is unknown (PostgreSQL; SQLite's commits either happen or fail).
    #[error("the connection to the database broke during the commit: {0}")]
    CommitOutcomeUnknown(sqlx::Error),
    #[error("cannot create the database directory {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Clone)]
pub struct Store {
    backend: Backend,
    reader: AnyPool,
    writer: AnyPool,
    /// SQLite only: the queue to the writer task that commits in groups.
    group_commit: Option<GroupCommit>,
    write_counters: Arc<WriteCounters>,
    /// Told after every commit of `write`, so the outbox dispatcher wakes when there may be
    /// something new to deliver instead of waiting for its next poll.
    committed: Arc<Notify>,
    /// PostgreSQL: where `listen_for_other_daemons` connects.
    postgres_url: Option<String>,
}

impl Store {
    pub async fn connect(settings: &DatabaseSettings) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if settings.url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let acquire_timeout = Duration::from_millis(settings.acquire_timeout_ms);
        match backend {
            Backend::Sqlite => {
                let url = sqlite_url_creating_file(&settings.url)?;
                enable_wal(&url).await?;
                let options = AnyConnectOptions::from_str(&url)?;
                let open = |max_connections: u32| {
                    AnyPoolOptions::new()
                        .max_connections(max_connections)
                        .acquire_timeout(acquire_timeout)
                        .after_connect(|connection, _meta| {
                            Box::pin(async move {
                                // FULL so that a commit survives power loss, not only a crash
                                // of this process. (SQLite's own default, said out loud.)
                                sqlx::query("PRAGMA synchronous = FULL")
                                    .execute(&mut *connection)
                                    .await?;
                                Ok(())
                            })
                        })
                        .connect_with(options.clone())
                };
                let writer = open(1).await?;
                let reader = open(settings.max_connections).await?;
                let write_counters = Arc::new(WriteCounters::default());
                let committed = Arc::new(Notify::new());
                let limits = BatchLimits {
                    operations_max: settings.write_batch_operations_max,
                    wait_ms: settings.write_batch_wait_ms,
                    queue_max: settings.write_queue_max,
                };
                let group_commit = GroupCommit::start(
                    writer.clone(),
                    limits,
                    write_counters.clone(),
                    committed.clone(),
                );
                Ok(Store {
                    backend,
                    reader,
                    writer,
                    group_commit: Some(group_commit),
                    write_counters,
                    committed,
                    postgres_url: None,
                })
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(settings.max_connections)
                    .acquire_timeout(acquire_timeout)
                    .connect(&settings.url)
                    .await?;
                Ok(Store {
                    backend,
                    reader: pool.clone(),
                    writer: pool,
                    group_commit: None,
                    write_counters: Arc::new(WriteCounters::default()),
                    committed: Arc::new(Notify::new()),
                    postgres_url: Some(settings.url.clone()),
                })
            }
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool for reads that need no transaction.
    pub fn reader(&self) -> &AnyPool {
        &self.reader
    }

    /// Starts a transaction that may write.
    pub async fn begin_write(&self) -> Result<Tx, StoreError> {
        Ok(self.writer.begin().await?)
    }

    /// Runs `operation` in a write transaction and commits it, unless it returns an error,
    /// in which case nothing it wrote is kept. On SQLite it shares the transaction and the
    /// commit with whatever else is being written at the same time (see `group_commit`);
    /// either way, `Ok` means committed.
    pub async fn write<F, T, E>(&self, operation: F) -> Result<T, E>
    where
        F: for<'c> FnOnce(&'c mut AnyConnection) -> WriteFuture<'c, Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.write_waking(operation, true).await
    }

    /// `write` for the dispatcher's own bookkeeping (claims, outcomes): its commit does not
    /// wake the dispatcher, which would otherwise wake itself forever.
    pub async fn write_silently<F, T, E>(&self, operation: F) -> Result<T, E>
    where
        F: for<'c> FnOnce(&'c mut AnyConnection) -> WriteFuture<'c, Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.write_waking(operation, false).await
    }

    async fn write_waking<F, T, E>(&self, operation: F, wakes: bool) -> Result<T, E>
    where
        F: for<'c> FnOnce(&'c mut AnyConnection) -> WriteFuture<'c, Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        if let Some(group_commit) = &self.group_commit {
            return group_commit.write(operation, wakes).await;
        }
        self.write_counters.count(1);
        let mut transaction = self.begin_write().await.map_err(E::from)?;
        match operation(&mut transaction).await {
            Ok(value) => {
                transaction
                    .commit()
                    .await
                    .map_err(|error| E::from(commit_error(error)))?;
                if wakes {
                    self.committed.notify_one();
                }
                Ok(value)
            }
            Err(error) => {
                // Dropping would roll back too; saying it keeps the connection clean sooner.
                let _ = transaction.rollback().await;
                Err(error)
            }
        }
    }

    /// Notified after commits of `write` (a permit is kept when nobody waits).
    pub fn committed(&self) -> Arc<Notify> {
        self.committed.clone()
    }

    /// On PostgreSQL, also tells `committed` when any daemon sharing the database queued
    /// messages (the outbox's trigger NOTIFYs `paystep_outbox`), until the returned task is
    /// aborted or the store dropped; it reconnects by itself. On SQLite there is no other
    /// daemon, and no task.
    pub fn listen_for_other_daemons(&self) -> Option<tokio::task::JoinHandle<()>> {
        let url = self.postgres_url.clone()?;
        let committed = Arc::downgrade(&self.committed);
        Some(tokio::spawn(async move {
            let retry = Duration::from_millis(LISTEN_RETRY_MS);
            loop {
                match listen(&url, &committed).await {
                    Ok(()) => return,
                    Err(error) => {
                        tracing::warn!(error = %error, "Cannot LISTEN for queued messages; polling meanwhile");
                        tokio::time::sleep(retry).await;
                    }
                }
            }
        }))
    }

    /// How many write batches and operations this store has committed since it opened.
    pub fn write_stats(&self) -> WriteStats {
        self.write_counters.snapshot()
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.writer).await?;
        Ok(())
    }

    /// Readiness: the database answers a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// How long to wait before listening again after the connection failed.
const LISTEN_RETRY_MS: u64 = 1000;

/// Wakes `committed` for every notification, until the store is gone.
async fn listen(url: &str, committed: &std::sync::Weak<Notify>) -> Result<(), sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.listen("paystep_outbox").await?;
    loop {
        listener.recv().await?;
        match committed.upgrade() {
            Some(committed) => committed.notify_one(),
            None => return Ok(()),
        }
    }
}

/// Switches the database file to WAL, which lets readers run beside the writer. The mode is
/// stored in the file, so setting it once through the SQLite driver is enough.
async fn enable_wal(url: &str) -> Result<(), StoreError> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
    use sqlx::{ConnectOptions, Connection};
    let connection = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .connect()
        .await?;
    connection.close().await?;
    Ok(())
}

/// Makes sure the SQLite file's directory exists and asks sqlx to create the file.
fn sqlite_url_creating_file(url: &str) -> Result<String, StoreError> {
    let path_part = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path_only = path_part.split('?').next().unwrap_or_default();
    if !path_only.is_empty() && path_only != ":memory:" {
        if let Some(parent) = Path::new(path_only).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|source| StoreError::Directory {
                    path: parent.display().to_string(),
                    source,
                })?;
            }
        }
    }
    Ok(if url.contains('?') {
        url.to_string()
    } else {
        format!("{url}?mode=rwc")
    })
}

/// A failed COMMIT. When the connection to a server broke, nobody can say whether the
/// server committed before it did; any refusal the database answered (and every SQLite
/// error, which comes from the library in this process) means it rolled back.
pub fn commit_error(error: sqlx::Error) -> StoreError {
    let answered_by_sqlite = matches!(
        &error,
        sqlx::Error::Database(database_error)
            if database_error.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
    );
    if !answered_by_sqlite && unavailable(&error) == Some(Unavailable::Unreachable) {
        StoreError::CommitOutcomeUnknown(error)
    } else {
        StoreError::Database(error)
    }
}

/// Why the database cannot do what was asked just now, when the cause is the database's
/// condition and not the request: the same request may succeed once it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The server cannot be reached, is shutting down or starting up, no connection came
    /// free within `database.acquire_timeout_ms`, or (SQLite) another process holds the
    /// file's lock.
    Unreachable,
    /// The database cannot write to its storage: the disk is full or failing.
    Storage,
}

/// Classifies `error`: `Some` when the database is unavailable, `None` when the error is
/// about the request or a bug (those stay 500s and are logged as such).
pub fn unavailable(error: &sqlx::Error) -> Option<Unavailable> {
    const NO_SPACE_LEFT_ON_DEVICE: i32 = 28;
    match error {
        sqlx::Error::Io(io) if io.raw_os_error() == Some(NO_SPACE_LEFT_ON_DEVICE) => {
            Some(Unavailable::Storage)
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Some(Unavailable::Unreachable),
        sqlx::Error::Database(database_error) => {
            if let Some(postgres) =
                database_error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            {
                return postgres_unavailable(postgres.code());
            }
            if database_error
                .try_downcast_ref::<sqlx::sqlite::SqliteError>()
                .is_some()
            {
                return sqlite_unavailable(database_error.code().as_deref());
            }
            None
        }
        _ => None,
    }
}

/// PostgreSQL's SQLSTATEs for a server that is going away, coming back or out of room
/// (https://www.postgresql.org/docs/current/errcodes-appendix.html).
fn postgres_unavailable(sqlstate: &str) -> Option<Unavailable> {
    const CONNECTION_EXCEPTION_CLASS: &str = "08";
    const ADMIN_SHUTDOWN: &str = "57P01";
    const CRASH_SHUTDOWN: &str = "57P02";
    const CANNOT_CONNECT_NOW: &str = "57P03";
    const TOO_MANY_CONNECTIONS: &str = "53300";
    const DISK_FULL: &str = "53100";
    const OUT_OF_MEMORY: &str = "53200";
    const IO_ERROR: &str = "58030";
    match sqlstate {
        ADMIN_SHUTDOWN | CRASH_SHUTDOWN | CANNOT_CONNECT_NOW | TOO_MANY_CONNECTIONS => {
            Some(Unavailable::Unreachable)
        }
        DISK_FULL | OUT_OF_MEMORY | IO_ERROR => Some(Unavailable::Storage),
        _ if sqlstate.starts_with(CONNECTION_EXCEPTION_CLASS) => Some(Unavailable::Unreachable),
        _ => None,
    }
}

/// SQLite's primary result codes (the low byte of the extended code sqlx reports) for a
/// file that cannot be written or is held by another process
/// (https://www.sqlite.org/rescode.html). Corruption is deliberately not among them.
fn sqlite_unavailable(extended_code: Option<&str>) -> Option<Unavailable> {
    const SQLITE_BUSY: i32 = 5;
    const SQLITE_LOCKED: i32 = 6;
    const SQLITE_NOMEM: i32 = 7;
    const SQLITE_READONLY: i32 = 8;
    const SQLITE_IOERR: i32 = 10;
    const SQLITE_FULL: i32 = 13;
    const SQLITE_CANTOPEN: i32 = 14;
    const SQLITE_PROTOCOL: i32 = 15;
    let primary = extended_code?.parse::<i32>().ok()? & 0xff;
    match primary {
        SQLITE_BUSY | SQLITE_LOCKED | SQLITE_CANTOPEN | SQLITE_PROTOCOL => {
            Some(Unavailable::Unreachable)
        }
        SQLITE_NOMEM | SQLITE_READONLY | SQLITE_IOERR | SQLITE_FULL => Some(Unavailable::Storage),
        _ => None,
    }
}

/// True when the error is a unique-constraint violation, on either database.
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(database_error) => {
            database_error.kind() == sqlx::error::ErrorKind::UniqueViolation
        }
        _ => false,
    }
}

#[cfg(test)]
mod unavailable_tests {
    use super::*;
    use sqlx::any::AnyPoolOptions;

    #[tokio::test]
    async fn sqlite_out_of_room_is_storage_and_a_constraint_is_not_unavailability() {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query("CREATE TABLE blobs (n BIGINT PRIMARY KEY, b TEXT)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO blobs (n, b) VALUES (1, 'x')")
            .execute(&pool)
            .await
            .unwrap();
        // No page beyond those the database has: the next page it needs is SQLITE_FULL, as
        // on a full disk.
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&pool)
            .await
            .unwrap();
        sqlx::query(&format!("PRAGMA max_page_count = {pages}"))
            .execute(&pool)
            .await
            .unwrap();
        let full = sqlx::query("INSERT INTO blobs (n, b) VALUES (2, $1)")
            .bind("x".repeat(100_000))
            .execute(&pool)
            .await
            .unwrap_err();
        assert_eq!(unavailable(&full), Some(Unavailable::Storage), "{full}");
        assert!(matches!(commit_error(full), StoreError::Database(_)));
        let duplicate = sqlx::query("INSERT INTO blobs (n, b) VALUES (1, 'y')")
            .execute(&pool)
            .await
            .unwrap_err();
        assert_eq!(unavailable(&duplicate), None, "{duplicate}");
    }

    #[test]
    fn postgres_going_away_is_unreachable_and_its_full_disk_is_storage() {
        for sqlstate in ["57P01", "57P02", "57P03", "53300", "08006", "08001"] {
            assert_eq!(
                postgres_unavailable(sqlstate),
                Some(Unavailable::Unreachable),
                "{sqlstate}"
            );
        }
        assert_eq!(postgres_unavailable("53100"), Some(Unavailable::Storage));
        for sqlstate in ["23505", "22021", "40P01", "XX000"] {
            assert_eq!(postgres_unavailable(sqlstate), None, "{sqlstate}");
        }
    }

    #[test]
    fn a_lost_connection_during_a_commit_leaves_its_outcome_unknown() {
        let lost = sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into());
        assert!(matches!(
            commit_error(lost),
            StoreError::CommitOutcomeUnknown(_)
        ));
    }

    #[test]
    fn sqlite_extended_codes_are_read_by_their_primary_code() {
        const SQLITE_IOERR_WRITE: &str = "778";
        const SQLITE_BUSY_SNAPSHOT: &str = "517";
        const SQLITE_CORRUPT: &str = "11";
        assert_eq!(
            sqlite_unavailable(Some(SQLITE_IOERR_WRITE)),
            Some(Unavailable::Storage)
        );
        assert_eq!(
            sqlite_unavailable(Some(SQLITE_BUSY_SNAPSHOT)),
            Some(Unavailable::Unreachable)
        );
        assert_eq!(sqlite_unavailable(Some(SQLITE_CORRUPT)), None);
    }
}
