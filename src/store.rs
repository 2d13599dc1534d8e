//! The database: one SQL dialect through sqlx's Any driver, on SQLite or PostgreSQL.
//!
//! SQLite allows one writer at a time; a write transaction that starts as a reader and then
//! writes can fail with SQLITE_BUSY when another writer got there first. So on SQLite every
//! write transaction goes through a pool of exactly one connection, and reads use a separate
//! pool (WAL lets them run beside the writer). On PostgreSQL both are the same pool and row
//! locks order concurrent writers.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Transaction};

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
                Ok(Store {
                    backend,
                    reader,
                    writer,
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
