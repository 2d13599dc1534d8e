//! Group commit: concurrent writes that arrive together share one transaction and one
//! durable commit.
//!
//! SQLite has one writer and pays one fsync per commit, so a transaction per request caps
//! the daemon at the disk's commit rate however idle the CPU is. Here one writer task owns
//! the writer connection: it takes every operation queued while the previous batch was
//! committing (at most `write_batch_operations_max`, waiting at most `write_batch_wait_ms`
//! for more), runs each in a savepoint of one transaction, and commits once.
//!
//! - An operation that fails rolls back to its savepoint: its batch-mates neither fail nor
//!   see anything of it.
//! - Nothing is answered before the batch commits; when the commit fails, every operation
//!   of the batch is told so, and none of it happened. The connection that failed is
//!   closed and the next batch gets a fresh one, so nothing a failure left behind (SQLite
//!   rolls back by itself on a full disk or an I/O error, behind the driver's back) reaches
//!   the next batch.
//! - The queue in front is bounded: when it is full, a write is refused at once
//!   (`StoreError::Busy`) with nothing done, and the API answers 503 with `Retry-After`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{AnyConnection, AnyPool, Connection};
use tokio::sync::{mpsc, oneshot, Notify};

use super::{StoreError, Unavailable};

/// The future of one write operation, borrowing the connection it runs on.
pub type WriteFuture<'c, T> = Pin<Box<dyn Future<Output = T> + Send + 'c>>;

/// How large a batch may grow and how long its first operation may wait for company.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub operations_max: usize,
    pub wait_ms: u64,
    pub queue_max: usize,
}

/// Counters since start: how many batches committed (or failed) and how many operations
/// they carried. Operations over batches is the sharing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    pub batches: u64,
    pub operations: u64,
}

#[derive(Default)]
pub(super) struct WriteCounters {
    batches: AtomicU64,
    operations: AtomicU64,
}

impl WriteCounters {
    pub(super) fn count(&self, operations: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.operations
            .fetch_add(operations as u64, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> WriteStats {
        WriteStats {
            batches: self.batches.load(Ordering::Relaxed),
            operations: self.operations.load(Ordering::Relaxed),
        }
    }
}

/// One queued operation, its answer kept until its batch's fate is known.
trait QueuedWrite: Send {
    /// Runs inside the batch's savepoint; true when its writes are to be kept.
    fn run<'c>(&'c mut self, conn: &'c mut AnyConnection) -> WriteFuture<'c, bool>;
    /// True when its commit should wake the outbox dispatcher.
    fn wakes(&self) -> bool;
    /// Answers the caller once the batch committed, or failed with `failure`.
    fn finish(self: Box<Self>, failure: Option<&BatchFailure>);
}

/// Why a batch did not commit, told to each of its operations.
#[derive(Debug, Clone)]
struct BatchFailure {
    message: String,
    unavailable: Option<Unavailable>,
}

impl BatchFailure {
    fn of(error: &sqlx::Error) -> BatchFailure {
        BatchFailure {
            message: error.to_string(),
            unavailable: super::unavailable(error),
        }
    }

    fn store_error(&self) -> StoreError {
        StoreError::CommitFailed {
            message: self.message.clone(),
            unavailable: self.unavailable,
        }
    }
}

struct TypedWrite<F, T, E> {
    operation: Option<F>,
    wakes: bool,
    outcome: Option<Result<T, E>>,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<F, T, E> QueuedWrite for TypedWrite<F, T, E>
where
    F: for<'c> FnOnce(&'c mut AnyConnection) -> WriteFuture<'c, Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    fn run<'c>(&'c mut self, conn: &'c mut AnyConnection) -> WriteFuture<'c, bool> {
        Box::pin(async move {
            let Some(operation) = self.operation.take() else {
                return false;
            };
            let outcome = operation(conn).await;
            let keep = outcome.is_ok();
            self.outcome = Some(outcome);
            keep
        })
    }

    fn wakes(&self) -> bool {
        self.wakes
    }

