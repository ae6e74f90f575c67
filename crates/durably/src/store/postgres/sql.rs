//! The SQL text of the claim, the enqueue and the listings, written once for every caller
//! (the store and its batches).

use super::*;

/// Notification payload: runs may be claimable.
pub(super) const NOTICE_RUNS: &str = "runs";
/// Notification payload prefix: `cancel:<origin store>:<run id>`.
/// The payload of the notice that a durable wait was resolved.
pub(super) const NOTICE_RESUME: &str = "resume";
pub(super) const NOTICE_CANCEL: &str = "cancel:";

/// One enqueue as one statement: the run's own earlier commit (a retry) → idempotency key →
/// oldest pending run of the job+key → insert (with its labels, and a `NOTIFY`).
/// `kind`: 0 idempotent, 1 a run of the key to reuse (or conflict with) exists, 2 created.
pub(super) fn enqueue_sql() -> String {
    enqueue_sql_reusing(&format!(
        "SELECT {RUN_COLUMNS} FROM durably_runs WHERE $3::text IS NOT NULL \
           AND job_name = $1 AND concurrency_key = $3 AND status = 'pending' \
           AND NOT EXISTS (SELECT 1 FROM mine) AND NOT EXISTS (SELECT 1 FROM idem) \
           ORDER BY created_at ASC, id ASC LIMIT 1"
    ))
}

/// [`enqueue_sql`] for `coalesce: active` (upstream v4 §7.1): the run reused (`kind` 1) is the
/// oldest pending run of the job+key, else the oldest leased one whose lease expires after the
/// trigger's time (`$7`), else the oldest waiting one. Run after the key's advisory lock
/// ([`ENQUEUE_KEY_LOCK`]), in a statement of its own, so its snapshot sees every run committed
/// by whoever held the lock before.
pub(super) fn active_enqueue_sql() -> String {
    let pick = |status_condition: &str| {
        format!(
            "(SELECT {RUN_COLUMNS} FROM durably_runs WHERE job_name = $1 AND concurrency_key = $3 \
               AND {status_condition} ORDER BY created_at ASC, id ASC LIMIT 1)"
        )
    };
    enqueue_sql_reusing(&format!(
        "SELECT {RUN_COLUMNS} FROM (\
           SELECT 0 AS tier, * FROM {pending} a \
           UNION ALL SELECT 1, * FROM {leased} b \
           UNION ALL SELECT 2, * FROM {waiting} c) t \
         WHERE $3::text IS NOT NULL \
           AND NOT EXISTS (SELECT 1 FROM mine) AND NOT EXISTS (SELECT 1 FROM idem) \
         ORDER BY tier LIMIT 1",
        pending = pick("status = 'pending'"),
        leased = pick(
            "status = 'leased' AND lease_expires_at IS NOT NULL AND lease_expires_at > $7::text"
        ),
        waiting = pick("status = 'waiting'"),
    ))
}

/// The enqueue statement whose `pend` CTE (the run of the key that stops the insert) is
/// `reuse`, a query over `mine` and `idem` returning [`RUN_COLUMNS`].
fn enqueue_sql_reusing(reuse: &str) -> String {
    format!(
        "WITH mine AS (SELECT {RUN_COLUMNS} FROM durably_runs WHERE id = $4), \
         idem AS (SELECT {RUN_COLUMNS} FROM durably_runs WHERE $2::text IS NOT NULL \
           AND job_name = $1 AND idempotency_key = $2 AND NOT EXISTS (SELECT 1 FROM mine)), \
         pend AS ({reuse}), \
         ins AS (INSERT INTO durably_runs (id, job_name, input, status, idempotency_key, \
           concurrency_key, labels, current_step_index, completed_step_count, lease_generation, \
           created_at, updated_at, rs_priority, rs_parent_run_id, rs_parent_wait_id, rs_trace_context) \
           SELECT $4::text, $1::text, $5::text, 'pending', $2::text, $3::text, $6::text, 0, 0, 0, \
           $7::text, $7::text, $11::integer, $12::text, $13::text, $14::text WHERE NOT EXISTS (SELECT 1 FROM mine) \
           AND NOT EXISTS (SELECT 1 FROM idem) AND NOT EXISTS (SELECT 1 FROM pend) \
           ON CONFLICT DO NOTHING RETURNING {RUN_COLUMNS}), \
         lab AS (INSERT INTO durably_run_labels (run_id, key, value) \
           SELECT ins.id, l.k, l.v FROM ins, unnest($8::text[], $9::text[]) AS l(k, v)), \
         note AS (SELECT pg_notify($10::text, '{NOTICE_RUNS}') FROM ins LIMIT 1) \
         SELECT 2 AS kind, {RUN_COLUMNS} FROM mine \
         UNION ALL SELECT 0, {RUN_COLUMNS} FROM idem \
         UNION ALL SELECT 1, {RUN_COLUMNS} FROM pend \
         UNION ALL SELECT 2, {RUN_COLUMNS} FROM ins WHERE (SELECT count(*) FROM note) >= 0"
    )
}

