//! The store on wasm32 (feature `browser`), where there are no threads: its one connection runs
//! each command inline on the caller's task, a write in a transaction of its own (the writer
//! thread's `commit_batch` with a group of one), a read or direct work outside any. Browsers'
//! SQLite on OPFS allows one connection per database anyway, so there is no reader pool.

use super::*;

/// The one connection and its commit mode.
pub(super) struct InlineWriter {
    conn: Connection,
    sync: CommitSync,
}

/// The store around `conn` (configured).
pub(super) fn open(conn: Connection, options: &SqliteOptions, location: String) -> SqliteStore {
    SqliteStore {
        preserve_steps: options.preserve_steps,
        shared: Arc::new(Shared {
            inline: Mutex::new(InlineWriter {
                conn,
                sync: CommitSync::new(options.synchronous),
            }),
            counters: Arc::new(WriterCounters::default()),
            readers: None,
            location,
        }),
    }
}

impl SqliteStore {
    /// Runs `command` on the connection now; its reply is then waiting in `receiver`.
    pub(super) async fn send<R>(
        &self,
        operation: &'static str,
        command: Command,
        receiver: oneshot::Receiver<Result<R>>,
    ) -> Result<R> {
        {
            // Never contended: the command runs to its end without yielding, on the one thread.
            let mut writer = self
                .shared
                .inline
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let InlineWriter { conn, sync } = &mut *writer;
            match command {
                Command::Direct(work) => work(conn),
                Command::Write(write) => {
                    commit_batch(conn, vec![write], None, sync, &self.shared.counters);
                }
            }
        }
        receiver
            .await
            .map_err(|_| Error::storage(operation, "the SQLite connection dropped the request"))?
    }
}

/// The SQLite VFS name of the OPFS pool that [`SqliteStore::open_opfs`] installs.
#[cfg(feature = "browser")]
const OPFS_VFS: &str = "durably-opfs";

#[cfg(feature = "browser")]
impl SqliteStore {
    /// Opens (creating if needed) the database `name` in the origin's private file system
    /// (OPFS) with default options: it survives page reloads. Only from a dedicated Web Worker
    /// (OPFS's sync access handles exist nowhere else), and one connection per database: a
    /// second worker (another tab) opening the same database fails until the first closes it.
    /// Available on wasm32 with feature `browser`.
    pub async fn open_opfs(name: &str) -> Result<Self> {
        Self::open_opfs_with(name, SqliteOptions::default()).await
    }

    /// [`SqliteStore::open_opfs`] with `options` (the database has no WAL: OPFS journals with
    /// a rollback journal).
    pub async fn open_opfs_with(name: &str, options: SqliteOptions) -> Result<Self> {
        use sqlite_wasm_vfs::sahpool::{OpfsSAHPoolCfgBuilder, install};
        let pool = OpfsSAHPoolCfgBuilder::new()
            .vfs_name(OPFS_VFS)
            .directory(".durably")
            .build();
        install::<sqlite_wasm_rs::WasmOsCallback>(&pool, false)
            .await
            .map_err(|e| Error::storage("open", opfs_open_error(name, &e)))?;
        Self::open_in_vfs(Path::new(name), options, Some(OPFS_VFS))
    }
}

/// Why opening the OPFS pool for database `name` failed, and what to do: the browser refuses a
/// sync access handle on a file another one holds (`NoModificationAllowedError`), which is
/// another worker of the origin (another tab, or this page's worker before a reload, not yet
/// ended) holding the pool; the library says when OPFS is not available at all.
#[cfg(feature = "browser")]
fn opfs_open_error(name: &str, error: &sqlite_wasm_vfs::sahpool::OpfsSAHError) -> String {
    use sqlite_wasm_vfs::sahpool::OpfsSAHError;
    match error {
        OpfsSAHError::Opfs { message, .. }
            if message.contains("NoModificationAllowedError")
                || message.contains("Access Handles cannot be created") =>
        {
            format!(
                "cannot open {name}: the origin's private file system (OPFS) pool is held by \
                 another worker of this site (another tab, or this page's worker before a reload, \
                 not ended yet); one worker per origin can hold it: close the other tab, or open \
                 again once it is released ({message})"
            )
        }
        OpfsSAHError::NotSupported => format!(
            "cannot open {name}: {error} (open it from a dedicated Web Worker of a page served \
             over https or from localhost)"
        ),
        _ => format!("cannot open the origin's private file system for {name}: {error}"),
    }
}
