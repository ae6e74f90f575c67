//! The connection pool: one `deadpool-postgres` pool per store, its connections set up by hooks.

use super::*;

/// A connection pool on `config` with at most `max_size` connections, connecting with `tls`.
pub(super) fn build_pool(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    max_size: usize,
    options: &PostgresOptions,
    session_setup: Option<&'static str>,
) -> Result<Pool> {
    let manager = Manager::from_config(
        config.clone(),
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let mut builder = Pool::builder(manager);
    if let Some(setup) = session_setup {
        builder = builder.post_create(Hook::async_fn(move |client, _| {
            Box::pin(async move {
                client
                    .batch_execute(setup)
                    .await
                    .map_err(HookError::Backend)
            })
        }));
    }
    builder
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(options.wait_timeout))
        .create_timeout(Some(options.connect_timeout))
        .recycle_timeout(Some(options.connect_timeout))
        .build()
        .map_err(|e| Error::Config(format!("cannot build the PostgreSQL pool: {e}")))
}