/// Upstream v4 §7.2: the transaction advisory lock of a concurrency key (`$1`), the lock a
/// claim *tries* for the key ([`lock_claim_keys_sql`]), taken before an `active` enqueue.
pub(super) const ENQUEUE_KEY_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext($1::text))";

/// Upstream v4 §7.2: the advisory locks of a batch's distinct concurrency keys (`$1`), taken
/// in ascending lock-id order (so two batches cannot deadlock) before its first insert. The
/// sorted subquery is not flattened, so the locks are taken in its order.
pub(super) const ENQUEUE_BATCH_KEY_LOCKS: &str = "SELECT count(pg_advisory_xact_lock(l.h)) \
     FROM (SELECT DISTINCT hashtext(t.k) AS h FROM unnest($1::text[]) AS t(k) ORDER BY 1) l";

/// Only the idempotency lookup (a request whose labels are invalid may still be idempotent).
pub(super) fn idempotency_sql() -> String {
    format!(
        "SELECT 0 AS kind, {RUN_COLUMNS} FROM durably_runs WHERE job_name = $1 AND idempotency_key = $2"
    )
}

/// The parameter values of a `get_runs` statement that are computed from its filter.
pub(super) struct RunsValues<'a> {
    pub(super) limit: Option<i64>,
    pub(super) offset: i64,
    /// Runs taken from each status slice of a page: `limit + offset`.
    pub(super) per_status: i64,
    /// The statuses asked for, or all of them.
    pub(super) statuses: Vec<&'static str>,
    /// The label filters' keys and values, in the same order.
    pub(super) label_keys: Vec<&'a str>,
    pub(super) label_values: Vec<&'a str>,
    pub(super) label_count: i64,
    /// The time range's bounds as stored text (`created_at` is text in chronological order).
    pub(super) created_since: Option<String>,
    pub(super) created_before: Option<String>,
}

impl<'a> RunsValues<'a> {
    pub(super) fn new(filter: &'a RunFilter) -> Self {
        let limit = filter.limit.map(|l| l.min(i64::MAX as u64) as i64);
        let offset = filter.offset.unwrap_or(0).min(i64::MAX as u64) as i64;
        // Each status once, whatever the filter repeats.
        let statuses = RunStatus::ALL
            .into_iter()
            .filter(|status| filter.statuses.is_empty() || filter.statuses.contains(status))
            .map(|status| status.as_str())
            .collect();
        RunsValues {
            limit,
            offset,
            per_status: limit.unwrap_or(0).saturating_add(offset),
            statuses,
            label_keys: filter.labels.keys().map(String::as_str).collect(),
            label_values: filter.labels.values().map(String::as_str).collect(),
            label_count: filter.labels.len() as i64,
            created_since: filter.created_since.map(|t| t.stored_text()),
            created_before: filter.created_before.map(|t| t.stored_text()),
        }
    }
}

