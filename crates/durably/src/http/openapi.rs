//! The OpenAPI 3.1 document served at `GET <base>/openapi.json` (hand-written; paths are
//! relative to wherever the router is nested). It says what the server does: the registered
//! jobs' names and input schemas, the bounds of [`Limits`](crate::Limits) and the minimum
//! lengths where empty values are refused, the `label.<key>` parameter family, and links from
//! a trigger's `runId` to the run routes (so that a fuzzer reaches real runs).

use serde_json::{Value, json};

use crate::Durably;
use crate::limits::Limits;

/// Text without a NUL character (refused with a 400 wherever the server stores or matches text).
const NO_NUL: &str = "^[^\\u0000]*$";

fn run_id_param() -> Value {
    json!({
        "name": "runId", "in": "query", "required": true,
        "schema": { "type": "string", "minLength": 1, "pattern": NO_NUL },
        "description": "Run id (a ULID). Empty or with a NUL character: 400."
    })
}

fn wait_id_param() -> Value {
    json!({
        "name": "waitId", "in": "query", "required": true,
        "schema": { "type": "string", "minLength": 1, "pattern": NO_NUL },
        "description": "Wait id (a ULID) of a wait of the run. Missing or empty, or with a NUL character: 400; unknown or of another run: 404."
    })
}

/// A route of one wait of a run (`GET /wait`, `POST /signal`): the run route with `waitId`.
fn wait_route(summary: &str, operation_id: &str, ok: Value) -> Value {
    let mut route = run_route(summary, operation_id, ok, None);
    route["parameters"] = json!([run_id_param(), wait_id_param()]);
    route["responses"]["400"] = error_response(
        "runId or waitId missing, empty or with a NUL character; auth without a run-access hook",
    );
    route["responses"]["404"] = error_response("Run not found, or Wait not found (in this run)");
    route
}

/// `POST /signal`: its body and the outcomes of a signal (upstream v4 §4.3, §9.1).
fn signal_route() -> Value {
    let mut route = wait_route(
        "Signal a wait of the run: resolves it (accepted), or finds the same signal already did (duplicate)",
        "signal",
        json_ok(
            "The wait after the signal",
            json!({ "$ref": "#/components/schemas/SignalResponse" }),
        ),
    );
    route["requestBody"] = json!({ "required": true, "content": { "application/json": {
        "schema": { "$ref": "#/components/schemas/SignalRequest" } } } });
    let responses = &mut route["responses"];
    responses["400"] = error_response(
        "runId or waitId missing; auth without a run-access hook; Invalid JSON body; Signal body must be an object; signalId must be non-empty; payload is required",
    );
    responses["404"] = error_response(
        "Run not found, Wait not found, or Wait not found: <waitId> (deleted meanwhile)",
    );
    responses["409"] = error_response(
        "Wait cannot accept this signal: <waitId> (resolved by another signal, cancelled, closed, or its run ended)",
    );
    responses["410"] = error_response("Wait expired: <waitId> (its deadline passed first)");
    responses["413"] = error_response("Request body too large");
    route
}

/// Text with a character that is not white space (Rust's `char::is_whitespace`, which the
/// server's blank check uses; spelled out, as regex dialects differ on `\s`) and no NUL.
const NOT_BLANK: &str = "^[^\\u0000]*[^\\u0000\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000]*$";

/// The `label.<key>` family, which OpenAPI cannot name (a parameter name is fixed): described
/// on the operation and in the `x-parameter-family` extension, not as a parameter, so that
/// clients generated from the document and fuzzers send only valid requests.
fn label_family(limits: &Limits) -> Value {
    json!({
        "prefix": "label.",
        "keyPattern": "^[a-zA-Z0-9\\-_./]+$",
        "maxKeyLength": limits.max_label_key_bytes,
        "maxItems": limits.max_label_filters,
        "schema": { "type": "string", "maxLength": limits.max_label_value_bytes },
        "description": "Query parameters named label.<key>=<value> filter on labels (all must match; a repeated key keeps its last value)."
    })
}