    fn finish(self: Box<Self>, failure: Option<&BatchFailure>) {
        let answer = match (self.outcome, failure) {
            // A refused operation changed nothing, whatever became of its batch.
            (Some(Err(error)), _) => Err(error),
            (Some(Ok(value)), None) => Ok(value),
            (Some(Ok(_)), Some(failure)) => Err(E::from(failure.store_error())),
            // Never run: an earlier operation's savepoint could not be ended.
            (None, failure) => Err(E::from(failure.map_or(
                StoreError::CommitFailed {
                    message: "the batch stopped before this operation ran".into(),
                    unavailable: None,
                },
                BatchFailure::store_error,
            ))),
        };
        // The caller may have gone (a dropped request); the write stands either way.
        let _ = self.reply.send(answer);
    }
}

/// The handle requests use; the writer task holds the other end of the queue.
#[derive(Clone)]
pub(super) struct GroupCommit {
    queue: mpsc::Sender<Box<dyn QueuedWrite>>,
}

impl GroupCommit {
    /// Starts the writer task on `writer`, a pool of exactly one connection.
    pub(super) fn start(
        writer: AnyPool,
        limits: BatchLimits,
        counters: Arc<WriteCounters>,
        committed: Arc<Notify>,
    ) -> GroupCommit {
        let (queue, receiver) = mpsc::channel(limits.queue_max.max(1));
        let writer_task = WriterTask {
            writer,
            limits,
            counters,
            committed,
        };
        tokio::spawn(writer_task.run(receiver));
        GroupCommit { queue }
    }

    pub(super) async fn write<F, T, E>(&self, operation: F, wakes: bool) -> Result<T, E>
    where
        F: for<'c> FnOnce(&'c mut AnyConnection) -> WriteFuture<'c, Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let queued = Box::new(TypedWrite {
            operation: Some(operation),
            wakes,
            outcome: None,
            reply,
        });
        self.queue.try_send(queued).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => E::from(StoreError::Busy),
            mpsc::error::TrySendError::Closed(_) => E::from(StoreError::WriterStopped),
        })?;
        answer
            .await
            .unwrap_or_else(|_| Err(E::from(StoreError::WriterStopped)))
    }
}

struct WriterTask {
    writer: AnyPool,
    limits: BatchLimits,
    counters: Arc<WriteCounters>,
    committed: Arc<Notify>,
}

impl WriterTask {
    async fn run(self, mut receiver: mpsc::Receiver<Box<dyn QueuedWrite>>) {
        let WriterTask {
            writer,
            limits,
            counters,
            committed,
        } = self;
        let operations_max = limits.operations_max.max(1);
        while let Some(first) = receiver.recv().await {
            let mut batch = Vec::with_capacity(operations_max.min(64));
            batch.push(first);
            gather(&mut receiver, &mut batch, operations_max, limits.wait_ms).await;
            let operations = batch.len();
            counters.count(operations);
            // Its own task, so that an operation that panics takes down its batch (whose callers
            // are told the writer stopped, and whose transaction rolls back) but not the writer.
            let writer = writer.clone();
            let finished = tokio::spawn(async move {
                let result = commit_batch(&writer, &mut batch).await;
                (batch, result)
            })
            .await;
            let Ok((batch, result)) = finished else {
                tracing::error!(operations, "A write batch panicked; none of it happened");
                continue;
            };
            let failure = result.err().map(|error| {
                tracing::error!(error = %error, operations, "A write batch failed; none of it happened");
                BatchFailure::of(&error)
            });
            if failure.is_none() && batch.iter().any(|queued| queued.wakes()) {
                committed.notify_one();
            }
            for queued in batch {
                queued.finish(failure.as_ref());
            }
        }
    }
}

/// Adds what is already queued, then waits up to `wait_ms` for more while there is room.
async fn gather(
    receiver: &mut mpsc::Receiver<Box<dyn QueuedWrite>>,
    batch: &mut Vec<Box<dyn QueuedWrite>>,
    operations_max: usize,
    wait_ms: u64,
) {
    while batch.len() < operations_max {
        match receiver.try_recv() {
            Ok(queued) => batch.push(queued),
            Err(_) => break,
        }
    }
    if wait_ms == 0 {
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    while batch.len() < operations_max {
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Some(queued)) => batch.push(queued),
            Ok(None) | Err(_) => break,
        }
    }
}