/// The statement listing the runs `filter` selects, newest first, with its parameters.
pub(super) fn runs_query<'a>(
    filter: &'a RunFilter,
    values: &'a RunsValues<'a>,
) -> (String, Vec<&'a (dyn ToSql + Sync)>) {
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    // The job-name and label conditions, shared by both query shapes below.
    let mut conditions = String::new();
    if !filter.job_names.is_empty() {
        params.push(&filter.job_names);
        conditions.push_str(&format!(" AND r.job_name = ANY(${}::text[])", params.len()));
    }
    // The statement's text depends on whether there are no, one or several labels, never on
    // how many: their keys and values go in as two arrays. Planning stays constant (one
    // `EXISTS` per label made planning grow explosively: 100 labels took 1.1 s, 300 took 54 s)
    // and execution linear: the first label is an `EXISTS` the planner may drive the query
    // from (the `(key, value)` index); then the labels of each candidate run, read through
    // the `(run_id, key)` index whatever the table's statistics say, are compared with the
    // filter value of their key, and all must be there.
    if let Some(parent) = &filter.parent_run_id {
        params.push(parent);
        conditions.push_str(&format!(" AND r.rs_parent_run_id = ${}", params.len()));
    }
    if let Some(prefix) = filter.id_prefix.as_ref().filter(|p| !p.is_empty()) {
        // compared as text, whatever the database's collation (a range would follow it)
        params.push(prefix);
        let n = params.len();
        conditions.push_str(&format!(" AND left(r.id, char_length(${n})) = ${n}"));
    }
    if let Some(since) = &values.created_since {
        params.push(since);
        conditions.push_str(&format!(" AND r.created_at >= ${}", params.len()));
    }
    if let Some(before) = &values.created_before {
        params.push(before);
        conditions.push_str(&format!(" AND r.created_at < ${}", params.len()));
    }
    if let (Some(key), Some(value)) = (values.label_keys.first(), values.label_values.first()) {
        params.push(key);
        params.push(value);
        conditions.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM durably_run_labels l WHERE l.run_id = r.id \
             AND l.key = ${} AND l.value = ${})",
            params.len() - 1,
            params.len()
        ));
    }
    if values.label_count > 1 {
        params.push(&values.label_keys);
        params.push(&values.label_values);
        params.push(&values.label_count);
        conditions.push_str(&format!(
            " AND (SELECT count(*) FROM durably_run_labels l WHERE l.run_id = r.id \
             AND l.value = (${}::text[])[array_position(${}::text[], l.key)]) = ${}::bigint",
            params.len() - 1,
            params.len() - 2,
            params.len()
        ));
    }
    let order = "ORDER BY created_at DESC, id DESC";
    let sql = if values.limit.is_some() {
        // A page: schema v1 has no index on `created_at` alone, so instead of sorting every
        // matching run (a parallel sequential scan of the table: 100 ms for 220,000 runs), take
        // the newest `offset + limit` of each status from its `(status, created_at)` index slice
        // (the pending ones from durably's own pending-order index) and merge those few.
        params.push(&values.per_status);
        let per_status = params.len();
        // Each status is written into the statement (they are the fixed `RunStatus` names),
        // so the planner of the pending slice sees that its partial index applies.
        let parts: Vec<String> = values
            .statuses
            .iter()
            .map(|status| {
                format!(
                    "(SELECT {RUN_COLUMNS} FROM durably_runs r WHERE r.status = '{status}'\
                     {conditions} ORDER BY r.created_at DESC, r.id DESC \
                     LIMIT ${per_status}::bigint)"
                )
            })
            .collect();
        params.push(&values.limit);
        params.push(&values.offset);
        format!(
            "SELECT {RUN_COLUMNS} FROM ({}) r {order} LIMIT ${}::bigint OFFSET ${}::bigint",
            parts.join(" UNION ALL "),
            params.len() - 1,
            params.len()
        )
    } else {
        // Everything from `offset` on: one query.
        if !filter.statuses.is_empty() {
            params.push(&values.statuses);
            conditions.push_str(&format!(" AND r.status = ANY(${}::text[])", params.len()));
        }
        params.push(&values.offset);
        format!(
            "SELECT {RUN_COLUMNS} FROM durably_runs r WHERE true{conditions} {order} \
             OFFSET ${}::bigint",
            params.len()
        )
    };
    (sql, params)
}

/// A run's key is free when no *other* run holding that key has an unexpired lease at `now`
/// (a placeholder), leaving out leases that `ending` (SQL over `o`, or empty) says end with the
/// statement.
pub(super) fn key_is_free(now: &str, ending: &str) -> String {
    format!(
        "(r.concurrency_key IS NULL OR NOT EXISTS (SELECT 1 FROM durably_runs o \
         WHERE o.status = 'leased' AND o.concurrency_key = r.concurrency_key AND o.id <> r.id \
         AND o.lease_expires_at IS NOT NULL AND o.lease_expires_at > {now}{ending}))"
    )
}

