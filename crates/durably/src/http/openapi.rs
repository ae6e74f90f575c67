//! The OpenAPI 3.1 document served at `GET <base>/openapi.json` (hand-written; paths are
//! relative to wherever the router is nested).

use serde_json::{Value, json};

fn run_id_param() -> Value {
    json!({
        "name": "runId", "in": "query", "required": true,
        "schema": { "type": "string" }, "description": "Run id (ULID)."
    })
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

fn sse_ok(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "text/event-stream": { "schema": { "type": "string" } } }
    })
}

fn run_route(summary: &str, operation_id: &str, ok: Value, conflict: Option<&str>) -> Value {
    let mut responses = json!({
        "200": ok,
        "400": error_response("runId query parameter is required"),
        "404": error_response("Run not found"),
        "500": error_response("Storage failure")
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

/// The document.
pub(crate) fn document() -> Value {
    let success = json!({
        "type": "object", "required": ["success"],
        "properties": { "success": { "type": "boolean", "const": true } }
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "durably HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The wire protocol of @coji/durably 0.15's createDurablyHandler (nine routes) plus GET /logs, GET /jobs and GET /openapi.json. Paths are relative to the base path the router is nested under (the demo uses /api/durably). SSE streams send only unnamed `data: <json>` messages."
        },
        "paths": {
            "/trigger": { "post": {
                "summary": "Trigger a run of a registered job",
                "operationId": "trigger",
                "requestBody": { "required": true, "content": { "application/json": {
                    "schema": { "$ref": "#/components/schemas/TriggerRequest" } } } },
                "responses": {
                    "200": json_ok("Run created, or an existing one returned", json!({ "$ref": "#/components/schemas/TriggerResponse" })),
                    "400": error_response("jobName missing, invalid JSON, invalid input, labels or options"),
                    "404": error_response("Job not found: <jobName>"),
                    "409": error_response("A pending run already exists for the concurrency key"),
                    "413": error_response("Request body too large")
                }
            }},
            "/runs": { "get": {
                "summary": "List runs, newest first (a bare array)",
                "operationId": "listRuns",
                "parameters": [
                    { "name": "jobName", "in": "query", "schema": { "type": "array", "items": { "type": "string" } }, "style": "form", "explode": true },
                    { "name": "status", "in": "query", "schema": { "type": "array", "items": { "$ref": "#/components/schemas/RunStatus" } }, "style": "form", "explode": true },
                    { "name": "label.<key>", "in": "query", "schema": { "type": "string" }, "description": "Any number of label filters (AND)." },
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 0 } },
                    { "name": "offset", "in": "query", "schema": { "type": "integer", "minimum": 0 } }
                ],
                "responses": {
                    "200": json_ok("Runs", json!({ "type": "array", "items": { "$ref": "#/components/schemas/ClientRun" } })),
                    "400": error_response("Invalid status, limit, offset or label key")
                }
            }},
            "/run": {
                "get": run_route("Get one run", "getRun", json_ok("The run", json!({ "$ref": "#/components/schemas/ClientRun" })), None),
                "delete": run_route("Delete a terminal run", "deleteRun", json_ok("Deleted", success.clone()), Some("Cannot delete pending/leased run"))
            },
            "/steps": { "get": run_route("The run's persisted steps by index", "getSteps",
                json_ok("Steps", json!({ "type": "array", "items": { "$ref": "#/components/schemas/Step" } })), None) },
            "/logs": { "get": run_route("The run's persisted logs, oldest first (durably for Rust extension)", "getLogs",
                json_ok("Logs", json!({ "type": "array", "items": { "$ref": "#/components/schemas/Log" } })), None) },
            "/retrigger": { "post": run_route("Create a new run with the same input", "retrigger",
                json_ok("The new run", json!({ "type": "object", "required": ["success", "runId"],
                    "properties": { "success": { "type": "boolean", "const": true }, "runId": { "type": "string" } } })),
                Some("Cannot retrigger pending/leased run")) },
            "/cancel": { "post": run_route("Cancel a pending or leased run", "cancel",
                json_ok("Cancelled", success), Some("Cannot cancel a terminal run")) },
            "/subscribe": { "get": run_route("SSE: the run's current state, then its live events; ends after the terminal event", "subscribe",
                sse_ok("data: <full event JSON> messages"), None) },
            "/runs/subscribe": { "get": {
                "summary": "SSE: slim live events of all runs; never ends by itself",
                "operationId": "subscribeRuns",
                "parameters": [
                    { "name": "jobName", "in": "query", "schema": { "type": "array", "items": { "type": "string" } }, "style": "form", "explode": true },
                    { "name": "label.<key>", "in": "query", "schema": { "type": "string" } }
                ],
                "responses": { "200": sse_ok("data: <slim event JSON> messages") }
            }},
            "/jobs": { "get": {
                "summary": "Registered jobs (durably for Rust extension)",
                "operationId": "listJobs",
                "responses": { "200": json_ok("Jobs", json!({ "type": "array", "items": {
                    "type": "object", "required": ["name", "inputSchema"], "properties": {
                        "name": { "type": "string" },
                        "inputSchema": { "description": "JSON Schema of the job's input, null if the job has none" } } } })) }
            }},
            "/openapi.json": { "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": { "200": { "description": "OpenAPI 3.1 document", "content": { "application/json": {} } } }
            }}
        },
        "components": { "schemas": {
            "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
            "RunStatus": { "type": "string", "enum": ["pending", "leased", "completed", "failed", "cancelled"] },
            "TriggerRequest": { "type": "object", "required": ["jobName"], "properties": {
                "jobName": { "type": "string" },
                "input": {},
                "idempotencyKey": { "type": "string" },
                "concurrencyKey": { "type": "string" },
                "labels": { "type": "object", "additionalProperties": { "type": "string" } },
                "coalesce": { "type": "string", "enum": ["skip"] }
            }},
            "TriggerResponse": { "type": "object", "required": ["runId", "disposition"], "properties": {
                "runId": { "type": "string" },
                "disposition": { "type": "string", "enum": ["created", "idempotent", "coalesced"] }
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
                "isActive": { "type": "boolean" }
            }, "required": ["id", "jobName", "input", "status", "currentStepIndex", "completedStepCount",
                "progress", "output", "error", "labels", "startedAt", "completedAt", "createdAt", "isTerminal", "isActive"] },
            "Log": { "type": "object", "properties": {
                "id": { "type": "string" }, "runId": { "type": "string" },
                "stepName": { "type": ["string", "null"] },
                "level": { "type": "string", "enum": ["info", "warn", "error"] },
                "message": { "type": "string" }, "data": {}, "createdAt": { "type": "string" }
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
