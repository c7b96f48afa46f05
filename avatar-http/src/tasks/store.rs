//! Where task records and results live: [`TaskStore`], with an in-memory and an on-disk
//! implementation.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::record::{TaskRecord, is_valid_id};

/// Persistence of tasks and their results. Calls block: use them from worker threads or
/// `spawn_blocking`.
pub trait TaskStore: Send + Sync + 'static {
    /// Creates or replaces a task record.
    fn save_task(&self, record: &TaskRecord) -> io::Result<()>;
    /// Stores result `index` of task `id`.
    fn save_result(&self, id: &str, index: usize, bytes: &[u8]) -> io::Result<()>;
    /// Reads result `index` of task `id`.
    fn load_result(&self, id: &str, index: usize) -> io::Result<Option<Vec<u8>>>;
    /// Every stored task record (at start-up).
    fn load_tasks(&self) -> io::Result<Vec<TaskRecord>>;
    /// Deletes a task and its results.
    fn delete_task(&self, id: &str) -> io::Result<()>;
    /// A description for logs.
    fn describe(&self) -> String;
}

/// A task record and its results by index.
type StoredTask = (TaskRecord, HashMap<usize, Vec<u8>>);

/// Keeps everything in the process's memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tasks: Mutex<HashMap<String, StoredTask>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl TaskStore for MemoryStore {
    fn save_task(&self, record: &TaskRecord) -> io::Result<()> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks
            .entry(record.id.clone())
            .or_insert_with(|| (record.clone(), HashMap::new()))
            .0 = record.clone();
        Ok(())
    }

    fn save_result(&self, id: &str, index: usize, bytes: &[u8]) -> io::Result<()> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        match tasks.get_mut(id) {
            Some((_, results)) => {
                results.insert(index, bytes.to_vec());
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no task {id}"),
            )),
        }
    }

    fn load_result(&self, id: &str, index: usize) -> io::Result<Option<Vec<u8>>> {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        Ok(tasks
            .get(id)
            .and_then(|(_, results)| results.get(&index).cloned()))
    }

    fn load_tasks(&self) -> io::Result<Vec<TaskRecord>> {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        Ok(tasks.values().map(|(record, _)| record.clone()).collect())
    }

    fn delete_task(&self, id: &str) -> io::Result<()> {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

/// One directory per task under `<root>/tasks/<id>/`: `task.json` and `result-<n>`.
/// Files are written to a temporary name and renamed, so a crash never leaves half a file.
#[derive(Debug)]
pub struct DiskStore {
    root: PathBuf,
}

impl DiskStore {
    /// Opens (creating) the store under `root`.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("tasks"))?;
        Ok(DiskStore { root })
    }

    fn task_dir(&self, id: &str) -> io::Result<PathBuf> {
        if !is_valid_id(id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad task id {id:?}"),
            ));
        }
        Ok(self.root.join("tasks").join(id))
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl TaskStore for DiskStore {
    fn save_task(&self, record: &TaskRecord) -> io::Result<()> {
        let dir = self.task_dir(&record.id)?;
        std::fs::create_dir_all(&dir)?;
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        write_atomic(&dir.join("task.json"), &json)
    }

    fn save_result(&self, id: &str, index: usize, bytes: &[u8]) -> io::Result<()> {
        let dir = self.task_dir(id)?;
        std::fs::create_dir_all(&dir)?;
        write_atomic(&dir.join(format!("result-{index}")), bytes)
    }

    fn load_result(&self, id: &str, index: usize) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.task_dir(id)?.join(format!("result-{index}"))) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn load_tasks(&self) -> io::Result<Vec<TaskRecord>> {
        let mut records = Vec::new();
        for entry in std::fs::read_dir(self.root.join("tasks"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !is_valid_id(&name) {
                continue;
            }
            let path = entry.path().join("task.json");
            match std::fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<TaskRecord>(&bytes) {
                    Ok(record) if record.id == name => records.push(record),
                    Ok(_) => {
                        tracing::warn!(path = %path.display(), "task id does not match its directory; skipped")
                    }
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "unreadable task record; skipped")
                    }
                },
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "missing task record; skipped")
                }
            }
        }
        Ok(records)
    }

    fn delete_task(&self, id: &str) -> io::Result<()> {
        match std::fs::remove_dir_all(self.task_dir(id)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn describe(&self) -> String {
        format!("disk ({})", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::record::{TaskStatus, new_id};

    fn record() -> TaskRecord {
        TaskRecord {
            id: new_id(),
            kind: "test".into(),
            lane: "test".into(),
            status: TaskStatus::Success,
            created_at_ms: 1,
            started_at_ms: None,
            finished_at_ms: None,
            step: 0,
            total: 1,
            results: vec![],
            error: None,
            webhook: None,
            track_id: Some(serde_json::json!(7)),
            spec: serde_json::Value::Null,
            attempts: 0,
            webhook_delivery: None,
        }
    }

    fn round_trip(store: &dyn TaskStore) {
        let r = record();
        store.save_task(&r).unwrap();
        store.save_result(&r.id, 0, b"png").unwrap();
        assert_eq!(store.load_tasks().unwrap(), vec![r.clone()]);
        assert_eq!(store.load_result(&r.id, 0).unwrap().unwrap(), b"png");
        assert_eq!(store.load_result(&r.id, 1).unwrap(), None);
        store.delete_task(&r.id).unwrap();
        assert!(store.load_tasks().unwrap().is_empty());
    }

    #[test]
    fn memory_store_round_trips() {
        round_trip(&MemoryStore::new());
    }

    #[test]
    fn disk_store_round_trips_and_rejects_path_tricks() {
        let dir = std::env::temp_dir().join(format!("avatar-store-{}", new_id()));
        let store = DiskStore::open(&dir).unwrap();
        round_trip(&store);
        assert!(store.load_result("../../etc/passwd", 0).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