/// Claim, first statement: the oldest `$2` claimable runs (locked, skipping runs other claimers
/// hold); those without a concurrency key are leased at once. Returns one row per candidate:
/// `(has_key, candidate id, key, leased run columns or NULLs)`.
/// With `resume`, it also resumes waiting runs ([`crate::store::ClaimRequest::resume_waiting`]).
pub(super) fn claim_sql(resume: bool) -> String {
    claim_sql_when("", resume)
}

/// [`claim_sql`] that claims only if the run with id `$5` exists: in the transaction of an
/// enqueue, only when that enqueue inserted its run.
/// With `resume`, it also resumes waiting runs ([`crate::store::ClaimRequest::resume_waiting`]).
pub(super) fn claim_after_insert_sql(resume: bool) -> String {
    claim_sql_when(
        " AND EXISTS (SELECT 1 FROM durably_runs n WHERE n.id = $5)",
        resume,
    )
}

pub(super) fn claim_sql_when(condition: &str, resume: bool) -> String {
    let leased = run_columns("won");
    let nulls = vec!["NULL"; run_column_count()].join(", ");
    format!(
        "WITH {} SELECT false AS keyed, won.id AS candidate, NULL::text AS concurrency_key, {leased}, \
           COALESCE(won.rs_priority, 0) AS prio, won.created_at AS created_order FROM won \
         UNION ALL SELECT true, c.id, c.concurrency_key, {nulls}, c.prio, c.created_at \
           FROM c WHERE c.concurrency_key IS NOT NULL \
         ORDER BY prio DESC, created_order ASC, candidate ASC",
        claim_ctes(&ClaimPlaceholders::numbered_from(1, ""), condition, resume)
    )
}

/// Where a claim's parameters are in its statement.
pub(super) struct ClaimPlaceholders {
    pub now: String,
    pub limit: String,
    pub worker: String,
    pub expires: String,
    /// A condition over `o` (after `AND`, or empty) true of runs whose leases end with the
    /// statement: their keys count as free when picking keyed candidates (which only the keyed
    /// claim, under the keys' locks and in a later snapshot, leases).
    pub ending: &'static str,
}

impl ClaimPlaceholders {
    /// Parameters `$first` now, then limit, worker and lease expiry.
    pub(super) fn numbered_from(first: usize, ending: &'static str) -> Self {
        let number = |offset: usize| format!("${}", first + offset);
        ClaimPlaceholders {
            now: number(0),
            limit: number(1),
            worker: number(2),
            expires: number(3),
            ending,
        }
    }
}

/// A run's claim priority (aliased `r`): NULL is 0. The expression of durably's index of
/// pending keyed runs (`durably_rs_runs_pending_key_priority_order`).
const PRIORITY: &str = "COALESCE(r.rs_priority, 0)";

/// The claim order of runs aliased `r`: priority first, then age, then id.
pub(super) const CLAIM_ORDER: &str =
    "ORDER BY COALESCE(r.rs_priority, 0) DESC, r.created_at ASC, r.id ASC";

/// The columns of a claim candidate: `id, concurrency_key, created_at, prio`.
const CANDIDATE: &str = "r.id, r.concurrency_key, r.created_at, COALESCE(r.rs_priority, 0) AS prio";

