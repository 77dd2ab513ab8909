//! The bound on rows waiting for the writer: `append` blocks while the queue is full, so a
//! producer faster than the disk slows down instead of growing memory without limit.

use std::sync::{Condvar, Mutex};

#[derive(Debug)]
pub struct RowBudget {
    queued: Mutex<usize>,
    room: Condvar,
    max: usize,
}

impl RowBudget {
    pub fn new(max: usize) -> Self {
        Self {
            queued: Mutex::new(0),
            room: Condvar::new(),
            max: max.max(1),
        }
    }

    /// Waits until `rows` more fit (a batch larger than the bound waits for an empty queue).
    pub fn acquire(&self, rows: usize) {
        let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        while *queued > 0 && *queued + rows > self.max {
            queued = self.room.wait(queued).unwrap_or_else(|e| e.into_inner());
        }
        *queued += rows;
    }

    pub fn release(&self, rows: usize) {
        let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        *queued = queued.saturating_sub(rows);
        self.room.notify_all();
    }

    pub fn queued(&self) -> usize {
        *self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }
}
