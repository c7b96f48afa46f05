//! The task manager and its lanes: bounded queues of [`Job`]s run by model worker threads.
//!
//! A *lane* is a model pool: `workers` threads that each own a model `M` (built on the thread
//! by a factory, so burn modules never cross threads) and a FIFO of at most `capacity` queued
//! jobs. Its worker count is that model's concurrency limit. The [`TaskManager`] keeps every
//! task's record (status, progress, timings, results), persists it through a [`TaskStore`],
//! answers queue positions, cancels, re-queues unfinished tasks after a restart, expires old
//! ones, and hands finished tasks with a webhook to the dispatcher.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::job::{Artifact, CancelReason, CancelToken, Job, JobContext, JobError, JobSink};
use super::record::{
    DeliveryState, ResultMeta, TaskRecord, TaskStatus, WebhookDelivery, new_id, now_ms,
};
use super::store::TaskStore;
use crate::metrics::Metrics;

/// How many times a task may be started before a restart stops re-queueing it.
pub const MAX_ATTEMPTS: u32 = 3;

/// Why a task was not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitError {
    /// The lane's queue is full.
    Busy {
        /// Suggested `Retry-After` in seconds.
        retry_after_secs: u64,
    },
    /// The server is shutting down.
    Closed,
    /// The store failed.
    Store(String),
}

/// Why a task could not be cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelError {
    /// No such task.
    NotFound,
    /// It already finished with this status.
    Finished(TaskStatus),
}

/// Caller-supplied settings of a new task.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// URL to POST to when the task finishes.
    pub webhook: Option<String>,
    /// The caller's id, echoed back.
    pub track_id: Option<serde_json::Value>,
}

/// A finished task whose webhook must be delivered.
#[derive(Debug, Clone)]
pub struct TaskEvent {
    /// The record at the time it finished.
    pub record: TaskRecord,
}

struct Queued<M> {
    id: String,
    job: Box<dyn Job<M>>,
}

struct LaneState<M> {
    queue: VecDeque<Queued<M>>,
    closed: bool,
    running: usize,
}

struct LaneShared<M> {
    name: String,
    state: Mutex<LaneState<M>>,
    ready: Condvar,
    idle: Condvar,
    capacity: usize,
    workers: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Moving average of a task's run time in milliseconds (for `Retry-After`).
    millis_per_task: AtomicU64,
}

impl<M> LaneShared<M> {
    fn lock(&self) -> MutexGuard<'_, LaneState<M>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pop(&self) -> Option<Queued<M>> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if let Some(item) = state.queue.pop_front() {
                state.running += 1;
                return Some(item);
            }
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn done(&self, elapsed: Duration) {
        let mut state = self.lock();
        state.running = state.running.saturating_sub(1);
        drop(state);
        let old = self.millis_per_task.load(Ordering::Relaxed);
        let new = elapsed.as_millis() as u64;
        self.millis_per_task
            .store((old * 3 + new) / 4, Ordering::Relaxed);
        self.idle.notify_all();
    }

    fn retry_after_secs(&self, queued: usize) -> u64 {
        let per_task = self.millis_per_task.load(Ordering::Relaxed).max(100) as f64 / 1e3;
        ((queued as f64 * per_task / self.workers as f64).ceil() as u64).clamp(1, 300)
    }
}

/// The type-erased side of a lane that the manager needs.
trait LaneControl: Send + Sync {
    fn position(&self, id: &str) -> Option<usize>;
    fn remove(&self, id: &str) -> bool;
    fn depth(&self) -> usize;
    fn close(&self);
    fn wait_idle(&self, deadline: Instant) -> bool;
    fn join(&self);
}