/// The common table expressions of a claim (`pp`, `p`, `e`, `c`, `won`), for a `WITH` list: `c` holds
/// the first `limit` claimable runs in claim order ([`CLAIM_ORDER`]) that match `condition` (locked, skipping runs other
/// claimers hold), `won` those of them without a concurrency key, leased. With `resume`, also
/// `w` (waiting runs whose wait is resolved) and `fr` (their waits' first resume time);
/// without, the statement never reads the waits table.
pub(super) fn claim_ctes(at: &ClaimPlaceholders, condition: &str, resume: bool) -> String {
    let returning = run_columns("r");
    let ClaimPlaceholders {
        now,
        limit,
        worker,
        expires,
        ending,
    } = at;
    let key_is_free = key_is_free(now, ending);
    // Pending runs in two lookups: those of a priority other than 0 (durably's partial index
    // `durably_rs_runs_pending_priority_order`, empty unless priorities are used), and those of
    // priority 0 (`durably_rs_runs_pending_order`), so that runs of priority 0 cost no upkeep
    // of a second index.
    let pending_and_expired = format!(
        "pp AS (SELECT r.id, r.concurrency_key, r.created_at, r.rs_priority AS prio \
           FROM durably_runs r \
           WHERE r.status = 'pending' AND r.rs_priority IS NOT NULL AND {key_is_free}{condition} \
           ORDER BY r.rs_priority DESC, r.created_at ASC, r.id ASC LIMIT {limit} \
           FOR UPDATE OF r SKIP LOCKED), \
         p AS (SELECT r.id, r.concurrency_key, r.created_at, 0 AS prio FROM durably_runs r \
           WHERE r.status = 'pending' AND r.rs_priority IS NULL AND {key_is_free}{condition} \
           ORDER BY r.created_at ASC, r.id ASC LIMIT {limit} FOR UPDATE OF r SKIP LOCKED), \
         e AS (SELECT {CANDIDATE} FROM durably_runs r \
           WHERE r.status = 'leased' AND r.lease_expires_at IS NOT NULL \
           AND r.lease_expires_at <= {now} AND {key_is_free}{condition} \
           {CLAIM_ORDER} LIMIT {limit} FOR UPDATE OF r SKIP LOCKED)"
    );
    let lease = format!(
        "status = 'leased', lease_owner = {worker}, lease_expires_at = {expires}, \
         lease_generation = r.lease_generation + 1, started_at = COALESCE(r.started_at, {now})"
    );
    if !resume {
        return format!(
            "{pending_and_expired}, \
             c AS (SELECT id, concurrency_key, created_at, prio FROM \
               (SELECT * FROM pp UNION ALL SELECT * FROM p UNION ALL SELECT * FROM e) a \
               ORDER BY prio DESC, created_at ASC, id ASC LIMIT {limit}), \
             won AS (UPDATE durably_runs r SET {lease}, updated_at = {now} \
               FROM c WHERE r.id = c.id AND c.concurrency_key IS NULL RETURNING {returning})"
        );
    }
    format!(
        "{pending_and_expired}, \
         w AS (SELECT {CANDIDATE} FROM {RESUMABLE_RUNS} \
           AND {key_is_free}{condition} \
           {CLAIM_ORDER} LIMIT {limit} FOR UPDATE OF r SKIP LOCKED), \
         c AS (SELECT id, concurrency_key, created_at, prio FROM \
           (SELECT * FROM pp UNION ALL SELECT * FROM p UNION ALL SELECT * FROM e \
             UNION ALL SELECT * FROM w) a \
           ORDER BY prio DESC, created_at ASC, id ASC LIMIT {limit}), \
         won AS (UPDATE durably_runs r SET {lease}, {RESUME_CLAIMED_AT}, updated_at = {now} \
           FROM c WHERE r.id = c.id AND c.concurrency_key IS NULL \
           RETURNING {returning}, r.resume_claimed_at AS resumed_at), \
         {FIRST_RESUMED}"
    )
}

/// The waiting runs (aliased `r`) whose wait is resolved (v4 §3.3), found from the waits
/// resolved and not yet resumed from (durably's partial index `durably_rs_waits_resumable`), a
/// set as small as the resume backlog: `FROM` and `WHERE` of a query, to go on with `AND`.
///
/// A run waits on a resolved wait with `first_resumed_at` set only if it suspended on a wait
/// it had already been resumed from, which no runtime does: a resumed run reads the wait's
/// outcome instead of suspending again. [`RESOLVED_WAIT`] asks the same of one run.
const RESUMABLE_RUNS: &str = "durably_waits rw JOIN durably_runs r \
     ON r.id = rw.run_id AND r.waiting_on_wait_id = rw.id \
     WHERE rw.status = 'resolved' AND rw.first_resumed_at IS NULL AND r.status = 'waiting'";

/// A waiting run (aliased `r`) whose wait is resolved: claimable (v4 §3.3).
pub(super) const RESOLVED_WAIT: &str = "EXISTS (SELECT 1 FROM durably_waits rw \
     WHERE rw.id = r.waiting_on_wait_id AND rw.status = 'resolved')";

/// The database's clock in milliseconds since the epoch (v4 §4.7).
pub(super) const DATABASE_NOW_MS: &str =
    "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// A claim's `SET` of `resume_claimed_at` (of `r`, before the update): a waiting run resumed
/// records when, unless a claim since its suspension did.
const RESUME_CLAIMED_AT: &str = concat!(
    "resume_claimed_at = CASE WHEN r.status = 'waiting' THEN COALESCE(r.resume_claimed_at, ",
    "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
    ") ELSE r.resume_claimed_at END"
);