fn label_description(limits: &Limits) -> String {
    format!(
        "Label filters are query parameters named `label.<key>` (e.g. `label.tenant=acme`): \
         every one must match. Keys match `^[a-zA-Z0-9\\-_./]+$` and are at most {} bytes, values \
         at most {} bytes; at most {} label filters per request (see x-parameter-family); beyond \
         that, or with a NUL character: 400.",
        limits.max_label_key_bytes, limits.max_label_value_bytes, limits.max_label_filters
    )
}

/// Links from a response's `runId` (at `pointer`) to every route that takes one.
fn run_links(pointer: &str) -> Value {
    let run_id = json!({ "runId": format!("$response.body#{pointer}") });
    let link = |operation: &str, description: &str| json!({ "operationId": operation, "parameters": run_id, "description": description });
    json!({
        "GetRun": link("getRun", "The run"),
        "GetSteps": link("getSteps", "Its steps"),
        "GetLogs": link("getLogs", "Its logs"),
        "Cancel": link("cancel", "Cancel it"),
        "Retrigger": link("retrigger", "Run it again"),
        "Resume": link("resume", "Resume it once failed"),
        "Wake": link("wake", "Start or continue it now while it waits on a timer"),
        "DeleteRun": link("deleteRun", "Delete it once finished"),
        "Subscribe": link("subscribe", "Its events"),
        "GetWaits": link("getWaits", "Its durable waits")
    })
}

/// Whether a JSON Schema's `type` leaves `null` out.
fn refuses_null(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(name)) => name != "null",
        Some(Value::Array(names)) => !names.iter().any(|name| name == "null"),
        _ => false,
    }
}

/// `TriggerRequest`: one alternative per registered job (its name as a constant, its input
/// schema); without registered jobs (`durably serve`), any name.
fn trigger_request(durably: &Durably, limits: &Limits) -> Value {
    // Keys and label values are bounded in UTF-8 bytes (`x-maxBytes`), which JSON Schema cannot
    // say: `maxLength` (characters) is the same number, an upper bound that ASCII text reaches.
    let key = json!({
        "type": ["string", "null"], "minLength": 1, "maxLength": limits.max_key_bytes,
        "x-maxBytes": limits.max_key_bytes, "pattern": NO_NUL,
        "description": format!("Non-empty, at most {} bytes in UTF-8, no NUL character; null is absent", limits.max_key_bytes)
    });
    let labels = json!({
        "type": ["object", "null"],
        "maxProperties": limits.max_labels_per_run,
        "propertyNames": { "pattern": "^[a-zA-Z0-9\\-_./]+$", "maxLength": limits.max_label_key_bytes },
        "additionalProperties": {
            "type": "string", "maxLength": limits.max_label_value_bytes,
            "x-maxBytes": limits.max_label_value_bytes, "pattern": NO_NUL,
            "description": format!("At most {} bytes in UTF-8, no NUL character", limits.max_label_value_bytes)
        }
    });
    let request = |job_name: Value, input: Value| {
        // A missing `input` is `null` to the job: required unless the job's schema takes null.
        let required = match refuses_null(&input) {
            true => json!(["jobName", "input"]),
            false => json!(["jobName"]),
        };
        json!({ "type": "object", "required": required, "properties": {
            "jobName": job_name,
            "input": input,
            "idempotencyKey": key,
            "concurrencyKey": key,
            "labels": labels,
            "coalesce": { "type": ["string", "null"], "enum": ["skip", "queue", "active", null] },
            "priority": { "type": ["integer", "null"], "minimum": i32::MIN, "maximum": i32::MAX,
                "description": "Claim priority (durably for Rust extension): higher runs first, the oldest first within a priority; 0 or null is the default" }
        },
        // Every coalesce mode needs a concurrency key to coalesce on (400 without).
        "if": { "required": ["coalesce"], "properties": { "coalesce": { "type": "string" } } },
        "then": { "required": ["concurrencyKey"], "properties": { "concurrencyKey": { "type": "string" } } }
        })
    };
    let names = durably.job_names();
    if names.is_empty() {
        return request(
            json!({ "type": "string", "minLength": 1, "pattern": NO_NUL }),
            json!({}),
        );
    }
    let alternatives: Vec<Value> = names
        .iter()
        .filter_map(|name| durably.get_job(name))
        .map(|job| {
            request(
                json!({ "type": "string", "const": job.name }),
                job.input_schema.unwrap_or_else(|| json!({})),
            )
        })
        .collect();
    // Told apart by `jobName`'s constant (a discriminator would need named components, and
    // job names need not be valid component names).
    json!({ "oneOf": alternatives })
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn json_ok(description: &str, schema: Value) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": schema } }
    })
}

