//! The statements of the write batches ([`super::batch`]): step persistence over arrays, and
//! completions (with or without a claim, and what they do about freed concurrency keys).

use std::sync::LazyLock;

use super::{
    CLAIM_KEYS, ClaimPlaceholders, NOTICE_RUNS, claim_ctes, claim_keyed_sql, lock_claim_keys_sql,
    run_column_count, run_columns,
};

/// Planner settings of the batch connections (set for their whole session), for statements
/// that look rows up by primary key (a handful per batch) and claim through the pending-order
/// index:
/// - `plan_cache_mode = force_generic_plan`: the statements are prepared once per connection
///   and planned once; otherwise PostgreSQL plans them again at every execution, which cost
///   a third of the server's CPU on a busy queue.
/// - sequential and bitmap scans, hash and merge joins off: on a table that has not been
///   analysed yet (every new queue, for up to a minute under autovacuum's defaults) the planner
///   guesses a few rows per status and picks scans that read every row of that status; a bitmap
///   scan also never marks dead index entries, so each one grew with every run ever leased.
///
/// The statements test a run's status as `(r.status = ...) IS TRUE` (the same for a column that
/// is never NULL): an index cannot serve that form, so the planner finds the row by its id
/// through the primary key instead of walking every run of the status in upstream's
/// `(status, ...)` indexes, however few runs of that status it believes there are.
///
/// Only the batches run on these connections, which set this once when they open (not through
/// the connection's startup options, which connection poolers such as PgBouncer reject); every
/// other statement keeps the server's settings. Measured on a 10,000-run `throughput-1step`
/// (`durably bench --backend postgres`): 8.2 s of server CPU without the settings, 4.6 s with
/// them.
pub(super) const PLANNER_SETTINGS: &str = "SET plan_cache_mode = force_generic_plan; \
    SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_hashjoin = off; \
    SET enable_mergejoin = off";

/// The claim's condition in a batch that completes runs: not one of the runs being completed
/// (`req`). Written `(… IN (SELECT …)) IS NOT TRUE`, as every test of a batch's rows against
/// another common table expression here (`… IS TRUE`): PostgreSQL then checks each row against
/// a hash of the other expression's rows, built once. As a plain `IN` in `WHERE` it becomes a
/// join, and with hash and merge joins off (see [`PLANNER_SETTINGS`]) a nested loop that
/// compares every row with every other: a batch of 60 runs spent 3 of its 5 ms there, and the
/// cost grew with the square of the batch. `<> ALL($1)` compared each candidate with every
/// id of the array.
const NOT_COMPLETING: &str = " AND (r.id IN (SELECT run_id FROM req)) IS NOT TRUE";

/// [`NOT_COMPLETING`] for the other runs (`o`) whose leases count against a keyed candidate.
const NOT_COMPLETING_OTHER: &str = " AND (o.id IN (SELECT run_id FROM req)) IS NOT TRUE";

/// Connections of the batch pool: one per batch executing at once (`MAX_IN_FLIGHT` in
/// `batch.rs`), and one more to serve a retry while a broken connection is being dropped.
pub(super) const CONNECTIONS: usize = super::batch::MAX_IN_FLIGHT + 1;