impl<M: 'static> LaneControl for LaneShared<M> {
    fn position(&self, id: &str) -> Option<usize> {
        self.lock()
            .queue
            .iter()
            .position(|q| q.id == id)
            .map(|i| i + 1)
    }

    fn remove(&self, id: &str) -> bool {
        let mut state = self.lock();
        let before = state.queue.len();
        state.queue.retain(|q| q.id != id);
        state.queue.len() != before
    }

    fn depth(&self) -> usize {
        self.lock().queue.len()
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    fn wait_idle(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        while state.running > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .idle
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    fn join(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// A model pool that runs jobs of type [`Job<M>`]. Cheap to clone.
pub struct Lane<M> {
    shared: Arc<LaneShared<M>>,
}

impl<M> Clone for Lane<M> {
    fn clone(&self) -> Self {
        Lane {
            shared: self.shared.clone(),
        }
    }
}

impl<M> std::fmt::Debug for Lane<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<M> Lane<M> {
    /// The lane's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    fn push(&self, item: Queued<M>, enforce_capacity: bool) -> Result<(), SubmitError> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(SubmitError::Closed);
        }
        if enforce_capacity && state.queue.len() >= self.shared.capacity {
            return Err(SubmitError::Busy {
                retry_after_secs: self
                    .shared
                    .retry_after_secs(state.queue.len() + state.running),
            });
        }
        state.queue.push_back(item);
        drop(state);
        self.shared.ready.notify_one();
        Ok(())
    }
}

struct Entry {
    record: TaskRecord,
    cancel: CancelToken,
}

type Restorer = Arc<dyn Fn(&TaskRecord) -> Result<(), String> + Send + Sync>;

struct Inner {
    records: Mutex<HashMap<String, Entry>>,
    persist_lock: Mutex<()>,
    store: Arc<dyn TaskStore>,
    lanes: Mutex<BTreeMap<String, Arc<dyn LaneControl>>>,
    restorers: Mutex<HashMap<String, Restorer>>,
    events: mpsc::Sender<TaskEvent>,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
}

impl Inner {
    fn records(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lane(&self, name: &str) -> Option<Arc<dyn LaneControl>> {
        self.lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Writes the task's current record. The persist lock orders writers, and the record is
    /// read after taking it, so the last write is always the newest state.
    fn persist(&self, id: &str) {
        let _guard = self.persist_lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(record) = self.records().get(id).map(|e| e.record.clone()) else {
            return;
        };
        if let Err(error) = self.store.save_task(&record) {
            tracing::error!(task_id = id, %error, "cannot persist task");
        }
    }

    fn notify(&self, record: TaskRecord) {
        if record.webhook.is_some()
            && let Err(error) = self.events.try_send(TaskEvent { record })
        {
            tracing::error!(%error, "webhook queue full; delivery dropped");
        }
    }
}

impl JobSink for Inner {
    fn progress(&self, task_id: &str, step: u32, total: u32) {
        if let Some(entry) = self.records().get_mut(task_id) {
            entry.record.step = step.min(total);
            entry.record.total = total;
        }
    }

    fn push_result(&self, task_id: &str, artifact: Artifact) -> Result<usize, String> {
        let index = self
            .records()
            .get(task_id)
            .map(|e| e.record.results.len())
            .ok_or_else(|| format!("task {task_id} vanished"))?;
        self.store
            .save_result(task_id, index, &artifact.bytes)
            .map_err(|e| format!("cannot store result {index}: {e}"))?;
        if let Some(entry) = self.records().get_mut(task_id) {
            entry.record.results.push(ResultMeta {
                index,
                content_type: artifact.content_type,
                bytes: artifact.bytes.len(),
                meta: artifact.meta,
            });
        }
        self.persist(task_id);
        Ok(index)
    }
}

/// Every task: records, lanes, persistence, cancellation, recovery. Cheap to clone.
#[derive(Clone)]
pub struct TaskManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskManager")
            .field("store", &self.inner.store.describe())
            .finish()
    }
}

impl TaskManager {
    /// A manager over `store`; finished tasks with a webhook are sent to `events`.
    pub fn new(
        store: Arc<dyn TaskStore>,
        events: mpsc::Sender<TaskEvent>,
        metrics: Arc<Metrics>,
    ) -> Self {
        TaskManager {
            inner: Arc::new(Inner {
                records: Mutex::new(HashMap::new()),
                persist_lock: Mutex::new(()),
                store,
                lanes: Mutex::new(BTreeMap::new()),
                restorers: Mutex::new(HashMap::new()),
                events,
                metrics,
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn TaskStore> {
        &self.inner.store
    }

    /// Starts a lane of `workers` threads, each with a model from `factory` (called on the
    /// thread), and waits until every model is loaded.
    pub fn add_lane<M, F>(
        &self,
        name: &str,
        workers: usize,
        capacity: usize,
        factory: F,
    ) -> Result<Lane<M>, String>
    where
        M: 'static,
        F: Fn() -> Result<M, String> + Send + Sync + 'static,
    {
        let shared = Arc::new(LaneShared {
            name: name.to_string(),
            state: Mutex::new(LaneState {
                queue: VecDeque::new(),
                closed: false,
                running: 0,
            }),
            ready: Condvar::new(),
            idle: Condvar::new(),
            capacity: capacity.max(1),
            workers: workers.max(1),
            threads: Mutex::new(Vec::new()),
            millis_per_task: AtomicU64::new(1_000),
        });
        let factory = Arc::new(factory);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        for index in 0..workers.max(1) {
            let worker = shared.clone();
            let factory = factory.clone();
            let manager = self.clone();
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("task-{name}-{index}"))
                .spawn(move || match factory() {
                    Ok(mut model) => {
                        let _ = ready.send(Ok(()));
                        drop(ready);
                        while let Some(item) = worker.pop() {
                            let started = Instant::now();
                            manager.run_job(item, &mut model);
                            worker.done(started.elapsed());
                        }
                    }
                    Err(error) => {
                        let _ = ready.send(Err(error));
                    }
                })
                .map_err(|e| format!("cannot spawn a worker thread: {e}"))?;
            shared
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(thread);
        }
        drop(ready_tx);
        for _ in 0..workers.max(1) {
            let outcome = ready_rx
                .recv()
                .unwrap_or_else(|_| Err("a worker died while loading its model".into()));
            if let Err(error) = outcome {
                shared.close();
                shared.join();
                return Err(error);
            }
        }
        self.inner
            .lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), shared.clone());
        Ok(Lane { shared })
    }

    /// Lets tasks of `kind` found unfinished at start-up be rebuilt from their spec and
    /// re-queued on `lane`.
    pub fn register_restorer<M: 'static>(
        &self,
        kind: &str,
        lane: &Lane<M>,
        build: impl Fn(&serde_json::Value) -> Result<Box<dyn Job<M>>, String> + Send + Sync + 'static,
    ) {
        let lane = lane.clone();
        let restorer: Restorer = Arc::new(move |record: &TaskRecord| {
            let job = build(&record.spec)?;
            lane.push(
                Queued {
                    id: record.id.clone(),
                    job,
                },
                false,
            )
            .map_err(|e| format!("{e:?}"))
        });
        self.inner
            .restorers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind.to_string(), restorer);
    }

    /// Loads the stored tasks: finished ones are served again, unfinished ones are re-queued
    /// (or failed, when their kind cannot be rebuilt or they were started too often).
    /// Returns `(loaded, requeued, failed)`.
    pub fn recover(&self) -> std::io::Result<(usize, usize, usize)> {
        let mut records = self.inner.store.load_tasks()?;
        records.sort_by_key(|r| r.created_at_ms);
        let (mut requeued, mut failed) = (0, 0);
        let loaded = records.len();
        for mut record in records {
            let id = record.id.clone();
            let mut resend = record.status.is_final()
                && record
                    .webhook_delivery
                    .as_ref()
                    .is_some_and(|d| d.state == DeliveryState::Pending);
            let mut restore = None;
            if !record.status.is_final() {
                let restorer = self
                    .inner
                    .restorers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&record.kind)
                    .cloned();
                match restorer {
                    Some(restorer) if record.attempts < MAX_ATTEMPTS => {
                        record.status = TaskStatus::Queued;
                        record.started_at_ms = None;
                        record.step = 0;
                        record.results.clear();
                        restore = Some(restorer);
                    }
                    _ => {
                        record.status = TaskStatus::Failed;
                        record.finished_at_ms = Some(now_ms());
                        record.error = Some(if record.attempts >= MAX_ATTEMPTS {
                            format!(
                                "interrupted by server restarts {} times; not retried again",
                                record.attempts
                            )
                        } else {
                            format!(
                                "interrupted by a server restart; tasks of kind {} cannot be resumed",
                                record.kind
                            )
                        });
                        if record.webhook.is_some() {
                            record.webhook_delivery = Some(pending_delivery());
                            resend = true;
                        }
                        failed += 1;
                    }
                }
            }
            self.inner.records().insert(
                id.clone(),
                Entry {
                    record: record.clone(),
                    cancel: CancelToken::new(),
                },
            );
            self.inner.persist(&id);
            if let Some(restorer) = restore {
                match restorer(&record) {
                    Ok(()) => requeued += 1,
                    Err(error) => {
                        self.fail(&id, format!("cannot resume after a restart: {error}"));
                        failed += 1;
                    }
                }
            }
            if resend && let Some(record) = self.get(&id) {
                self.inner.notify(record);
            }
        }
        Ok((loaded, requeued, failed))
    }

    fn fail(&self, id: &str, error: String) {
        let record = {
            let mut records = self.inner.records();
            let Some(entry) = records.get_mut(id) else {
                return;
            };
            entry.record.status = TaskStatus::Failed;
            entry.record.error = Some(error);
            entry.record.finished_at_ms = Some(now_ms());
            if entry.record.webhook.is_some() {
                entry.record.webhook_delivery = Some(pending_delivery());
            }
            entry.record.clone()
        };
        self.inner.persist(id);
        self.inner.notify(record);
    }

    /// Queues a job on `lane`. Blocks briefly on the store: call from `spawn_blocking`.
    pub fn submit<M: 'static>(
        &self,
        lane: &Lane<M>,
        job: Box<dyn Job<M>>,
        options: SubmitOptions,
    ) -> Result<TaskRecord, SubmitError> {
        if self.inner.draining.load(Ordering::SeqCst) {
            return Err(SubmitError::Closed);
        }
        let id = new_id();
        let record = TaskRecord {
            id: id.clone(),
            kind: job.kind().to_string(),
            lane: lane.name().to_string(),
            status: TaskStatus::Queued,
            created_at_ms: now_ms(),
            started_at_ms: None,
            finished_at_ms: None,
            step: 0,
            total: job.total_steps(),
            results: Vec::new(),
            error: None,
            webhook: options.webhook,
            track_id: options.track_id,
            spec: job.spec(),
            attempts: 0,
            webhook_delivery: None,
        };
        self.inner.records().insert(
            id.clone(),
            Entry {
                record: record.clone(),
                cancel: CancelToken::new(),
            },
        );
        if let Err(error) = self.inner.store.save_task(&record) {
            self.inner.records().remove(&id);
            return Err(SubmitError::Store(error.to_string()));
        }
        if let Err(error) = lane.push(
            Queued {
                id: id.clone(),
                job,
            },
            true,
        ) {
            self.inner.records().remove(&id);
            let _ = self.inner.store.delete_task(&id);
            if matches!(error, SubmitError::Busy { .. }) {
                self.inner.metrics.record_rejected("task");
            }
            return Err(error);
        }
        Ok(record)
    }

    /// A task's record.
    pub fn get(&self, id: &str) -> Option<TaskRecord> {
        self.inner.records().get(id).map(|e| e.record.clone())
    }

    /// A task's status, without copying its record.
    pub fn status(&self, id: &str) -> Option<TaskStatus> {
        self.inner.records().get(id).map(|e| e.record.status)
    }

    /// A queued task's position in its lane (1 = next).
    pub fn position(&self, record: &TaskRecord) -> Option<usize> {
        if record.status != TaskStatus::Queued {
            return None;
        }
        self.inner.lane(&record.lane)?.position(&record.id)
    }

    /// Cancels a task: a queued one at once, a running one at its next checkpoint.
    pub fn cancel(&self, id: &str) -> Result<TaskRecord, CancelError> {
        let (record, lane) = {
            let mut records = self.inner.records();
            let entry = records.get_mut(id).ok_or(CancelError::NotFound)?;
            match entry.record.status {
                TaskStatus::Queued => {
                    entry.cancel.cancel(CancelReason::User);
                    entry.record.status = TaskStatus::Cancelled;
                    entry.record.finished_at_ms = Some(now_ms());
                    if entry.record.webhook.is_some() {
                        entry.record.webhook_delivery = Some(pending_delivery());
                    }
                    (entry.record.clone(), Some(entry.record.lane.clone()))
                }
                TaskStatus::Processing => {
                    entry.cancel.cancel(CancelReason::User);
                    (entry.record.clone(), None)
                }
                status => return Err(CancelError::Finished(status)),
            }
        };
        if let Some(lane) = lane {
            if let Some(lane) = self.inner.lane(&lane) {
                lane.remove(id);
            }
            self.inner.persist(id);
            self.inner.notify(record.clone());
        }
        Ok(record)
    }

    /// Records a webhook outcome.
    pub fn set_delivery(&self, id: &str, delivery: WebhookDelivery) {
        if let Some(entry) = self.inner.records().get_mut(id) {
            entry.record.webhook_delivery = Some(delivery);
        } else {
            return;
        }
        self.inner.persist(id);
    }

    /// Reads a stored result. Blocks on the store: call from `spawn_blocking`.
    pub fn result(&self, id: &str, index: usize) -> Option<(ResultMeta, Vec<u8>)> {
        let meta = self.get(id)?.results.get(index)?.clone();
        let bytes = self.inner.store.load_result(id, index).ok()??;
        Some((meta, bytes))
    }

    /// Tasks per status.
    pub fn counts(&self) -> BTreeMap<TaskStatus, usize> {
        let mut counts: BTreeMap<TaskStatus, usize> =
            TaskStatus::ALL.iter().map(|s| (*s, 0)).collect();
        for entry in self.inner.records().values() {
            *counts.entry(entry.record.status).or_default() += 1;
        }
        counts
    }

    /// Queued tasks per lane.
    pub fn queue_depths(&self) -> Vec<(String, usize)> {
        let lanes = self
            .inner
            .lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        lanes
            .iter()
            .map(|(name, lane)| (name.clone(), lane.depth()))
            .collect()
    }

    /// Deletes finished tasks older than `ttl`. Blocks on the store.
    pub fn expire(&self, ttl: Duration) -> usize {
        let cutoff = now_ms().saturating_sub(ttl.as_millis() as u64);
        let expired: Vec<String> = self
            .inner
            .records()
            .values()
            .filter(|e| e.record.status.is_final() && e.record.finished_at_ms.unwrap_or(0) < cutoff)
            .map(|e| e.record.id.clone())
            .collect();
        for id in &expired {
            self.inner.records().remove(id);
            if let Err(error) = self.inner.store.delete_task(id) {
                tracing::warn!(task_id = %id, %error, "cannot delete an expired task");
            }
        }
        expired.len()
    }

    /// Stops taking tasks, lets running ones finish for up to `grace`, then interrupts them
    /// (they go back to `queued` and resume after a restart with the on-disk store), and joins
    /// every worker. Queued tasks stay queued in the store. Blocks.
    pub fn shutdown(&self, grace: Duration) {
        self.inner.draining.store(true, Ordering::SeqCst);
        let lanes: Vec<Arc<dyn LaneControl>> = self
            .inner
            .lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for lane in &lanes {
            lane.close();
        }
        let deadline = Instant::now() + grace;
        let mut finished = true;
        for lane in &lanes {
            finished &= lane.wait_idle(deadline);
        }
        if !finished {
            tracing::warn!("shutdown grace period over: interrupting running tasks");
            for entry in self.inner.records().values() {
                if entry.record.status == TaskStatus::Processing {
                    entry.cancel.cancel(CancelReason::Shutdown);
                }
            }
        }
        for lane in &lanes {
            lane.join();
        }
        let queued = self.counts().get(&TaskStatus::Queued).copied().unwrap_or(0);
        if queued > 0 {
            tracing::info!(queued, store = %self.inner.store.describe(), "tasks left queued for the next start");
        }
    }

    /// Whether the manager stopped taking tasks.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    fn begin(&self, id: &str) -> Option<CancelToken> {
        let token = {
            let mut records = self.inner.records();
            let entry = records.get_mut(id)?;
            if entry.record.status != TaskStatus::Queued || entry.cancel.is_cancelled() {
                return None;
            }
            entry.record.status = TaskStatus::Processing;
            entry.record.started_at_ms = Some(now_ms());
            entry.record.attempts += 1;
            entry.record.step = 0;
            entry.record.results.clear();
            entry.cancel.clone()
        };
        self.inner.persist(id);
        Some(token)
    }

    fn run_job<M: 'static>(&self, item: Queued<M>, model: &mut M) {
        let Queued { id, mut job } = item;
        let Some(cancel) = self.begin(&id) else {
            return;
        };
        let sink: Arc<dyn JobSink> = self.inner.clone();
        let ctx = JobContext::new(id.clone(), sink, cancel.clone());
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| job.run(model, &ctx)))
            .unwrap_or_else(|panic| {
                Err(JobError::Failed(format!(
                    "the job panicked: {}",
                    crate::inference::panic_message(&*panic)
                )))
            });
        self.finish(&id, outcome, &cancel);
    }

    fn finish(&self, id: &str, outcome: Result<(), JobError>, cancel: &CancelToken) {
        let record = {
            let mut records = self.inner.records();
            let Some(entry) = records.get_mut(id) else {
                return;
            };
            let record = &mut entry.record;
            match outcome {
                Ok(()) => {
                    record.status = TaskStatus::Success;
                    record.step = record.total;
                }
                Err(JobError::Cancelled) if cancel.reason() == Some(CancelReason::Shutdown) => {
                    record.status = TaskStatus::Queued;
                    record.started_at_ms = None;
                    record.step = 0;
                    record.results.clear();
                }
                Err(JobError::Cancelled) => record.status = TaskStatus::Cancelled,
                Err(JobError::Failed(message)) => {
                    record.status = TaskStatus::Failed;
                    record.error = Some(message);
                }
            }
            if record.status.is_final() {
                record.finished_at_ms = Some(now_ms());
                if record.webhook.is_some() {
                    record.webhook_delivery = Some(pending_delivery());
                }
            }
            record.clone()
        };
        self.inner.persist(id);
        if record.status.is_final() {
            tracing::info!(task_id = id, kind = %record.kind, status = record.status.as_str(), "task finished");
            self.inner.notify(record);
        }
    }
}

