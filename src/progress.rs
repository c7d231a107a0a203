//! What batch operators share: a rate limiter, a progress line on stderr, and a
//! checkpoint file so an interrupted run resumes where it stopped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Paces work to at most `rate` items per second (unlimited when `None`).
#[derive(Debug)]
pub struct Throttle {
    rate: Option<f64>,
    start: Instant,
    done: u64,
}

impl Throttle {
    pub fn new(rate: Option<f64>) -> Self {
        Self {
            rate: rate.filter(|r| *r > 0.0),
            start: Instant::now(),
            done: 0,
        }
    }

    /// Waits until the next item may start.
    pub async fn tick(&mut self) {
        if let Some(rate) = self.rate {
            let due = self.start + Duration::from_secs_f64(self.done as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        self.done += 1;
    }
}

/// A one-line progress display: `label [#####     ] 50/100  12.3/s  note`.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: Option<u64>,
    start: Instant,
    last_draw: Option<Instant>,
}

impl Progress {
    pub fn new(label: &str, total: Option<u64>) -> Self {
        Self {
            label: label.to_string(),
            total,
            start: Instant::now(),
            last_draw: None,
        }
    }

    pub fn update(&mut self, done: u64, note: &str) {
        let now = Instant::now();
        if self
            .last_draw
            .is_some_and(|t| now - t < Duration::from_millis(100))
            && Some(done) != self.total
        {
            return;
        }
        self.last_draw = Some(now);
        let rate = done as f64 / self.start.elapsed().as_secs_f64().max(1e-3);
        let bar = match self.total {
            Some(total) if total > 0 => {
                let filled = ((done as f64 / total as f64) * 30.0).round() as usize;
                format!(
                    "[{}{}] {done}/{total}",
                    "#".repeat(filled.min(30)),
                    " ".repeat(30 - filled.min(30))
                )
            }
            _ => format!("{done}"),
        };
        eprint!("\r{} {bar} {rate:.1}/s {note}   ", self.label);
        let _ = std::io::stderr().flush();
    }

    pub fn finish(&mut self, done: u64, note: &str) {
        self.last_draw = None;
        self.update(done, note);
        eprintln!();
    }
}

/// A position persisted after each item, written atomically.
#[derive(Debug)]
pub struct Checkpoint {
    path: Option<PathBuf>,
}

impl Checkpoint {
    pub fn new(path: Option<&Path>) -> Self {
        Self {
            path: path.map(Path::to_path_buf),
        }
    }

    /// The saved position, 0 when there is none.
    pub fn load(&self) -> anyhow::Result<u64> {
        let Some(path) = &self.path else { return Ok(0) };
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(text.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "checkpoint {} is corrupt: delete it to start over",
                    path.display()
                )
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    pub fn save(&self, position: u64) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, position.to_string())?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}
