//! Opening SQLite connections with the store's settings.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::options::StoreOptions;
use crate::error::{CoreError, Result};

/// For connections that only read: reads through a memory map skip one copy of every page
/// (read() into SQLite's cache). Not for the writer, whose process would then count every
/// page it touches as resident memory.
pub const READ_PRAGMAS: &str = "PRAGMA mmap_size = 1099511627776;";

/// Why a store needs to write: every open may convert or upgrade the schema, and a WAL
/// database's readers keep `-wal` and `-shm` files beside it.
const NEEDS_WRITE: &str = "attnfast opens every database for writing (its schema, and the -wal \
                           and -shm files beside it); make it writable, or copy it somewhere that is";

/// Refuses a database file that cannot be written, before SQLite touches it: a read-only
/// connection to a WAL database would create `-wal` and `-shm` files, then fail at the first
/// write with SQLite's "attempt to write a readonly database", which names no file.
pub fn refuse_read_only(path: &Path) -> Result<()> {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(CoreError::Store(format!(
                "cannot open {}: the file is read-only; {NEEDS_WRITE}",
                path.display()
            )))
        }
        _ => Ok(()), // missing files are created, other errors are SQLite's to report
    }
}

fn open_error(path: &Path, e: rusqlite::Error) -> CoreError {
    let hint = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ReadOnly) => format!("; {NEEDS_WRITE}"),
        _ => String::new(),
    };
    CoreError::Store(format!("cannot open {}: {e}{hint}", path.display()))
}

/// Opens a connection to `path` (created if missing) in WAL mode with the store's PRAGMAs.
pub fn open(path: &Path, opts: &StoreOptions) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    conn.busy_timeout(opts.busy_timeout)?;
    // The first statement reads the file header: a file that is not a database fails here.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| open_error(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(CoreError::Store(format!(
            "{} could not be switched to WAL mode (journal_mode is {mode})",
            path.display()
        )));
    }
    // The seed's PRAGMAs, plus a cap on the WAL file left behind after a checkpoint (64 MB).
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {};
         PRAGMA cache_size = -64000;
         PRAGMA temp_store = MEMORY;
         PRAGMA foreign_keys = OFF;
         PRAGMA journal_size_limit = 67108864;",
        opts.synchronous.pragma()
    ))?;
    Ok(conn)
}

/// A read-only connection (for readers running beside the store's own connections).
pub fn open_reader(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| CoreError::Store(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(60))?;
    conn.execute_batch(READ_PRAGMAS)?;
    Ok(conn)
}