fn pending_delivery() -> WebhookDelivery {
    WebhookDelivery {
        state: DeliveryState::Pending,
        attempts: 0,
        last_error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::store::MemoryStore;

    /// A model-free job: `steps` steps of `pause` each, one result per step.
    struct Steps {
        steps: u32,
        pause: Duration,
    }

    impl Job<String> for Steps {
        fn kind(&self) -> &'static str {
            "test.steps"
        }
        fn total_steps(&self) -> u32 {
            self.steps
        }
        fn spec(&self) -> serde_json::Value {
            serde_json::json!({ "steps": self.steps, "pause_ms": self.pause.as_millis() as u64 })
        }
        fn run(&mut self, model: &mut String, ctx: &JobContext) -> Result<(), JobError> {
            for step in 0..self.steps {
                ctx.checkpoint()?;
                std::thread::sleep(self.pause);
                ctx.push_result(Artifact {
                    bytes: format!("{model}:{step}").into_bytes(),
                    content_type: "text/plain".into(),
                    meta: serde_json::json!({ "step": step }),
                })?;
                ctx.progress(step + 1, self.steps);
            }
            Ok(())
        }
    }

    fn steps(spec: &serde_json::Value) -> Result<Box<dyn Job<String>>, String> {
        Ok(Box::new(Steps {
            steps: spec["steps"].as_u64().ok_or("steps")? as u32,
            pause: Duration::from_millis(spec["pause_ms"].as_u64().ok_or("pause")?),
        }))
    }

    fn setup(store: Arc<dyn TaskStore>) -> (TaskManager, Lane<String>, mpsc::Receiver<TaskEvent>) {
        let (tx, rx) = mpsc::channel(16);
        let manager = TaskManager::new(store, tx, Arc::new(Metrics::new()));
        let lane = manager
            .add_lane("test", 1, 2, || Ok("model".to_string()))
            .unwrap();
        manager.register_restorer("test.steps", &lane, steps);
        (manager, lane, rx)
    }

    fn wait(manager: &TaskManager, id: &str, status: TaskStatus) -> TaskRecord {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let record = manager.get(id).unwrap();
            if record.status == status {
                return record;
            }
            assert!(
                Instant::now() < deadline,
                "{id} is {:?}, expected {status:?}",
                record.status
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn job(steps: u32, pause_ms: u64) -> Box<dyn Job<String>> {
        Box::new(Steps {
            steps,
            pause: Duration::from_millis(pause_ms),
        })
    }

    #[test]
    fn runs_jobs_with_progress_results_and_webhook_events() {
        let (manager, lane, mut events) = setup(Arc::new(MemoryStore::new()));
        let options = SubmitOptions {
            webhook: Some("http://127.0.0.1:9/hook".into()),
            track_id: Some(serde_json::json!("t-1")),
        };
        let record = manager.submit(&lane, job(3, 1), options).unwrap();
        let done = wait(&manager, &record.id, TaskStatus::Success);
        assert_eq!((done.step, done.total, done.results.len()), (3, 3, 3));
        assert!(done.started_at_ms.is_some() && done.finished_at_ms.is_some());
        assert_eq!(manager.result(&record.id, 2).unwrap().1, b"model:2");
        let event = events.try_recv().unwrap();
        assert_eq!(event.record.track_id, Some(serde_json::json!("t-1")));
        assert_eq!(
            event.record.webhook_delivery.unwrap().state,
            DeliveryState::Pending
        );
        manager.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn bounded_queue_positions_and_cancellation() {
        let (manager, lane, _events) = setup(Arc::new(MemoryStore::new()));
        let running = manager
            .submit(&lane, job(1000, 2), SubmitOptions::default())
            .unwrap();
        wait(&manager, &running.id, TaskStatus::Processing);
        let first = manager
            .submit(&lane, job(1, 0), SubmitOptions::default())
            .unwrap();
        let second = manager
            .submit(&lane, job(1, 0), SubmitOptions::default())
            .unwrap();
        assert_eq!(manager.position(&manager.get(&first.id).unwrap()), Some(1));
        assert_eq!(manager.position(&manager.get(&second.id).unwrap()), Some(2));
        assert!(matches!(
            manager.submit(&lane, job(1, 0), SubmitOptions::default()),
            Err(SubmitError::Busy { retry_after_secs }) if retry_after_secs >= 1
        ));
        assert_eq!(
            manager.cancel(&first.id).unwrap().status,
            TaskStatus::Cancelled
        );
        assert_eq!(manager.position(&manager.get(&second.id).unwrap()), Some(1));
        assert_eq!(
            manager.cancel(&first.id),
            Err(CancelError::Finished(TaskStatus::Cancelled))
        );
        assert_eq!(manager.cancel("nope"), Err(CancelError::NotFound));
        manager.cancel(&running.id).unwrap();
        let stopped = wait(&manager, &running.id, TaskStatus::Cancelled);
        assert!(stopped.step < 1000);
        wait(&manager, &second.id, TaskStatus::Success);
        assert_eq!(manager.counts()[&TaskStatus::Cancelled], 2);
        manager.shutdown(Duration::from_secs(1));
        assert_eq!(
            manager.submit(&lane, job(1, 0), SubmitOptions::default()),
            Err(SubmitError::Closed)
        );
    }

    #[test]
    fn shutdown_interrupts_running_jobs_and_recovery_requeues_them() {
        let store: Arc<dyn TaskStore> = Arc::new(MemoryStore::new());
        let (manager, lane, _events) = setup(store.clone());
        let running = manager
            .submit(&lane, job(1000, 2), SubmitOptions::default())
            .unwrap();
        wait(&manager, &running.id, TaskStatus::Processing);
        let queued = manager
            .submit(&lane, job(2, 0), SubmitOptions::default())
            .unwrap();
        manager.shutdown(Duration::ZERO);
        assert_eq!(manager.get(&running.id).unwrap().status, TaskStatus::Queued);
        assert_eq!(manager.get(&queued.id).unwrap().status, TaskStatus::Queued);

        // An unknown kind cannot be resumed: it fails with a reason instead of vanishing.
        let mut orphan = store.load_tasks().unwrap().remove(0);
        orphan.id = new_id();
        orphan.kind = "retired.kind".into();
        store.save_task(&orphan).unwrap();

        let (manager, _lane, _events) = setup(store);
        let (loaded, requeued, failed) = manager.recover().unwrap();
        assert_eq!((loaded, requeued, failed), (3, 2, 1));
        assert!(
            manager
                .get(&orphan.id)
                .unwrap()
                .error
                .unwrap()
                .contains("retired.kind")
        );
        manager.cancel(&running.id).unwrap();
        let resumed = wait(&manager, &queued.id, TaskStatus::Success);
        assert_eq!(resumed.attempts, 1);
        manager.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn panicking_jobs_fail_without_killing_the_worker() {
        struct Boom;
        impl Job<String> for Boom {
            fn kind(&self) -> &'static str {
                "test.boom"
            }
            fn total_steps(&self) -> u32 {
                1
            }
            fn spec(&self) -> serde_json::Value {
                serde_json::Value::Null
            }
            fn run(&mut self, _: &mut String, _: &JobContext) -> Result<(), JobError> {
                panic!("boom")
            }
        }
        let (manager, lane, _events) = setup(Arc::new(MemoryStore::new()));
        let boom = manager
            .submit(&lane, Box::new(Boom), SubmitOptions::default())
            .unwrap();
        let failed = wait(&manager, &boom.id, TaskStatus::Failed);
        assert!(failed.error.unwrap().contains("boom"));
        let after = manager
            .submit(&lane, job(1, 0), SubmitOptions::default())
            .unwrap();
        wait(&manager, &after.id, TaskStatus::Success);
        manager.shutdown(Duration::from_secs(1));
    }
}