/// After a claim CTE `won` (returning `waiting_on_wait_id` and `resumed_at`): the first resume
/// time onto each resumed run's resolved wait, once.
const FIRST_RESUMED: &str = "fr AS (UPDATE durably_waits fw SET first_resumed_at = won.resumed_at \
     FROM won WHERE fw.id = won.waiting_on_wait_id AND fw.status = 'resolved' \
     AND fw.first_resumed_at IS NULL AND won.resumed_at IS NOT NULL)";

/// The transaction-local setting that carries a claim's keyed candidates, as a JSON array of
/// keys, from the statement that finds them to the one that locks them and the one that leases
/// their runs: the three can then be sent at once (pipelined), each reading what the one before
/// wrote.
pub(super) const CLAIM_KEYS: &str = "durably.claim_keys";

/// The keys in [`CLAIM_KEYS`] (`'[]'` when unset), as JSON.
pub(super) fn claim_keys_json() -> String {
    format!("COALESCE(NULLIF(current_setting('{CLAIM_KEYS}', true), ''), '[]')::json")
}

/// Claim, keyed runs: the transaction advisory lock of each key, *tried*; [`CLAIM_KEYS`] keeps
/// the keys whose lock this transaction now holds. The keys are `$1` (a JSON array), or the
/// setting when `$1` is NULL. A key whose lock another claimer holds is being claimed by it;
/// waiting would hold the locks taken so far meanwhile, and the TypeScript runtime's claim
/// takes a key's lock while it holds other keys' locks and a run's row lock, so waiting could
/// close a deadlock. Never waiting for a lock nor a row, a claim cannot be part of one.
pub(super) fn lock_claim_keys_sql() -> String {
    let keys = claim_keys_json();
    format!(
        "SELECT set_config('{CLAIM_KEYS}', COALESCE((SELECT json_agg(t.k)::text \
           FROM json_array_elements_text(COALESCE($1::text::json, {keys})) AS t(k) \
           WHERE pg_try_advisory_xact_lock(hashtext(t.k))), '[]'), true)"
    )
}

/// Claim, keyed runs, after [`lock_claim_keys_sql`] in the same transaction (a statement of its
/// own, so its fresh snapshot sees every lease committed by whoever held a lock before): for
/// each locked key that no unexpired lease holds, lease its first claimable run in claim order
/// (runs sharing a key go by priority, then oldest first, across job names). `$1` worker, `$2`
/// lease expiry, `$3` now.
///
/// A key's first pending run comes from durably's index
/// `durably_rs_runs_pending_key_priority_order`. A run whose row
/// another claimer holds locked is skipped (`SKIP LOCKED`), its key left for this round, never
/// waited for: the TypeScript runtime's claim locks a run's row *before* it takes the key's
/// advisory lock, so waiting for that row while holding the key's lock is a deadlock
/// (PostgreSQL aborts one of the two claims; tests/interop.rs found it). That claimer leases the
/// run, or the worker looks again.
///
/// With `resume`, a key's oldest resolved waiting run is a candidate too.
pub(super) fn claim_keyed_sql(resume: bool) -> String {
    let returning = run_columns("r");
    let won_columns = run_columns("won");
    let keys = claim_keys_json();
    let (claimable, waiting, resumed) = match resume {
        true => (
            format!(
                "(r.status = 'pending' \
                   OR (r.status = 'leased' AND r.lease_expires_at IS NOT NULL \
                     AND r.lease_expires_at <= $3) \
                   OR (r.status = 'waiting' AND {RESOLVED_WAIT}))"
            ),
            format!(
                "UNION ALL \
                 (SELECT r.id, r.created_at, {PRIORITY} AS prio FROM durably_runs r \
                   WHERE r.status = 'waiting' AND r.concurrency_key = l.k AND {RESOLVED_WAIT} \
                   {CLAIM_ORDER} LIMIT 1)"
            ),
            (
                format!(", {RESUME_CLAIMED_AT}"),
                ", r.resume_claimed_at AS resumed_at",
                format!(", {FIRST_RESUMED}"),
            ),
        ),
        false => (
            "(r.status = 'pending' \
               OR (r.status = 'leased' AND r.lease_expires_at IS NOT NULL \
                 AND r.lease_expires_at <= $3))"
                .to_owned(),
            String::new(),
            (String::new(), "", String::new()),
        ),
    };
    let (set_resumed, returning_resumed, first_resumed) = resumed;
    format!(
        "WITH locked AS (SELECT DISTINCT t.k FROM json_array_elements_text({keys}) AS t(k)), \
         oldest AS (SELECT x.id FROM locked l CROSS JOIN LATERAL ( \
             SELECT y.id, y.created_at FROM ( \
               (SELECT r.id, r.created_at, {PRIORITY} AS prio FROM durably_runs r \
                 WHERE r.status = 'pending' AND r.concurrency_key = l.k \
                 {CLAIM_ORDER} LIMIT 1) \
               UNION ALL \
               (SELECT r.id, r.created_at, {PRIORITY} AS prio FROM durably_runs r \
                 WHERE r.status = 'leased' AND r.concurrency_key = l.k \
                 AND r.lease_expires_at IS NOT NULL AND r.lease_expires_at <= $3 \
                 {CLAIM_ORDER} LIMIT 1) \
               {waiting}) y \
             ORDER BY y.prio DESC, y.created_at ASC, y.id ASC LIMIT 1) x \
           WHERE NOT EXISTS (SELECT 1 FROM durably_runs o WHERE o.status = 'leased' \
             AND o.concurrency_key = l.k AND o.id <> x.id \
             AND o.lease_expires_at IS NOT NULL AND o.lease_expires_at > $3)), \
         pick AS (SELECT r.id FROM durably_runs r WHERE r.id IN (SELECT id FROM oldest) \
           AND {claimable} FOR UPDATE OF r SKIP LOCKED), \
         won AS (UPDATE durably_runs r SET status = 'leased', lease_owner = $1, \
           lease_expires_at = $2, lease_generation = r.lease_generation + 1, \
           started_at = COALESCE(r.started_at, $3){set_resumed}, updated_at = $3 \
           FROM pick WHERE r.id = pick.id AND {claimable} \
           RETURNING {returning}{returning_resumed}){first_resumed} \
         SELECT {won_columns} FROM won"
    )
}

