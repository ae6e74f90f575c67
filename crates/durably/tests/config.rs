//! Builder validation (upstream §1.1): every option is checked by `build()`.
mod common;

use std::time::Duration;

use common::{Backend, TestDb, backend_tests};
use durably::{Durably, Error, Tuning, parse_retention};

fn expect_validation(result: durably::Result<Durably>) -> String {
    match result {
        Err(Error::Validation(message)) => message,
        other => panic!("expected Error::Validation, got {other:?}"),
    }
}

fn expect_config(result: durably::Result<Durably>) -> String {
    match result {
        Err(Error::Config(message)) => message,
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

async fn max_concurrent_runs_out_of_range_is_rejected(backend: Backend) {
    let db = TestDb::new(backend);
    for bad in [0usize, 1001, usize::MAX] {
        let message = expect_validation(db.builder().max_concurrent_runs(bad).build());
        assert!(
            message.contains("max_concurrent_runs must be between 1 and 1000"),
            "message names the range: {message}"
        );
        assert!(
            message.contains(&bad.to_string()),
            "message names the value: {message}"
        );
    }
}

async fn max_concurrent_runs_bounds_are_accepted(backend: Backend) {
    let db = TestDb::new(backend);
    for good in [1usize, 2, 1000] {
        let durably = db
            .builder()
            .max_concurrent_runs(good)
            .build()
            .unwrap_or_else(|e| panic!("{good} accepted: {e}"));
        assert_eq!(durably.config().max_concurrent_runs, good);
    }
}

async fn defaults_are_upstream_defaults(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = Durably::builder()
        .shared_store(db.store.clone())
        .build()
        .expect("defaults build");
    let config = durably.config();
    assert_eq!(config.polling_interval, Duration::from_millis(1000));
    assert_eq!(config.lease_duration, Duration::from_millis(30_000));
    assert_eq!(config.lease_renew_interval, Duration::from_millis(5_000));
    assert_eq!(config.max_concurrent_runs, 1);
    assert!(!config.preserve_steps);
    assert_eq!(config.retain_runs, None);
    assert!(config.persist_logs);
    assert!(config.follow_runs_elsewhere);
    assert_eq!(config.tuning, Tuning::default());
    assert!(config.tuning.trigger_hand_off);
    assert_eq!(config.tuning.claim_ahead_below, Duration::from_millis(100));
}

async fn tuning_is_set_whole_or_by_shortcuts(backend: Backend) {
    let db = TestDb::new(backend);
    let tuning = Tuning::new()
        .trigger_hand_off(false)
        .claim_ahead_below(Duration::ZERO);
    let whole = db.builder().tuning(tuning).build().expect("tuning");
    assert_eq!(whole.config().tuning, tuning);
    let shortcuts = db
        .builder()
        .trigger_hand_off(false)
        .claim_ahead_below(Duration::ZERO)
        .build()
        .expect("shortcuts");
    assert_eq!(shortcuts.config().tuning, tuning);
}

async fn custom_timings_are_accepted(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db
        .builder()
        .polling_interval(Duration::from_millis(2000))
        .lease_renew_interval(Duration::from_millis(10_000))
        .lease_duration(Duration::from_millis(60_000))
        .build()
        .expect("custom timings");
    assert_eq!(
        durably.config().polling_interval,
        Duration::from_millis(2000)
    );
    assert_eq!(
        durably.config().lease_renew_interval,
        Duration::from_millis(10_000)
    );
    assert_eq!(
        durably.config().lease_duration,
        Duration::from_millis(60_000)
    );
}

async fn retain_runs_accepts_days_hours_minutes(backend: Backend) {
    let db = TestDb::new(backend);
    for (text, expected) in [
        ("30d", Duration::from_secs(30 * 86_400)),
        ("12h", Duration::from_secs(12 * 3_600)),
        ("90m", Duration::from_secs(90 * 60)),
        ("0d", Duration::ZERO),
        ("1m", Duration::from_secs(60)),
    ] {
        let durably = db
            .builder()
            .retain_runs(text)
            .build()
            .unwrap_or_else(|e| panic!("{text:?} accepted: {e}"));
        assert_eq!(durably.config().retain_runs, Some(expected), "{text}");
    }
}

async fn retain_runs_rejects_other_forms_with_a_config_error(backend: Backend) {
    let db = TestDb::new(backend);
    for bad in ["invalid", "30s", "10", "d", "1.5h", "-1d", "30 d", "h12"] {
        let message = expect_config(db.builder().retain_runs(bad).build());
        assert!(
            message.contains(&format!("\"{bad}\"")),
            "message names the value {bad:?}: {message}"
        );
        for form in ["'30d'", "'12h'", "'90m'"] {
            assert!(
                message.contains(form),
                "message shows the accepted form {form}: {message}"
            );
        }
        assert!(message.starts_with("Invalid duration format"), "{message}");
    }
}

async fn empty_retain_runs_means_not_set(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db
        .builder()
        .retain_runs("")
        .build()
        .expect("empty accepted");
    assert_eq!(durably.config().retain_runs, None);
}

async fn zero_polling_interval_is_rejected(backend: Backend) {
    let db = TestDb::new(backend);
    let message = expect_validation(db.builder().polling_interval(Duration::ZERO).build());
    assert!(message.contains("polling_interval"), "{message}");
}

async fn zero_lease_timings_are_rejected(backend: Backend) {
    let db = TestDb::new(backend);
    let message = expect_validation(db.builder().lease_duration(Duration::ZERO).build());
    assert!(message.contains("lease_duration"), "{message}");
    let message = expect_validation(db.builder().lease_renew_interval(Duration::ZERO).build());
    assert!(message.contains("lease_renew_interval"), "{message}");
}

async fn building_without_a_store_is_a_config_error(_backend: Backend) {
    let message = expect_config(Durably::builder().build());
    assert!(message.contains("no store configured"), "{message}");
}

async fn parse_retention_is_public(_backend: Backend) {
    assert_eq!(
        parse_retention("30d").expect("30d"),
        Duration::from_secs(30 * 86_400)
    );
    assert_eq!(
        parse_retention("12h").expect("12h"),
        Duration::from_secs(43_200)
    );
    assert_eq!(
        parse_retention("90m").expect("90m"),
        Duration::from_secs(5_400)
    );
    assert_eq!(parse_retention("0d").expect("0d"), Duration::ZERO);
    for bad in [
        "",
        "invalid",
        "30s",
        "10",
        "d",
        "1.5h",
        "99999999999999999999d",
    ] {
        match parse_retention(bad) {
            Err(Error::Config(message)) => {
                assert!(message.contains("'30d', '12h', '90m'"), "{message}")
            }
            other => panic!("{bad:?}: expected Error::Config, got {other:?}"),
        }
    }
}

backend_tests!(
    max_concurrent_runs_out_of_range_is_rejected,
    max_concurrent_runs_bounds_are_accepted,
    defaults_are_upstream_defaults,
    custom_timings_are_accepted,
    tuning_is_set_whole_or_by_shortcuts,
    retain_runs_accepts_days_hours_minutes,
    retain_runs_rejects_other_forms_with_a_config_error,
    empty_retain_runs_means_not_set,
    zero_polling_interval_is_rejected,
    zero_lease_timings_are_rejected,
    building_without_a_store_is_a_config_error,
    parse_retention_is_public,
);