/// The event types of the slim projection of `GET /runs/subscribe`.
const SLIM_EVENT_TYPES: [&str; 14] = [
    "run:trigger",
    "run:coalesced",
    "run:waiting",
    "run:leased",
    "run:complete",
    "run:fail",
    "run:cancel",
    "run:delete",
    "run:progress",
    "step:start",
    "step:complete",
    "step:fail",
    "step:cancel",
    "log:write",
];

/// The JSON of one event: a slim one (`/runs/subscribe`) or a full one (`/subscribe`: every
/// run event but `worker:error`, plus `timestamp` and `sequence`).
fn event_data(full: bool) -> Value {
    let mut types: Vec<&str> = SLIM_EVENT_TYPES.to_vec();
    let mut required = vec!["type", "runId", "jobName"];
    let mut properties = json!({
        "type": { "type": "string", "enum": types },
        "runId": { "type": "string" },
        "jobName": { "type": "string" },
        "labels": { "type": "object", "additionalProperties": { "type": "string" } }
    });
    if full {
        types.push("run:lease-renewed");
        properties["type"] = json!({ "type": "string", "enum": types });
        properties["timestamp"] = json!({ "type": "string" });
        properties["sequence"] = json!({ "type": "integer", "minimum": 0 });
        required.extend(["timestamp", "sequence"]);
    }
    json!({ "type": "object", "required": required, "properties": properties })
}

/// An SSE response. The media type's `schema` describes one message of the stream (the
/// OpenAPI 3.1 reading of a sequential media type, which Schemathesis follows): an unnamed
/// event (its type is the default, `message`) whose `data` is the JSON of `event`.
fn sse_ok(description: &str, event: Value) -> Value {
    json!({
        "description": description,
        "content": { "text/event-stream": { "schema": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "event": { "type": "string", "const": "message" },
                "data": { "type": "string", "contentMediaType": "application/json", "contentSchema": event }
            }
        } } }
    })
}

fn run_route(summary: &str, operation_id: &str, ok: Value, conflict: Option<&str>) -> Value {
    let mut responses = json!({
        "200": ok,
        "400": error_response("runId missing, empty or with a NUL character"),
        "404": error_response("Run not found"),
        "500": error_response("Storage failure"),
        "503": error_response("The read took longer than the server allows (HttpOptions::read_timeout)")
    });
    if let (Some(text), Some(map)) = (conflict, responses.as_object_mut()) {
        map.insert("409".into(), error_response(text));
    }
    json!({
        "summary": summary,
        "operationId": operation_id,
        "parameters": [run_id_param()],
        "responses": responses
    })
}

/// The `name` parameter of the schedule routes; the schedules registered in code as examples.
fn schedule_name_param(durably: &Durably) -> Value {
    let names = durably.inner.scheduler.code_names();
    json!({
        "name": "name", "in": "query", "required": true,
        "schema": { "type": "string", "minLength": 1, "pattern": NO_NUL, "examples": names },
        "description": "Schedule name. Missing, empty or with a NUL character: 400; unknown: 404."
    })
}

/// A route of one schedule (`GET /schedule`, `POST /schedules/…`).
fn schedule_route(durably: &Durably, summary: &str, operation_id: &str, ok: Value) -> Value {
    json!({
        "summary": summary,
        "operationId": operation_id,
        "parameters": [schedule_name_param(durably)],
        "responses": {
            "200": ok,
            "400": error_response("name missing, empty or with a NUL character"),
            "404": error_response("Schedule not found: <name>"),
            "500": error_response("Storage failure"),
            "503": error_response("The read took longer than the server allows (HttpOptions::read_timeout)")
        }
    })
}