pub(super) const PERSIST_SQL: &str = "WITH req AS (SELECT * FROM unnest($1::text[], $2::bigint[], \
    $3::text[], $4::text[], $5::integer[], $6::text[], $7::text[], $8::text[], $9::text[], \
    $10::text[], $11::text[], $12::boolean[], $13::text[]) WITH ORDINALITY AS t(run_id, gen, \
    step_id, name, idx, status, output, error, started_at, completed_at, att_id, att_begun, \
    att_meta, ord)), \
  run AS (SELECT r.id FROM durably_runs r JOIN req ON r.id = req.run_id \
    WHERE (r.status = 'leased') IS TRUE AND r.lease_generation = req.gen ORDER BY r.id \
    FOR NO KEY UPDATE OF r), \
  att_ok AS (SELECT req.step_id FROM req WHERE req.att_id IS NULL OR NOT req.att_begun \
    OR EXISTS (SELECT 1 FROM durably_step_attempts a WHERE a.id = req.att_id \
      AND a.run_id = req.run_id AND a.lease_generation = req.gen AND a.status = 'started')), \
  mine AS (SELECT s.id FROM durably_steps s WHERE s.id IN (SELECT step_id FROM req)), \
  ins AS (INSERT INTO durably_steps (id, run_id, name, \"index\", status, output, error, \
      started_at, completed_at) \
    SELECT req.step_id, req.run_id, req.name, req.idx, req.status, req.output, req.error, \
      req.started_at, req.completed_at FROM req \
      WHERE (req.run_id IN (SELECT id FROM run)) IS TRUE \
      AND (req.step_id IN (SELECT step_id FROM att_ok)) IS TRUE \
      AND req.step_id NOT IN (SELECT id FROM mine) \
    ON CONFLICT DO NOTHING RETURNING id), \
  att_ins AS (INSERT INTO durably_step_attempts (id, run_id, step_name, step_index, \
      lease_generation, status, metadata, error, started_at, completed_at) \
    SELECT req.att_id, req.run_id, req.name, req.idx, req.gen, \
      CASE WHEN req.status = 'completed' THEN 'completed' ELSE 'failed' END, req.att_meta, \
      req.error, req.started_at, req.completed_at FROM req \
    WHERE req.att_id IS NOT NULL AND NOT req.att_begun \
      AND (req.step_id IN (SELECT id FROM ins)) IS TRUE \
    ON CONFLICT DO NOTHING), \
  att_upd AS (UPDATE durably_step_attempts a SET \
      status = CASE WHEN req.status = 'completed' THEN 'completed' ELSE 'failed' END, \
      error = req.error, completed_at = req.completed_at FROM req \
    WHERE a.id = req.att_id AND req.att_begun AND a.status = 'started' \
      AND (req.step_id IN (SELECT id FROM ins)) IS TRUE), \
  upd AS (UPDATE durably_runs r SET current_step_index = req.idx + 1, \
      completed_step_count = r.completed_step_count + 1, updated_at = req.completed_at \
    FROM req WHERE r.id = req.run_id AND req.status = 'completed' \
      AND (req.step_id IN (SELECT id FROM ins)) IS TRUE RETURNING r.id) \
  SELECT req.step_id, req.run_id IN (SELECT id FROM run) AND req.step_id IN \
    (SELECT step_id FROM att_ok), req.step_id IN (SELECT id FROM ins), \
    req.step_id IN (SELECT id FROM mine), (SELECT count(*) FROM upd) FROM req ORDER BY req.ord";

/// What a completion statement does about runs waiting for the keys its completions free.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Note {
    /// Sends one notice (on the channel, `$6`) when a completed run's key has a pending run.
    Now,
    /// Sends none and keeps the completed runs' keys in [`FREED_KEYS`] for
    /// [`NOTE_FREED_KEYS_SQL`] after the keyed claim (channel `$6` only typed): a key that
    /// claim handed on needs no notice (every listening worker would otherwise claim, for
    /// nothing, at every keyed completion).
    Later,
    /// Nothing: the worker said that no completed run holds a key (no channel parameter).
    Never,
}

