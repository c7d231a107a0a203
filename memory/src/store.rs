//! Opening a sled database: the one place that knows how sled reports a held lock.

use std::path::Path;
use std::time::{Duration, Instant};

/// How long [`open_db`] waits for a lock held by a closing handle.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens (or creates) the sled database at `path`, waiting up to `wait` while its lock
/// is held. sled 0.34 releases a database's file lock only when the last of its
/// background threads lets go of the file, which can be after the last `Db` handle was
/// dropped: reopening at once in the same process (a worker restarted in place, a test)
/// then fails with "could not acquire lock" although nobody uses the database any more.
/// A lock still held after `wait` is another process's, and the error says so.
pub fn open_db(path: &Path, wait: Duration) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + wait;
    loop {
        match sled::open(path) {
            Err(e) if is_lock_held(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Whether sled refused to open because another handle holds the file lock.
pub fn is_lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_database_is_refused_after_the_wait_and_a_closed_one_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_db(dir.path(), LOCK_WAIT).expect("open");
        db.insert("k", "v").expect("insert");
        let started = Instant::now();
        let held = open_db(dir.path(), Duration::from_millis(200)).expect_err("locked");
        assert!(is_lock_held(&held), "{held}");
        assert!(started.elapsed() >= Duration::from_millis(200), "waited");
        drop(db);
        let db = open_db(dir.path(), LOCK_WAIT).expect("reopen");
        assert_eq!(db.get("k").expect("get").as_deref(), Some(&b"v"[..]));
    }
}