/// The schedule routes (durably for Rust extension), added to `paths`.
fn schedule_paths(durably: &Durably) -> Value {
    let schedule = || json!({ "$ref": "#/components/schemas/Schedule" });
    let mut trigger_ok = json_ok(
        "The run created",
        json!({ "type": "object", "required": ["runId"], "additionalProperties": false,
            "properties": { "runId": { "type": "string", "minLength": 1 } } }),
    );
    trigger_ok["links"] = run_links("/runId");
    let trigger = schedule_route(
        durably,
        "Trigger now: a run of the schedule's job with its input and labels (label durably.schedule=<name>, no slot label, never idempotent), outside its slots; the schedule is unchanged, paused or not (durably for Rust extension; asks the auth's trigger hook)",
        "triggerSchedule",
        trigger_ok,
    );
    json!({
        "/schedules": { "get": {
            "summary": "Cron schedules, by name (durably for Rust extension)",
            "operationId": "listSchedules",
            "responses": {
                "200": json_ok("Schedules", json!({ "type": "array", "items": schedule() })),
                "500": error_response("Storage failure"),
                "503": error_response("The read took longer than the server allows (HttpOptions::read_timeout)")
            }
        }},
        "/schedule": { "get": schedule_route(durably, "One cron schedule (durably for Rust extension)",
            "getSchedule", json_ok("The schedule", schedule())) },
        "/schedules/pause": { "post": schedule_route(durably,
            "Pause a schedule: it fires nothing until resumed (durably for Rust extension)",
            "pauseSchedule", json_ok("The schedule, paused", schedule())) },
        "/schedules/resume": { "post": schedule_route(durably,
            "Resume a schedule from the first slot after now (slots passed while paused are skipped); a schedule not paused is unchanged (durably for Rust extension)",
            "resumeSchedule", json_ok("The schedule, not paused", schedule())) },
        "/schedules/trigger": { "post": trigger }
    })
}

/// The `Schedule` component.
fn schedule_schema() -> Value {
    let time = |description: &str| json!({ "type": "string", "format": "date-time", "description": description });
    json!({ "type": "object", "additionalProperties": false,
        "required": ["name", "jobName", "cron", "timeZone", "input", "labels", "catchUp", "paused",
            "nextFireAt", "lastFiredAt", "createdAt", "updatedAt"],
        "properties": {
            "name": { "type": "string", "minLength": 1 },
            "jobName": { "type": "string", "description": "The job each slot triggers" },
            "cron": { "type": "string", "description": "Cron expression: 5 fields, or 6 with seconds first" },
            "timeZone": { "type": "string", "description": "IANA time zone the expression is read in" },
            "input": { "description": "The input of every run (any JSON)" },
            "labels": { "type": "object", "additionalProperties": { "type": "string" },
                "description": "The labels of every run, besides durably.schedule and durably.schedule.slot" },
            "catchUp": { "type": "string", "pattern": "^(skip|one|all:[1-9][0-9]*)$",
                "description": "What missed slots do: skip, one (one run for all), or all:<max> (a run each, the max latest)" },
            "paused": { "type": "boolean" },
            "nextFireAt": time("The next slot to fire (UTC)"),
            "lastFiredAt": { "type": ["string", "null"], "format": "date-time", "description": "The latest slot fired, null if none" },
            "createdAt": time("When the schedule was first stored"),
            "updatedAt": time("When it last changed (definition, pause, firing)")
        }
    })
}

/// The document for the jobs registered on `durably` and its limits.
pub(crate) fn document(durably: &Durably) -> Value {
    let mut document = runs_document(durably);
    if let (Some(paths), Value::Object(schedules)) =
        (document["paths"].as_object_mut(), schedule_paths(durably))
    {
        paths.extend(schedules);
    }
    document["components"]["schemas"]["Schedule"] = schedule_schema();
    document
}

