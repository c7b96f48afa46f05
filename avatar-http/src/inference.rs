//! The synchronous generation path: per-model worker threads with bounded queues and
//! micro-batching.
//!
//! Each model size has a queue of at most `capacity` waiting requests and `workers` threads that
//! each own their generator (burn modules stay on the thread that loaded them). A worker takes
//! the oldest request plus every queued request with the same options (up to `max_batch`),
//! waiting up to `batch_window` for company, and draws them all in one forward pass. Requests
//! whose client has gone away (timeout, disconnect) are dropped before the forward pass. When
//! a queue is full, `submit` refuses at once with a retry estimate: there is never an
//! unbounded backlog.

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use avatar_core::{AvatarError, EncodedAvatar, GenerateOptions, ModelSize, Seed};
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::models::ModelCatalog;

/// Settings of the pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Worker threads per model size.
    pub workers: usize,
    /// Waiting requests per model size.
    pub capacity: usize,
    /// Most images per forward pass.
    pub max_batch: usize,
    /// How long to wait for more requests to batch with.
    pub batch_window: Duration,
}

/// Why a request was not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full; retrying after this many seconds is likely to succeed.
    Busy {
        /// Suggested `Retry-After`.
        retry_after_secs: u64,
    },
    /// The pool is shutting down.
    Closed,
}

struct Pending {
    seed: Seed,
    options: GenerateOptions,
    reply: oneshot::Sender<Result<EncodedAvatar, AvatarError>>,
}

struct LaneState {
    queue: VecDeque<Pending>,
    closed: bool,
}

struct Lane {
    size: ModelSize,
    state: Mutex<LaneState>,
    ready: Condvar,
    capacity: usize,
    workers: usize,
    /// Exponential moving average of the time per image, in microseconds.
    micros_per_image: AtomicU64,
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn retry_after_secs(&self, queued: usize) -> u64 {
        let per_image = self.micros_per_image.load(Ordering::Relaxed).max(1_000) as f64 / 1e6;
        let secs = (queued as f64 * per_image / self.workers as f64).ceil() as u64;
        secs.clamp(1, 60)
    }
}

/// The pool of synchronous generation workers, one lane per model size.
pub struct GenerationPool {
    lanes: BTreeMap<&'static str, Arc<Lane>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for GenerationPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationPool")
            .field("depths", &self.queue_depths())
            .finish()
    }
}