/// The completions' common table expressions (`req`, `u`, `d`, `note`, and with `retry` also
/// `again`), for a `WITH` list: `$1`-`$5` the runs, fences, outputs, times and whether to drop
/// their steps; then, numbered on, the notification channel (unless [`Note::Never`]) and with
/// `retry` whether this is a retry (`again` then finds completions an earlier attempt
/// committed). Returns the text and the next free parameter number.
///
/// A claim is never retried (an unacknowledged claim may have committed), so the statements
/// that claim leave `again` out; with [`Note::Never`] also `note`: each is a join or a lookup
/// per completion that the executor sets up at every execution (together 10 % of the
/// `multi-worker` throughput, 4 interleaved pairs).
/// With `close_waits`, the completed runs' pending durable waits are closed (`cw`).
fn complete_ctes(note: Note, retry: bool, close_waits: bool) -> (String, usize) {
    let mut next = 6;
    let mut placeholder = || {
        next += 1;
        format!("${}", next - 1)
    };
    let note = match note {
        Note::Now => format!(
            "note AS (SELECT pg_notify({}::text, '{NOTICE_RUNS}') FROM u \
             WHERE u.concurrency_key IS NOT NULL AND EXISTS (SELECT 1 FROM durably_runs p \
             WHERE p.status = 'pending' AND p.concurrency_key = u.concurrency_key) LIMIT 1), ",
            placeholder()
        ),
        Note::Later => format!(
            "freed AS (SELECT set_config('{FREED_KEYS}', \
               COALESCE(json_agg(DISTINCT u.concurrency_key)::text, '[]'), true) AS keys \
               FROM u WHERE u.concurrency_key IS NOT NULL), \
             note AS (SELECT {}::text FROM freed WHERE freed.keys IS NULL), ",
            placeholder()
        ),
        Note::Never => "note AS (SELECT 1 WHERE false), ".to_owned(),
    };
    let again = match retry {
        true => format!(
            ", again AS (SELECT r.id FROM durably_runs r JOIN req ON r.id = req.run_id \
               WHERE {}::boolean AND (r.status = 'completed') IS TRUE \
               AND r.lease_generation = req.gen)",
            placeholder()
        ),
        false => String::new(),
    };
    let close_waits = match close_waits {
        true => {
            ", cw AS (UPDATE durably_waits w SET status = 'closed', resolved_at = req.at FROM req \
               WHERE w.run_id = req.run_id AND w.status = 'pending' \
               AND (req.run_id IN (SELECT id FROM u)) IS TRUE)"
        }
        false => "",
    };
    let text = format!(
        "req AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], \
           $5::boolean[]) WITH ORDINALITY AS t(run_id, gen, output, at, drop_steps, ord)), \
         u AS (UPDATE durably_runs r SET status = 'completed', output = req.output, error = NULL, \
             lease_owner = NULL, lease_expires_at = NULL, completed_at = req.at, updated_at = req.at \
           FROM req WHERE r.id = req.run_id AND (r.status = 'leased') IS TRUE \
             AND r.lease_generation = req.gen \
           RETURNING r.id, r.concurrency_key), \
         {note}\
         d AS (DELETE FROM durably_steps s USING req WHERE s.run_id = req.run_id \
           AND req.drop_steps AND (req.run_id IN (SELECT id FROM u)) IS TRUE){close_waits}{again}"
    );
    (text, next)
}

/// The transaction-local setting that carries the keys a batch's completions freed (a JSON
/// array) to [`NOTE_FREED_KEYS_SQL`].
pub(super) const FREED_KEYS: &str = "durably.freed_keys";

/// After the keyed claim of a batch, in the same transaction: one notice if a key that the
/// batch's completions freed (in [`FREED_KEYS`]) has a pending run and no unexpired lease
/// (`$1` the channel, `$2` now). A key whose lock another claimer held when the batch tried it
/// comes out free here (that claimer's lease is not committed yet, or it saw the key still
/// held), so the notice makes someone look again after the commit. Returns the notices sent.
///
/// The lookups are scalar subqueries, so each runs per key through an index on the key: as
/// `EXISTS`, the planner (guessing a few rows on a young table) joined the keys against a
/// walk over every pending keyed run, 1 ms a batch at 4,000 pending runs.
pub(super) static NOTE_FREED_KEYS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH note AS (SELECT pg_notify($1::text, '{NOTICE_RUNS}') \
           FROM json_array_elements_text(COALESCE(NULLIF(current_setting('{FREED_KEYS}', true), \
             ''), '[]')::json) AS t(k) \
           WHERE (SELECT 1 FROM durably_runs p WHERE p.status = 'pending' \
             AND p.concurrency_key = t.k LIMIT 1) IS NOT NULL \
           AND (SELECT 1 FROM durably_runs o WHERE o.status = 'leased' \
             AND o.concurrency_key = t.k AND o.lease_expires_at IS NOT NULL \
             AND o.lease_expires_at > $2 LIMIT 1) IS NULL LIMIT 1) \
         SELECT count(*) FROM note"
    )
});

/// Whether a completion row's run is completed (by this statement or an earlier attempt).
const COMPLETED: &str = "req.run_id IN (SELECT id FROM u) OR req.run_id IN (SELECT id FROM again)";

/// The completions: one row per request, in order: `(run id, completed, notices sent)`.
/// `$6` the channel, `$7` whether this is a retry.
pub(super) fn complete_sql(close_waits: bool) -> String {
    let (ctes, _) = complete_ctes(Note::Now, true, close_waits);
    format!(
        "WITH {ctes} SELECT req.run_id, {COMPLETED}, (SELECT count(*) FROM note) \
         FROM req ORDER BY req.ord"
    )
}

