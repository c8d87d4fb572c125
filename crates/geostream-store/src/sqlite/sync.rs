//! The sync thread of [`Synchronous::Full`](super::Synchronous::Full): makes committed
//! groups durable with `fdatasync` on the WAL, then answers them.
//!
//! The writer commits a group (its frames are written to the WAL, in the OS page cache)
//! and hands the group's answers here; while this thread waits for the disk, the writer
//! already builds and commits the next group. One `fdatasync` started after a group's
//! COMMIT returned covers that group and every group committed before it, so when several
//! groups are waiting, one sync answers them all. Nothing is answered before the sync that
//! covers it has returned successfully: that is the durability promise.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use super::writer::Job;
use crate::{Result, StoreError};

/// The WAL file this thread syncs, and its identity when it was opened.
struct Wal {
    path: PathBuf,
    file: Option<(File, FileId)>,
}

#[cfg(unix)]
type FileId = (u64, u64);
#[cfg(not(unix))]
type FileId = ();

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> FileId {}

impl Wal {
    /// Syncs the WAL's data to disk.
    ///
    /// The file is reopened whenever the path names another file than the one held: SQLite
    /// deletes and recreates the WAL only when every connection has closed it, which the
    /// writer's open connection prevents, but a sync of a stale file would silently promise
    /// nothing, so the identity is checked on every sync (one `stat`).
    fn sync(&mut self) -> Result<()> {
        let err = |e: std::io::Error| {
            StoreError::Unavailable(format!("cannot sync {}: {e}", self.path.display()))
        };
        let meta = std::fs::metadata(&self.path).map_err(err)?;
        let id = file_id(&meta);
        let stale = self.file.as_ref().is_none_or(|(_, held)| *held != id);
        if stale {
            // A read-only descriptor is enough: fdatasync applies to the file, not the fd.
            let file = File::open(&self.path).map_err(err)?;
            self.file = Some((file, id));
        }
        match &self.file {
            Some((file, _)) => file.sync_data().map_err(err),
            None => Err(StoreError::Unavailable("the WAL file is not open".into())),
        }
    }
}

/// The thread's loop: take every group waiting, sync once, answer them all.
pub(crate) fn run(db_path: &Path, groups: mpsc::Receiver<Vec<Box<dyn Job>>>) {
    let mut wal_path = db_path.as_os_str().to_owned();
    wal_path.push("-wal");
    let mut wal = Wal {
        path: PathBuf::from(wal_path),
        file: None,
    };
    while let Ok(first) = groups.recv() {
        let mut waiting = vec![first];
        waiting.extend(groups.try_iter());
        let synced = wal.sync();
        if let Err(e) = &synced {
            // The groups are committed but maybe not on disk: their callers get an error
            // and may retry (op ids make that safe).
            tracing::error!(error = %e, "Syncing the SQLite WAL failed.");
        }
        for job in waiting.into_iter().flatten() {
            job.finish(&synced);
        }
    }
    tracing::debug!("SQLite sync thread stopped.");
}