/// One transaction, one savepoint per operation, one commit; after a failure the connection
/// is closed rather than given back to the pool.
async fn commit_batch(
    writer: &AnyPool,
    batch: &mut [Box<dyn QueuedWrite>],
) -> Result<(), sqlx::Error> {
    let mut connection = writer.acquire().await?;
    let result = run_batch(&mut connection, batch).await;
    if result.is_err() {
        // After SQLITE_FULL or SQLITE_IOERR SQLite may already have rolled the transaction
        // back by itself, and the driver, which counts nesting levels, would then turn the
        // next batch's BEGIN into a SAVEPOINT. Closing also rolls back whatever is still open.
        if let Err(error) = connection.close().await {
            tracing::warn!(error = %error, "Cannot close the writer connection of a failed batch");
        }
    }
    result
}

async fn run_batch(
    connection: &mut AnyConnection,
    batch: &mut [Box<dyn QueuedWrite>],
) -> Result<(), sqlx::Error> {
    let mut transaction = Connection::begin(&mut *connection).await?;
    for queued in batch.iter_mut() {
        let mut savepoint = Connection::begin(&mut *transaction).await?;
        if queued.run(&mut savepoint).await {
            savepoint.commit().await?;
        } else {
            savepoint.rollback().await?;
        }
    }
    transaction.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::any::AnyPoolOptions;

    /// A one-connection in-memory database with a table of numbers, and the writer task.
    async fn writer(limits: BatchLimits) -> (GroupCommit, Arc<WriteCounters>, AnyPool) {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query("CREATE TABLE numbers (n BIGINT PRIMARY KEY)")
            .execute(&pool)
            .await
            .unwrap();
        let counters = Arc::new(WriteCounters::default());
        let group_commit = GroupCommit::start(
            pool.clone(),
            limits,
            counters.clone(),
            Arc::new(Notify::new()),
        );
        (group_commit, counters, pool)
    }

    fn limits(queue_max: usize) -> BatchLimits {
        BatchLimits {
            operations_max: 512,
            wait_ms: 0,
            queue_max,
        }
    }

    async fn insert(group_commit: &GroupCommit, n: i64) -> Result<i64, StoreError> {
        group_commit
            .write(
                move |conn| -> WriteFuture<'_, Result<i64, StoreError>> {
                    Box::pin(async move {
                        sqlx::query("INSERT INTO numbers (n) VALUES ($1)")
                            .bind(n)
                            .execute(&mut *conn)
                            .await?;
                        Ok(n)
                    })
                },
                true,
            )
            .await
    }

    async fn numbers(pool: &AnyPool) -> Vec<i64> {
        sqlx::query_scalar("SELECT n FROM numbers ORDER BY n")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_failing_operation_changes_nothing_and_its_batch_mates_commit() {
        let (group_commit, counters, pool) = writer(limits(64)).await;
        // The writer is held while the four queue, so that they make one batch.
        let (release, held) = hold_the_writer(&group_commit).await;
        // 1 twice: the second violates the primary key and must fail alone.
        let inserts: Vec<_> = [1, 2, 1, 3]
            .into_iter()
            .map(|n| {
                let group_commit = group_commit.clone();
                tokio::spawn(async move { insert(&group_commit, n).await })
            })
            .collect();
        wait_until_queued(&group_commit, 4).await;
        let before = counters.snapshot();
        release.send(()).unwrap();
        held.await.unwrap().unwrap();
        let mut answers = Vec::new();
        for insert in inserts {
            answers.push(insert.await.unwrap());
        }
        let failed = answers.iter().filter(|answer| answer.is_err()).count();
        assert_eq!(failed, 1, "{answers:?}");
        assert_eq!(numbers(&pool).await, vec![1, 2, 3]);
        let after = counters.snapshot();
        assert_eq!(after.operations - before.operations, 4);
        assert_eq!(
            after.batches - before.batches,
            1,
            "the four shared one batch"
        );
    }

    /// Queues an operation that holds the writer until the returned sender is used.
    async fn hold_the_writer(
        group_commit: &GroupCommit,
    ) -> (
        oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), StoreError>>,
    ) {
        let (release, released) = oneshot::channel::<()>();
        let (started, has_started) = oneshot::channel::<()>();
        let group_commit = group_commit.clone();
        let held = tokio::spawn(async move {
            group_commit
                .write(
                    move |_conn| -> WriteFuture<'_, Result<(), StoreError>> {
                        Box::pin(async move {
                            let _ = started.send(());
                            let _ = released.await;
                            Ok(())
                        })
                    },
                    true,
                )
                .await
        });
        has_started.await.unwrap();
        (release, held)
    }

    /// Waits until `count` writes wait in the queue.
    async fn wait_until_queued(group_commit: &GroupCommit, count: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while group_commit.queue.max_capacity() - group_commit.queue.capacity() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the writes never queued"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_the_refused_write_never_happens() {
        let (group_commit, _counters, pool) = writer(limits(1)).await;
        let (release, held) = hold_the_writer(&group_commit).await;
        let queued = {
            let group_commit = group_commit.clone();
            tokio::spawn(async move { insert(&group_commit, 11).await })
        };
        // The queue holds one: with that one in it, the next write is refused at once.
        wait_until_queued(&group_commit, 1).await;
        let refused = insert(&group_commit, 12).await;
        assert!(matches!(refused, Err(StoreError::Busy)), "{refused:?}");
        release.send(()).unwrap();
        held.await.unwrap().unwrap();
        assert_eq!(queued.await.unwrap().unwrap(), 11);
        assert_eq!(numbers(&pool).await, vec![11]);
    }

    #[tokio::test]
    async fn a_batch_whose_commit_fails_fails_every_operation_and_the_writer_goes_on() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("commit.db").display()
        );
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .after_connect(|connection, _meta| {
                Box::pin(async move {
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *connection)
                        .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE numbers (n BIGINT PRIMARY KEY)")
            .execute(&pool)
            .await
            .unwrap();
        // A deferred foreign key is checked at COMMIT: a pointer to nowhere fails the commit
        // of its whole batch, though every operation in it succeeded.
        sqlx::query(
            "CREATE TABLE pointers (n BIGINT REFERENCES numbers (n) DEFERRABLE INITIALLY DEFERRED)",
        )
        .execute(&pool)
        .await
        .unwrap();
        let group_commit = GroupCommit::start(
            pool.clone(),
            limits(64),
            Arc::new(WriteCounters::default()),
            Arc::new(Notify::new()),
        );
        let (release, held) = hold_the_writer(&group_commit).await;
        let number = {
            let group_commit = group_commit.clone();
            tokio::spawn(async move { insert(&group_commit, 1).await })
        };
        let dangling = {
            let group_commit = group_commit.clone();
            tokio::spawn(async move {
                group_commit
                    .write(
                        |conn| -> WriteFuture<'_, Result<(), StoreError>> {
                            Box::pin(async move {
                                sqlx::query("INSERT INTO pointers (n) VALUES (99)")
                                    .execute(&mut *conn)
                                    .await?;
                                Ok(())
                            })
                        },
                        true,
                    )
                    .await
            })
        };
        wait_until_queued(&group_commit, 2).await;
        release.send(()).unwrap();
        held.await.unwrap().unwrap();
        let number = number.await.unwrap();
        assert!(
            matches!(number, Err(StoreError::CommitFailed { .. })),
            "{number:?}"
        );
        let dangling = dangling.await.unwrap();
        assert!(
            matches!(dangling, Err(StoreError::CommitFailed { .. })),
            "{dangling:?}"
        );
        assert_eq!(numbers(&pool).await, Vec::<i64>::new());
        assert_eq!(insert(&group_commit, 2).await.unwrap(), 2);
        assert_eq!(numbers(&pool).await, vec![2]);
    }

    #[tokio::test]
    async fn a_panicking_operation_fails_its_batch_and_the_writer_goes_on() {
        let (group_commit, _counters, pool) = writer(limits(64)).await;
        let panicked = group_commit
            .write(
                |_conn| -> WriteFuture<'_, Result<(), StoreError>> {
                    Box::pin(async { panic!("an operation's bug") })
                },
                true,
            )
            .await;
        assert!(
            matches!(panicked, Err(StoreError::WriterStopped)),
            "{panicked:?}"
        );
        assert_eq!(insert(&group_commit, 7).await.unwrap(), 7);
        assert_eq!(numbers(&pool).await, vec![7]);
    }
}