/// The completions and, in the same statement (so the same transaction, with no `BEGIN` and
/// `COMMIT` to send), the claim of the slots they hand on: after the completions' parameters
/// (see [`complete_ctes`]; never a retry) now, how many, the worker and the lease expiry. First
/// one row per completion, in order, as `(NULL, run id, NULL, NULL for each run column,
/// completed, notices sent)`; then one row per claim candidate, in claim order, as [`claim_sql`]
/// returns it.
///
/// With [`Note::Later`], [`lock_claim_keys_sql`], [`claim_keyed_sql`] and
/// [`NOTE_FREED_KEYS_SQL`] follow in the same transaction: this statement keeps the keys of its
/// keyed candidates in [`CLAIM_KEYS`] for them, and leaves the notice to the last.
///
/// The claim reads the snapshot the statement started with, where the runs being completed
/// still hold their leases: their keys count as free for picking candidates (the keyed claim
/// checks again, later, under the keys' locks). Expired leases among the runs being completed
/// are not claimed back.
pub(super) fn complete_and_claim_sql(note: Note, close_waits: bool, resume: bool) -> String {
    let (ctes, next) = complete_ctes(note, false, close_waits);
    let at = ClaimPlaceholders::numbered_from(next, NOT_COMPLETING_OTHER);
    let claim = claim_ctes(&at, NOT_COMPLETING, resume);
    let nulls = vec!["NULL"; run_column_count()].join(", ");
    let leased = run_columns("won");
    let (keys, completions) = match note {
        Note::Later => (
            format!(
                ", keys AS (SELECT set_config('{CLAIM_KEYS}', \
                   COALESCE(json_agg(DISTINCT c.concurrency_key)::text, '[]'), true) AS keys \
                   FROM c WHERE c.concurrency_key IS NOT NULL)"
            ),
            "req CROSS JOIN keys",
        ),
        Note::Now | Note::Never => (String::new(), "req"),
    };
    format!(
        "WITH {ctes}, {claim}{keys} \
         SELECT NULL::boolean AS keyed, req.run_id AS id, NULL::text AS concurrency_key, {nulls}, \
           req.run_id IN (SELECT id FROM u) AS completed, (SELECT count(*) FROM note) AS noted, \
           req.ord AS ord, NULL::integer AS claim_priority, NULL::text AS created_order \
           FROM {completions} \
         UNION ALL \
         SELECT false, won.id, NULL, {leased}, NULL, NULL, NULL, COALESCE(won.rs_priority, 0), \
           won.created_at FROM won \
         UNION ALL \
         SELECT true, c.id, c.concurrency_key, {nulls}, NULL, NULL, NULL, c.prio, c.created_at \
           FROM c WHERE c.concurrency_key IS NOT NULL \
         ORDER BY ord, claim_priority DESC, created_order, id"
    )
}

/// The text of a batch's completion statement, built once per shape (every batch looks its
/// prepared statement up by text): with a claim (`note`, see [`Note`]) or not, closing
/// durable waits or not, resuming waiting runs or not (only with a claim).
pub(super) fn complete_statement_sql(
    note: Option<Note>,
    close_waits: bool,
    resume: bool,
) -> &'static str {
    static TEXTS: LazyLock<Vec<String>> = LazyLock::new(|| {
        let mut texts = Vec::with_capacity(16);
        for note in [None, Some(Note::Now), Some(Note::Never), Some(Note::Later)] {
            for close_waits in [false, true] {
                for resume in [false, true] {
                    texts.push(match note {
                        None => complete_sql(close_waits),
                        Some(note) => complete_and_claim_sql(note, close_waits, resume),
                    });
                }
            }
        }
        texts
    });
    let note = match note {
        None => 0,
        Some(Note::Now) => 1,
        Some(Note::Never) => 2,
        Some(Note::Later) => 3,
    };
    &TEXTS[note * 4 + usize::from(close_waits) * 2 + usize::from(resume)]
}

/// The keyed claim that follows a completion with [`Note::Later`], with or without resuming
/// waiting runs.
pub(super) fn claim_keyed_statement_sql(resume: bool) -> &'static str {
    static TEXTS: LazyLock<[String; 2]> =
        LazyLock::new(|| [claim_keyed_sql(false), claim_keyed_sql(true)]);
    &TEXTS[usize::from(resume)]
}
pub(super) static LOCK_CLAIM_KEYS_SQL: LazyLock<String> = LazyLock::new(lock_claim_keys_sql);
