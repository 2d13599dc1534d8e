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
    #[error("the write batch could not be committed: {0}")]
    CommitFailed(String),
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
                    .map_err(|error| E::from(StoreError::Database(error)))?;
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

/// True when the error is a unique-constraint violation, on either database.
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(database_error) => {
            database_error.kind() == sqlx::error::ErrorKind::UniqueViolation
        }
        _ => false,
    }
}
