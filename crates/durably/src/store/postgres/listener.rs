//! LISTEN/NOTIFY: the listener connection behind [`Store::notifications`], reconnecting on its
//! own.

use super::*;

/// Keeps one connection listening on `channel` until `stop` fires, reconnecting with backoff;
/// after every (re)connect it announces `RunsAvailable` (notices may have been missed).
pub(super) async fn listen_loop(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    channel: String,
    origin: String,
    sender: broadcast::Sender<StoreNotice>,
    stop: CancellationToken,
) {
    let mut failures: u32 = 0;
    loop {
        if stop.is_cancelled() {
            return;
        }
        match listen_once(
            &config,
            &tls,
            &channel,
            &origin,
            &sender,
            &stop,
            &mut failures,
        )
        .await
        {
            Ok(true) => return,
            Ok(false) => failures = failures.saturating_add(1),
            Err(error) => {
                failures = failures.saturating_add(1);
                let error = db_error_text(&error);
                tracing::warn!(%error, "PostgreSQL listener disconnected; reconnecting");
                let _ = sender.send(StoreNotice::StorageFault {
                    operation: "listen".to_owned(),
                    error,
                });
            }
        }
        let wait = Duration::from_millis((50u64 << failures.min(6)).min(2_000));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One listening session: `Ok(true)` when stopped, `Ok(false)` or `Err` when the connection
/// ended.
pub(super) async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    channel: &str,
    origin: &str,
    sender: &broadcast::Sender<StoreNotice>,
    stop: &CancellationToken,
    failures: &mut u32,
) -> std::result::Result<bool, tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls.clone()).await?;
    let (forward, mut payloads) = tokio::sync::mpsc::unbounded_channel::<
        std::result::Result<String, tokio_postgres::Error>,
    >();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    let _ = forward.send(Ok(notification.payload().to_owned()));
                }
                Ok(_) => {}
                Err(error) => {
                    let _ = forward.send(Err(error));
                    return;
                }
            }
        }
    });
    let outcome = async {
        client
            .batch_execute(&format!("LISTEN {}", ident(channel)))
            .await?;
        *failures = 0;
        // Notices may have been missed while not listening.
        let _ = sender.send(StoreNotice::RunsAvailable);
        let _ = sender.send(StoreNotice::WaitsResolved);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(true),
                payload = payloads.recv() => match payload {
                    Some(Ok(payload)) => {
                        let notice = match payload.strip_prefix(NOTICE_CANCEL) {
                            Some(rest) => match rest.split_once(':') {
                                Some((from, _)) if from == origin => None,
                                Some((_, run_id)) => Some(StoreNotice::RunCancelled {
                                    run_id: run_id.to_owned(),
                                }),
                                None => Some(StoreNotice::RunsAvailable),
                            },
                            None if payload == NOTICE_RESUME => Some(StoreNotice::WaitsResolved),
                            None => Some(StoreNotice::RunsAvailable),
                        };
                        if let Some(notice) = notice {
                            let _ = sender.send(notice);
                        }
                    }
                    Some(Err(error)) => return Err(error),
                    None => {
                        // The connection ended without an error message: probe it to get one.
                        client.simple_query("SELECT 1").await?;
                        return Ok(false);
                    }
                },
            }
        }
    }
    .await;
    driver.abort();
    outcome
}

/// Test support: a store in a schema of its own, and a plain client on that schema.
#[cfg(all(test, durably_postgres_tests))]
pub(super) mod test_schema {
    use super::{PostgresOptions, PostgresStore};
    use crate::store::Store;
    use tokio_postgres::NoTls;

    /// A migrated store in a fresh schema, a client whose `search_path` is that schema, and
    /// the schema's name (drop it with [`drop`]).
    pub(in crate::store::postgres) async fn fresh()
    -> (PostgresStore, tokio_postgres::Client, String) {
        let url = std::env::var("DURABLY_TEST_POSTGRES_URL").expect("test database URL");
        let schema = format!("durably_test_{}", crate::new_id().to_lowercase());
        let store = PostgresStore::connect_with(
            &url,
            PostgresOptions::default().schema(Some(schema.clone())),
        )
        .expect("connect");
        store.migrate().await.expect("migrate");
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("SET search_path TO \"{schema}\""))
            .await
            .expect("search path");
        (store, client, schema)
    }

    pub(in crate::store::postgres) async fn drop(client: &tokio_postgres::Client, schema: &str) {
        client
            .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .expect("drop schema");
    }
}
