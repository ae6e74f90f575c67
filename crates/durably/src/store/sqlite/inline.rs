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
