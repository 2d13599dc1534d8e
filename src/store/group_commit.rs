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
//!   of the batch is told so, and none of it happened.
//! - The queue in front is bounded: when it is full, a write is refused at once
//!   (`StoreError::Busy`) with nothing done, and the API answers 503 with `Retry-After`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{AnyConnection, AnyPool, Connection};
use tokio::sync::{mpsc, oneshot, Notify};

use super::StoreError;

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
    /// Answers the caller once the batch committed, or failed with `commit_error`.
    fn finish(self: Box<Self>, commit_error: Option<&str>);
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

    fn finish(self: Box<Self>, commit_error: Option<&str>) {
        let failed = || E::from(StoreError::CommitFailed(commit_error.unwrap_or("").into()));
        let answer = match (self.outcome, commit_error) {
            // A refused operation changed nothing, whatever became of its batch.
            (Some(Err(error)), _) => Err(error),
            (Some(Ok(value)), None) => Ok(value),
            (Some(Ok(_)), Some(_)) | (None, _) => Err(failed()),
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
            let commit_error = result.err().map(|error| {
            tracing::error!(error = %error, operations, "A write batch failed; none of it happened");
            error.to_string()
        });
            if commit_error.is_none() && batch.iter().any(|queued| queued.wakes()) {
                committed.notify_one();
            }
            for queued in batch {
                queued.finish(commit_error.as_deref());
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

/// One transaction, one savepoint per operation, one commit.
async fn commit_batch(
    writer: &AnyPool,
    batch: &mut [Box<dyn QueuedWrite>],
) -> Result<(), sqlx::Error> {
    let mut transaction = writer.begin().await?;
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