/// `status = 'leased' AND lease_generation = <fence>`: the condition of every lease-holder write.
pub(super) const FENCED: &str = "id = $1 AND status = 'leased' AND lease_generation = $2::bigint";
/// [`FENCED`] for a table aliased `r`, after its first `r.`.
pub(super) const FENCED_R: &str =
    "id = $1 AND r.status = 'leased' AND r.lease_generation = $2::bigint";

pub(super) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether the children of the wait `$1` are settled (one failed or cancelled, or none
/// unfinished), from `durably_rs_runs_parent_wait`.
pub(super) const CHILDREN_SETTLED: &str = "SELECT EXISTS (SELECT 1 FROM durably_runs \
     WHERE rs_parent_wait_id = $1 AND status IN ('failed', 'cancelled')) \
     OR NOT EXISTS (SELECT 1 FROM durably_runs WHERE rs_parent_wait_id = $1 \
     AND status IN ('pending', 'leased', 'waiting'))";

/// Up to `$1` unfinished children of parents cancelled at or after `$3` whose invoke's wait metadata is not
/// like `$2` ([`crate::children::DETACHED_METADATA_PATTERN`]), oldest first.
pub(super) const CHILDREN_TO_CANCEL: &str = "SELECT c.id FROM durably_runs c \
     JOIN durably_runs p ON p.id = c.rs_parent_run_id \
     LEFT JOIN durably_waits w ON w.id = c.rs_parent_wait_id \
     WHERE c.status IN ('pending', 'leased', 'waiting') AND p.status = 'cancelled' \
     AND p.completed_at >= $3 AND (w.metadata IS NULL OR w.metadata NOT LIKE $2) \
     ORDER BY c.created_at, c.id LIMIT $1";

/// Up to `$1` pending `children:*` waits a run was suspended on whose children are settled.
pub(super) const SETTLED_CHILDREN_WAITS: &str = "SELECT w.id FROM durably_waits w \
     WHERE w.status = 'pending' AND w.name LIKE 'children:%' AND w.suspended_at IS NOT NULL \
     AND (EXISTS (SELECT 1 FROM durably_runs c WHERE c.rs_parent_wait_id = w.id \
     AND c.status IN ('failed', 'cancelled')) \
     OR NOT EXISTS (SELECT 1 FROM durably_runs c WHERE c.rs_parent_wait_id = w.id \
     AND c.status IN ('pending', 'leased', 'waiting'))) \
     ORDER BY w.created_at, w.id LIMIT $1";