/// The answer of `GET /overview`.
fn overview_schema() -> Value {
    let count = json!({ "type": "integer", "minimum": 0 });
    let percentiles = json!({ "oneOf": [
        { "type": "null" },
        { "type": "object", "required": ["p50", "p95", "count"], "properties": {
            "p50": count, "p95": count, "count": count } }
    ] });
    let counts: serde_json::Map<String, Value> = [
        "pending",
        "leased",
        "waiting",
        "completed",
        "failed",
        "cancelled",
    ]
    .into_iter()
    .map(|s| (s.to_owned(), count.clone()))
    .collect();
    let status_names: Vec<&str> = counts.keys().map(String::as_str).collect();
    json!({ "type": "object",
        "required": ["window", "now", "bucketMs", "counts", "oldestPending", "buckets", "jobs", "sampled"],
        "properties": {
            "window": { "type": "string", "enum": ["1h", "24h"] },
            "now": { "type": "string", "format": "date-time" },
            "bucketMs": count,
            "counts": { "type": "object", "required": status_names, "properties": counts },
            "oldestPending": { "oneOf": [
                { "type": "null" },
                { "type": "object", "required": ["runId", "jobName", "createdAt", "ageMs"], "properties": {
                    "runId": { "type": "string" }, "jobName": { "type": "string" },
                    "createdAt": { "type": "string", "format": "date-time" }, "ageMs": count } }
            ] },
            "buckets": { "type": "array", "items": { "type": "object", "required": ["start", "completed", "failed"], "properties": {
                "start": { "type": "string", "format": "date-time" }, "completed": count, "failed": count } } },
            "jobs": { "type": "array", "items": { "type": "object",
                "required": ["jobName", "completed", "failed", "queueLatencyMs", "durationMs"], "properties": {
                "jobName": { "type": "string" }, "completed": count, "failed": count,
                "queueLatencyMs": percentiles, "durationMs": percentiles } } },
            "sampled": count
        }
    })
}

