//! What the bench binaries share (each includes this file as `mod support`).

#![allow(dead_code)]

/// A numeric environment variable, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p`th percentile (nearest rank) of sorted values; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// User + system CPU seconds in a `/proc/<pid>/stat` line (fields 14 and 15).
fn stat_cpu_seconds(stat: &str) -> f64 {
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    (field(11).unwrap_or(0.0) + field(12).unwrap_or(0.0)) / 100.0
}

/// CPU seconds (user + system) used so far by every nats-server process (Linux; 0 where
/// /proc is missing).
pub fn server_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter(|stat| stat.contains("(nats-server)"))
        .map(|stat| stat_cpu_seconds(&stat))
        .sum()
}

/// CPU seconds (user + system) used so far by this process, all threads.
pub fn own_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .map(|stat| stat_cpu_seconds(&stat))
        .unwrap_or(0.0)
}

/// CPU used by nats-server and by this process between two readings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub server: f64,
    pub own: f64,
}

impl Cpu {
    pub fn now() -> Self {
        Self {
            server: server_cpu_seconds(),
            own: own_cpu_seconds(),
        }
    }

    /// What was used since `self`.
    pub fn spent(&self) -> Self {
        let now = Self::now();
        Self {
            server: now.server - self.server,
            own: now.own - self.own,
        }
    }

    /// Microseconds of server and own CPU per message, for `n` messages.
    pub fn per_message(&self, n: usize) -> String {
        let n = n.max(1) as f64;
        format!(
            "server {:>4.0} us + bench process {:>4.0} us",
            self.server * 1e6 / n,
            self.own * 1e6 / n
        )
    }
}