impl GenerationPool {
    /// Starts the workers and waits until every one has loaded its model.
    pub fn start(
        catalog: &ModelCatalog,
        config: PoolConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, AvatarError> {
        let mut lanes = BTreeMap::new();
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), AvatarError>>();
        for size in ModelSize::ALL {
            let lane = Arc::new(Lane {
                size,
                state: Mutex::new(LaneState {
                    queue: VecDeque::new(),
                    closed: false,
                }),
                ready: Condvar::new(),
                capacity: config.capacity.max(1),
                workers: config.workers.max(1),
                micros_per_image: AtomicU64::new(10_000),
            });
            for index in 0..config.workers.max(1) {
                let lane = lane.clone();
                let catalog = catalog.clone();
                let ready = ready_tx.clone();
                let metrics = metrics.clone();
                let config = config.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("gen-{}-{index}", size.as_str()))
                    .spawn(move || match catalog.generator(size) {
                        Ok(generator) => {
                            let _ = ready.send(Ok(()));
                            drop(ready);
                            worker_loop(&lane, &generator, &config, &metrics);
                        }
                        Err(error) => {
                            let _ = ready.send(Err(error));
                        }
                    })
                    .map_err(|e| {
                        AvatarError::Backend(format!("cannot spawn a worker thread: {e}"))
                    })?;
                threads.push(handle);
            }
            lanes.insert(size.as_str(), lane);
        }
        drop(ready_tx);
        let pool = GenerationPool {
            lanes,
            threads: Mutex::new(threads),
        };
        for _ in 0..pool.threads.lock().map(|t| t.len()).unwrap_or(0) {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    pool.shutdown();
                    return Err(error);
                }
                Err(_) => {
                    pool.shutdown();
                    return Err(AvatarError::Backend(
                        "a worker thread died while loading its model".into(),
                    ));
                }
            }
        }
        Ok(pool)
    }

    /// Queues one avatar; the receiver yields it once drawn.
    pub fn submit(
        &self,
        size: ModelSize,
        seed: Seed,
        mut options: GenerateOptions,
    ) -> Result<oneshot::Receiver<Result<EncodedAvatar, AvatarError>>, SubmitError> {
        let lane = self.lanes.get(size.as_str()).ok_or(SubmitError::Closed)?;
        options.seed = None;
        let (reply, receiver) = oneshot::channel();
        let mut state = lane.lock();
        if state.closed {
            return Err(SubmitError::Closed);
        }
        if state.queue.len() >= lane.capacity {
            return Err(SubmitError::Busy {
                retry_after_secs: lane.retry_after_secs(state.queue.len()),
            });
        }
        state.queue.push_back(Pending {
            seed,
            options,
            reply,
        });
        drop(state);
        lane.ready.notify_one();
        Ok(receiver)
    }

    /// Waiting requests per model size (`small`, `large`).
    pub fn queue_depths(&self) -> Vec<(&'static str, usize)> {
        self.lanes
            .iter()
            .map(|(name, lane)| (*name, lane.lock().queue.len()))
            .collect()
    }

    /// Stops taking requests, lets the workers finish what is queued, and joins them.
    pub fn shutdown(&self) {
        for lane in self.lanes.values() {
            lane.lock().closed = true;
            lane.ready.notify_all();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// Takes the next batch: the oldest request and every queued one with the same options.
fn next_batch(lane: &Lane, config: &PoolConfig) -> Option<Vec<Pending>> {
    let mut state = lane.lock();
    while state.queue.is_empty() && !state.closed {
        state = lane.ready.wait(state).unwrap_or_else(|e| e.into_inner());
    }
    if state.queue.is_empty() {
        return None;
    }
    if !config.batch_window.is_zero() && state.queue.len() < config.max_batch && !state.closed {
        let deadline = Instant::now() + config.batch_window;
        loop {
            let now = Instant::now();
            if now >= deadline || state.queue.len() >= config.max_batch || state.closed {
                break;
            }
            state = lane
                .ready
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if state.queue.is_empty() {
            // Another worker took them while we waited.
            return Some(Vec::new());
        }
    }
    let first = state.queue.pop_front()?;
    let mut batch = vec![first];
    let mut index = 0;
    while index < state.queue.len() && batch.len() < config.max_batch {
        if state.queue[index].options == batch[0].options {
            if let Some(item) = state.queue.remove(index) {
                batch.push(item);
            }
        } else {
            index += 1;
        }
    }
    let more = !state.queue.is_empty();
    drop(state);
    if more {
        lane.ready.notify_one();
    }
    Some(batch)
}

fn worker_loop(
    lane: &Lane,
    generator: &avatar_core::AvatarGenerator,
    config: &PoolConfig,
    metrics: &Metrics,
) {
    while let Some(batch) = next_batch(lane, config) {
        let (live, gone): (Vec<Pending>, Vec<Pending>) =
            batch.into_iter().partition(|p| !p.reply.is_closed());
        for _ in &gone {
            metrics.record_abandoned();
        }
        if live.is_empty() {
            continue;
        }
        let started = Instant::now();
        let options = live[0].options.clone();
        let seeds: Vec<Seed> = live.iter().map(|p| p.seed.clone()).collect();
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<Vec<Vec<u8>>, AvatarError> {
                generator
                    .generate_batch(&seeds, &options)?
                    .iter()
                    .map(|image| avatar_core::imaging::encode(image, options.format))
                    .collect()
            }))
            .unwrap_or_else(|panic| {
                Err(AvatarError::Backend(format!(
                    "the model panicked: {}",
                    panic_message(&*panic)
                )))
            });
        let count = live.len();
        match outcome {
            Ok(images) => {
                metrics.record_images(lane.size.as_str(), "sync", count);
                metrics.record_batch(count);
                for (pending, bytes) in live.into_iter().zip(images) {
                    let _ = pending.reply.send(Ok(EncodedAvatar {
                        bytes,
                        format: options.format,
                        seed: pending.seed,
                    }));
                }
                let micros = (started.elapsed().as_micros() as u64 / count as u64).max(1);
                let old = lane.micros_per_image.load(Ordering::Relaxed);
                lane.micros_per_image
                    .store((old * 7 + micros) / 8, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::error!(size = lane.size.as_str(), %error, "generation failed");
                let message = error.to_string();
                let user = error.is_user_error();
                for pending in live {
                    let error = if user {
                        match &error {
                            AvatarError::InvalidOption { field, message } => {
                                AvatarError::invalid(field, message.clone())
                            }
                            _ => AvatarError::Backend(message.clone()),
                        }
                    } else {
                        AvatarError::Backend(message.clone())
                    };
                    let _ = pending.reply.send(Err(error));
                }
            }
        }
    }
}

/// The text of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
