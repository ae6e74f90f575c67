//! Enqueue requests turned into statement parameters, and how a conflict or an idempotent hit
//! resolves.

use super::*;

/// An enqueue request turned into statement parameters (the id is fixed across retries).
pub(super) struct Prepared {
    pub(super) id: String,
    pub(super) job_name: String,
    pub(super) idempotency_key: Option<String>,
    pub(super) concurrency_key: Option<String>,
    pub(super) input: String,
    pub(super) labels: String,
    pub(super) now: String,
    pub(super) label_keys: Vec<String>,
    pub(super) label_values: Vec<String>,
    pub(super) labels_valid: bool,
    /// The run's priority, NULL for 0 (`rs_priority`).
    pub(super) priority: Option<i32>,
    /// A child run's parent and the parent's wait (`rs_parent_run_id`, `rs_parent_wait_id`).
    pub(super) parent_run_id: Option<String>,
    pub(super) parent_wait_id: Option<String>,
    /// The trace context of the trigger (`rs_trace_context`).
    pub(super) trace_context: Option<String>,
    /// `coalesce: active` with a concurrency key: the statement is [`active_enqueue_sql`], run
    /// after the key's advisory lock ([`ENQUEUE_KEY_LOCK`]) in the same transaction.
    pub(super) active: bool,
}

impl Prepared {
    pub(super) fn new(run: &NewRun, id: String, now: Timestamp) -> Result<Self> {
        let labels_valid = run.labels.keys().all(|key| validate_label_key(key).is_ok());
        if !labels_valid && run.idempotency_key.is_none() {
            // Nothing can make the request idempotent: report the bad key now.
            for key in run.labels.keys() {
                validate_label_key(key)?;
            }
        }
        Ok(Prepared {
            id,
            job_name: run.job_name.clone(),
            idempotency_key: run.idempotency_key.clone(),
            concurrency_key: run.concurrency_key.clone(),
            input: to_json("enqueue", &run.input)?,
            labels: to_json("enqueue", &run.labels)?,
            now: now.to_string(),
            label_keys: run.labels.keys().cloned().collect(),
            label_values: run.labels.values().cloned().collect(),
            labels_valid,
            priority: (run.priority != 0).then_some(run.priority),
            parent_run_id: run.parent_run_id.clone(),
            parent_wait_id: run.parent_wait_id.clone(),
            trace_context: run.trace_context.clone(),
            active: run.coalesce == Some(Coalesce::Active) && run.concurrency_key.is_some(),
        })
    }

    pub(super) fn sql(&self) -> String {
        if self.labels_valid && self.active {
            active_enqueue_sql()
        } else if self.labels_valid {
            enqueue_sql()
        } else {
            idempotency_sql()
        }
    }

    pub(super) fn params<'a>(&'a self, channel: &'a String) -> Vec<&'a (dyn ToSql + Sync)> {
        if !self.labels_valid {
            return vec![&self.job_name, &self.idempotency_key];
        }
        vec![
            &self.job_name,
            &self.idempotency_key,
            &self.concurrency_key,
            &self.id,
            &self.input,
            &self.labels,
            &self.now,
            &self.label_keys,
            &self.label_values,
            channel,
            &self.priority,
            &self.parent_run_id,
            &self.parent_wait_id,
            &self.trace_context,
        ]
    }
}

/// Turns the enqueue statement's rows into the outcome (upstream §5.5). `None`: a concurrent
/// insert won a race (retry). `Some(Err)`: the request is rejected (validation or conflict) and
/// a batch must roll back.
pub(super) fn resolve(
    run: &NewRun,
    prepared: &Prepared,
    rows: &[Row],
) -> std::result::Result<Option<Result<Enqueued>>, Fail> {
    let Some(row) = rows.first() else {
        if !prepared.labels_valid {
            // Not idempotent after all: the bad label key is the answer.
            for key in run.labels.keys() {
                if let Err(error) = validate_label_key(key) {
                    return Ok(Some(Err(error)));
                }
            }
        }
        return Ok(None);
    };
    let kind: i32 = row.try_get(0)?;
    let stored = run_from_row(row, 1)?;
    Ok(Some(match kind {
        0 => Ok(Enqueued {
            run: stored,
            disposition: Disposition::Idempotent,
        }),
        1 => match (&run.coalesce, &run.concurrency_key) {
            (Some(_), _) => Ok(Enqueued {
                run: stored,
                disposition: Disposition::Coalesced,
            }),
            (None, Some(key)) => Err(pending_conflict(&run.job_name, key)),
            (None, None) => Err(conflict_after_retry(run)),
        },
        _ => Ok(Enqueued {
            run: stored,
            disposition: Disposition::Created,
        }),
    }))
}

/// Upstream's message for an enqueue that kept losing races (UPSTREAM §2), naming the key it
/// raced on.
pub(super) fn conflict_after_retry(run: &NewRun) -> Error {
    let key = match (&run.concurrency_key, &run.idempotency_key) {
        (Some(key), _) => format!("concurrency key \"{key}\""),
        (None, Some(key)) => format!("idempotency key \"{key}\""),
        (None, None) => "its keys".to_owned(),
    };
    Error::Conflict(format!(
        "Conflict after retry for {key} in job \"{}\". Concurrent modification detected.",
        run.job_name
    ))
}

/// The error of a batch trigger that kept losing races with concurrent triggers of its keys.
pub(super) fn batch_conflict_after_retry() -> Error {
    Error::Conflict(
        "Conflict after retry for a batch trigger: concurrent triggers kept colliding with its \
         keys. Concurrent modification detected."
            .into(),
    )
}