/// The document without the schedule routes.
fn runs_document(durably: &Durably) -> Value {
    let limits = &durably.config().limits;
    let job_names = durably.job_names();
    // A listing's `jobName`: any text without NUL (a name no job has matches no run; an empty
    // one too, as upstream), the registered names as examples.
    let job_name = json!({ "type": "string", "pattern": NO_NUL, "examples": job_names });
    // a time-range bound of GET /runs: RFC 3339 text or epoch milliseconds (digits only)
    let time_bound = json!({ "oneOf": [
        { "type": "string", "format": "date-time" },
        { "type": "string", "pattern": "^[0-9]{1,15}$" },
        { "type": "string", "maxLength": 0 }
    ] });
    let success = json!({
        "type": "object", "required": ["success"],
        "properties": { "success": { "type": "boolean", "const": true } }
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "durably HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The wire protocol of @coji/durably 0.15's createDurablyHandler (nine routes), the wait routes of its schema v4 (GET /waits, GET /wait, POST /signal), plus GET /attempts, GET /logs, GET /jobs, GET /overview, the schedule routes (GET /schedules, GET /schedule, POST /schedules/pause, /schedules/resume, /schedules/trigger) and GET /openapi.json. Paths are relative to the base path the router is nested under (the demo uses /api/durably). SSE streams send only unnamed `data: <json>` messages."
        },
        "paths": {
            "/trigger": { "post": {
                "summary": "Trigger a run of a registered job",
                "operationId": "trigger",
                "requestBody": { "required": true, "content": { "application/json": {
                    "schema": { "$ref": "#/components/schemas/TriggerRequest" } } } },
                "responses": {
                    "200": {
                        "description": "Run created, or an existing one returned",
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/TriggerResponse" } } },
                        "links": run_links("/runId")
                    },
                    "400": error_response("jobName missing, invalid JSON, invalid input, labels or options"),
                    "404": error_response("Job not found: <jobName>"),
                    "409": error_response("A pending run already exists for the concurrency key"),
                    "413": error_response("Request body too large")
                }
            }},
            "/runs": { "get": {
                "summary": "List runs, newest first (a bare array)",
                "description": label_description(limits),
                "operationId": "listRuns",
                "x-parameter-family": label_family(limits),
                "parameters": [
                    { "name": "jobName", "in": "query", "schema": { "type": "array", "maxItems": limits.max_job_name_filters, "items": job_name }, "style": "form", "explode": true },
                    { "name": "status", "in": "query", "schema": { "type": "array", "items": { "$ref": "#/components/schemas/RunStatus" } }, "style": "form", "explode": true },
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 0 } },
                    { "name": "offset", "in": "query", "schema": { "type": "integer", "minimum": 0 } },
                    { "name": "parentRunId", "in": "query", "description": "Only the child runs of this run (durably's addition)", "schema": { "type": "string", "pattern": NO_NUL } },
                    { "name": "idPrefix", "in": "query", "description": "Only runs whose id starts with this text (durably's addition; empty: every run)", "schema": { "type": "string", "pattern": NO_NUL } },
                    { "name": "createdSince", "in": "query", "description": "Only runs created at or after this instant (durably's addition; the dashboard's time range): an RFC 3339 timestamp or milliseconds since the Unix epoch (an instant outside the years 0 to 9999 counts as the nearest inside them); empty: no bound", "schema": time_bound.clone() },
                    { "name": "createdBefore", "in": "query", "description": "Only runs created strictly before this instant (durably's addition; with createdSince a half-open range): an RFC 3339 timestamp or milliseconds since the Unix epoch (an instant outside the years 0 to 9999 counts as the nearest inside them); empty: no bound", "schema": time_bound }
                ],
                "responses": {
                    "200": json_ok("Runs", json!({ "type": "array", "items": { "$ref": "#/components/schemas/ClientRun" } })),
                    "400": error_response("Invalid status, limit, offset, createdSince, createdBefore, label key or value, too many filters, or a NUL character"),
                    "503": error_response("The listing took longer than the server allows (HttpOptions::read_timeout)")
                }
            }},
            "/run": {
                "get": run_route("Get one run", "getRun", json_ok("The run", json!({ "$ref": "#/components/schemas/ClientRun" })), None),
                "delete": run_route("Delete a terminal run", "deleteRun", json_ok("Deleted", success.clone()), Some("Cannot delete pending/leased run"))
            },
            "/steps": { "get": run_route("The run's persisted steps by index", "getSteps",
                json_ok("Steps", json!({ "type": "array", "items": { "$ref": "#/components/schemas/Step" } })), None) },
            "/attempts": { "get": run_route("The run's step attempts, oldest first: one per execution of a step's function (durably for Rust extension; authorized as the `steps` operation)", "getStepAttempts",
                json_ok("Step attempts", json!({ "type": "array", "items": { "$ref": "#/components/schemas/StepAttempt" } })), None) },
            "/waits": { "get": run_route("The run's durable waits, oldest first (authorized as the `waits` operation; with auth, only through a run-access hook)", "getWaits",
                json_ok("Waits", json!({ "type": "array", "items": { "$ref": "#/components/schemas/DurableWait" } })), None) },
            "/wait": { "get": wait_route("One durable wait of the run (authorized as the `waits` operation)", "getWait",
                json_ok("The wait", json!({ "$ref": "#/components/schemas/DurableWait" }))) },
            "/signal": { "post": signal_route() },
            "/logs": { "get": run_route("The run's persisted logs, oldest first (durably for Rust extension)", "getLogs",
                json_ok("Logs", json!({ "type": "array", "items": { "$ref": "#/components/schemas/Log" } })), None) },
            "/retrigger": { "post": run_route("Create a new run with the same input", "retrigger",
                {
                    let mut ok = json_ok("The new run", json!({ "type": "object", "required": ["success", "runId"],
                        "properties": { "success": { "type": "boolean", "const": true }, "runId": { "type": "string" } } }));
                    ok["links"] = run_links("/runId");
                    ok
                },
                Some("Cannot retrigger pending/leased run")) },
            "/resume": { "post": run_route("Resume a failed run from where it failed: the run goes back to pending under its own id and its next execution replays its completed steps (durably for Rust extension)", "resume",
                {
                    let mut ok = json_ok("The resumed run (pending again)", json!({ "type": "object", "required": ["success", "runId"],
                        "properties": { "success": { "type": "boolean", "const": true }, "runId": { "type": "string" } } }));
                    ok["links"] = run_links("/runId");
                    ok
                },
                Some("The run is not failed, or its job already has a pending run with its concurrency key")) },
            "/wake": { "post": run_route("Run now / retry now: signal the timer a waiting run waits on (a delay, a step's or the run's retry backoff, a sleep) so that it starts or continues now (durably for Rust extension)", "wake",
                {
                    let mut ok = json_ok("The woken run", json!({ "type": "object", "required": ["success", "runId"],
                        "properties": { "success": { "type": "boolean", "const": true }, "runId": { "type": "string" } } }));
                    ok["links"] = run_links("/runId");
                    ok
                },
                Some("The run is not waiting, or waits for a signal rather than a timer (signal that wait instead)")) },
            "/cancel": { "post": run_route("Cancel a pending or leased run", "cancel",
                json_ok("Cancelled", success), Some("Cannot cancel a terminal run")) },
            "/subscribe": { "get": run_route("SSE: the run's current state, then its live events; ends after the terminal event", "subscribe",
                sse_ok("data: <full event JSON> messages", event_data(true)), None) },
            "/runs/subscribe": { "get": {
                "summary": "SSE: slim live events of all runs; never ends by itself",
                "description": label_description(limits),
                "operationId": "subscribeRuns",
                "x-parameter-family": label_family(limits),
                "parameters": [
                    { "name": "jobName", "in": "query", "schema": { "type": "array", "maxItems": limits.max_job_name_filters, "items": job_name }, "style": "form", "explode": true }
                ],
                "responses": {
                    "200": sse_ok("data: <slim event JSON> messages", event_data(false)),
                    "400": error_response("Invalid label key or value, too many filters, or a NUL character")
                }
            }},
            "/jobs": { "get": {
                "summary": "Registered jobs (durably for Rust extension)",
                "operationId": "listJobs",
                "responses": { "200": json_ok("Jobs", json!({ "type": "array", "items": {
                    "type": "object", "required": ["name", "inputSchema"], "properties": {
                        "name": { "type": "string" },
                        "inputSchema": { "description": "JSON Schema of the job's input, null if the job has none" } } } })) }
            }},
            "/overview": { "get": {
                "summary": "How the queues are doing: runs per status, the oldest pending run, and for the window the runs that completed or failed per bucket (a clock minute for 1h, a clock hour for 24h) and per job, with queue latency and duration percentiles (durably for Rust extension)",
                "description": "Counts are exact; percentiles are computed from the newest 2000 runs that ended in the window. Refused (403) when the server's auth scopes the runs a caller may list.",
                "operationId": "overview",
                "parameters": [
                    { "name": "window", "in": "query", "schema": { "type": "string", "enum": ["1h", "24h"], "default": "1h" } }
                ],
                "responses": {
                    "200": json_ok("The overview", overview_schema()),
                    "400": error_response("Invalid window"),
                    "403": error_response("The server's auth scopes the runs a caller may list")
                }
            }},
            "/openapi.json": { "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": { "200": { "description": "OpenAPI 3.1 document", "content": { "application/json": {} } } }
            }}
        },
        "components": { "schemas": {
            "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
            "RunStatus": { "type": "string", "enum": ["waiting", "pending", "leased", "completed", "failed", "cancelled"] },
            "TriggerRequest": trigger_request(durably, limits),
            "TriggerResponse": { "type": "object", "required": ["runId", "disposition", "status"], "properties": {
                "runId": { "type": "string" },
                "disposition": { "type": "string", "enum": ["created", "idempotent", "coalesced", "debounced"] },
                "status": { "$ref": "#/components/schemas/RunStatus" }
            }},
            "Progress": { "type": "object", "required": ["current"], "properties": {
                "current": { "type": "number" }, "total": { "type": "number" }, "message": { "type": "string" } } },
            "ClientRun": { "type": "object", "properties": {
                "id": { "type": "string" },
                "jobName": { "type": "string" },
                "input": {},
                "status": { "$ref": "#/components/schemas/RunStatus" },
                "currentStepIndex": { "type": "integer" },
                "completedStepCount": { "type": "integer" },
                "progress": { "oneOf": [{ "$ref": "#/components/schemas/Progress" }, { "type": "null" }] },
                "output": {},
                "error": { "type": ["string", "null"] },
                "labels": { "type": "object", "additionalProperties": { "type": "string" } },
                "startedAt": { "type": ["string", "null"] },
                "completedAt": { "type": ["string", "null"] },
                "createdAt": { "type": "string" },
                "isTerminal": { "type": "boolean" },
                "isWaiting": { "type": "boolean" },
                "isActive": { "type": "boolean" },
                "priority": { "type": "integer", "description": "Claim priority given at trigger time (durably for Rust extension); absent when 0" },
                "parentRunId": { "type": "string", "description": "The run that invoked this one as a child run (durably for Rust extension); absent otherwise" }
            }, "required": ["id", "jobName", "input", "status", "currentStepIndex", "completedStepCount",
                "progress", "output", "error", "labels", "startedAt", "completedAt", "createdAt", "isTerminal",
                "isWaiting", "isActive"] },
            "Log": { "type": "object", "properties": {
                "id": { "type": "string" }, "runId": { "type": "string" },
                "stepName": { "type": ["string", "null"] },
                "level": { "type": "string", "enum": ["info", "warn", "error"] },
                "message": { "type": "string" }, "data": {}, "createdAt": { "type": "string" }
            }},
            "StepAttempt": { "type": "object", "required": ["id", "runId", "stepName", "stepIndex",
                "leaseGeneration", "status", "metadata", "startedAt", "completedAt", "error", "interruptionReason"],
                "properties": {
                "id": { "type": "string" }, "runId": { "type": "string" }, "stepName": { "type": "string" },
                "stepIndex": { "type": "integer" }, "leaseGeneration": { "type": "integer" },
                "status": { "type": "string", "enum": ["started", "completed", "failed"] },
                "metadata": {}, "startedAt": { "type": "string" },
                "completedAt": { "type": ["string", "null"] }, "error": { "type": ["string", "null"] },
                "interruptionReason": { "enum": ["lease-lost", "cancelled", "unknown", null] }
            }},
            "DurableWait": { "type": "object", "required": ["id", "runId", "name", "metadata", "status",
                "payload", "signalId", "createdAt", "deadlineAt", "outcome", "suspendedAt", "resolvedAt",
                "firstResumedAt", "inputWaitMs", "executionSlotWaitMs"],
                "properties": {
                "id": { "type": "string" }, "runId": { "type": "string" }, "name": { "type": "string" },
                "metadata": { "description": "JSON given when the wait was prepared, or null" },
                "status": { "type": "string", "enum": ["pending", "resolved", "cancelled", "closed"] },
                "payload": { "description": "The accepted signal's payload (JSON), or null" },
                "signalId": { "type": ["string", "null"] },
                "createdAt": { "type": "string" },
                "deadlineAt": { "type": ["string", "null"] },
                "outcome": { "enum": ["signal", "timeout", null] },
                "suspendedAt": { "type": ["string", "null"] },
                "resolvedAt": { "type": ["string", "null"] },
                "firstResumedAt": { "type": ["string", "null"] },
                "inputWaitMs": { "type": ["integer", "null"], "minimum": 0 },
                "executionSlotWaitMs": { "type": ["integer", "null"], "minimum": 0 }
            }},
            "SignalRequest": { "type": "object", "required": ["signalId", "payload"], "properties": {
                "signalId": { "type": "string", "minLength": 1, "pattern": NOT_BLANK,
                    "description": "The signal's idempotency id: not blank, no NUL character" },
                "payload": { "description": "Any JSON value (null included), stored as canonical JSON" }
            }},
            "SignalResponse": { "type": "object", "required": ["wait", "disposition"], "properties": {
                "wait": { "$ref": "#/components/schemas/DurableWait" },
                "disposition": { "type": "string", "enum": ["accepted", "duplicate"] }
            }},
            "Step": { "type": "object", "properties": {
                "id": { "type": "string" }, "runId": { "type": "string" }, "name": { "type": "string" },
                "index": { "type": "integer" },
                "status": { "type": "string", "enum": ["completed", "failed", "cancelled"] },
                "output": {}, "error": { "type": ["string", "null"] },
                "startedAt": { "type": "string" }, "completedAt": { "type": ["string", "null"] }
            }}
        }}
    })
}
