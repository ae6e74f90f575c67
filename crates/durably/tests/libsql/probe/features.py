#!/usr/bin/env python3
# SQL features the SQLite store uses, on the test server (run schema.py first):
# python3 features.py http://127.0.0.1:18080
import json, sys, urllib.request
url = sys.argv[1]
def run(reqs):
    body = json.dumps({"baton": None, "requests": reqs}).encode()
    try:
        r = urllib.request.urlopen(urllib.request.Request(url + "/v2/pipeline", body, {"content-type": "application/json"}))
        return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return {"http": e.code, "body": e.read().decode()[:200]}
def ex(sql, args=()):
    a = []
    for v in args:
        if v is None: a.append({"type": "null"})
        elif isinstance(v, int): a.append({"type": "integer", "value": str(v)})
        else: a.append({"type": "text", "value": v})
    return {"type": "execute", "stmt": {"sql": sql, "args": a}}
def show(label, sql, args=()):
    r = run([ex(sql, args)])
    if "http" in r: print(f"{label}: HTTP {r['http']} {r['body']}"); return
    res = r["results"][0]
    if res["type"] == "ok":
        rows = [[c.get("value", c.get("base64")) for c in row] for row in res["response"]["result"]["rows"]]
        print(f"{label}: ok rows={rows}")
    else:
        print(f"{label}: ERROR {res['error']}")
show("insert run", "INSERT OR FAIL INTO durably_runs (id, job_name, input, status, labels, created_at, updated_at, concurrency_key) VALUES ('r1','j','{}','pending','{\"a\":\"b\"}','2024','2024','k') RETURNING id, lease_generation")
show("INSERT OR FAIL dup", "INSERT OR FAIL INTO durably_runs (id, job_name, input, status, labels, created_at, updated_at) VALUES ('r1','j','{}','pending','{}','t','t')")
show("INSERT OR IGNORE dup", "INSERT OR IGNORE INTO durably_runs (id, job_name, input, status, labels, created_at, updated_at) VALUES ('r1','j','{}','pending','{}','t','t') RETURNING id")
show("partial unique index (pending,key)", "INSERT INTO durably_runs (id, job_name, input, status, labels, created_at, updated_at, concurrency_key) VALUES ('r2','j','{}','pending','{}','2025','2025','k')")
show("partial unique index, other status", "INSERT INTO durably_runs (id, job_name, input, status, labels, created_at, updated_at, concurrency_key) VALUES ('r2','j','{}','leased','{}','2025','2025','k')")
show("json_extract", "SELECT json_extract(labels, '$.a'), json_extract('{\"durably\":{\"debounce\":{\"key\":\"x\"}}}', '$.durably.debounce.key') FROM durably_runs WHERE id = 'r1'")
show("json_each", "SELECT id FROM durably_runs WHERE job_name IN (SELECT value FROM json_each(?))", ['["j"]'])
show("row value IN json_each", "SELECT count(*) FROM durably_runs r WHERE ('a','b') IN (SELECT key, value FROM json_each(r.labels))")
show("INDEXED BY status_created", "SELECT r.id FROM durably_runs r INDEXED BY idx_durably_runs_status_created WHERE r.status = 'pending' ORDER BY r.created_at ASC, r.rowid ASC LIMIT 1")
show("INDEXED BY partial", "SELECT r.id FROM durably_runs r INDEXED BY durably_rs_runs_pending_priority WHERE r.status = 'pending' AND r.rs_priority IS NOT NULL ORDER BY r.rs_priority DESC, r.created_at ASC, r.rowid ASC LIMIT 1")
show("INDEXED BY missing", "SELECT 1 FROM durably_runs INDEXED BY no_such_index")
show("NOT INDEXED", "SELECT count(*) FROM durably_runs NOT INDEXED")
show("rowid", "SELECT rowid, _rowid_ FROM durably_runs")
show("ON CONFLICT DO UPDATE excluded", "INSERT INTO durably_rs_schedules (name, job_name, cron, time_zone, input, labels, catch_up, next_fire_at, created_at, updated_at) VALUES ('s','j','* * * * *','UTC','{}','{}','skip','n','c','u') ON CONFLICT (name) DO UPDATE SET cron = excluded.cron RETURNING name, cron")
show("ON CONFLICT again", "INSERT INTO durably_rs_schedules (name, job_name, cron, time_zone, input, labels, catch_up, next_fire_at, created_at, updated_at) VALUES ('s','j','0 * * * *','UTC','{}','{}','skip','n','c','u') ON CONFLICT (name) DO UPDATE SET cron = excluded.cron RETURNING name, cron")
show("ON CONFLICT DO NOTHING", "INSERT INTO durably_rs_schedules (name, job_name, cron, time_zone, input, labels, catch_up, next_fire_at, created_at, updated_at) VALUES ('s','j','x','UTC','{}','{}','skip','n','c','u') ON CONFLICT DO NOTHING RETURNING name")
show("UPDATE RETURNING", "UPDATE durably_runs SET lease_generation = lease_generation + 1 WHERE id = 'r1' AND lease_generation = ?1 RETURNING lease_generation", [0])
show("UPDATE RETURNING fenced out", "UPDATE durably_runs SET lease_generation = lease_generation + 1 WHERE id = 'r1' AND lease_generation = ?1 RETURNING lease_generation", [0])
show("DELETE RETURNING", "DELETE FROM durably_rs_schedules WHERE name = 's' RETURNING name")
show("UNION ALL + LIMIT -1 OFFSET", "SELECT id FROM (SELECT id, created_at FROM durably_runs WHERE status = 'pending' UNION ALL SELECT id, created_at FROM durably_runs WHERE status = 'leased') ORDER BY created_at DESC LIMIT -1 OFFSET 0")
show("anonymous ? params", "SELECT ?, ?, ?3", ["a", "b", "c"])
show("coalesce/min/exists", "SELECT COALESCE(NULL, 1), min(2, 3), EXISTS (SELECT 1 FROM durably_runs)")
show("CTE", "WITH x AS (SELECT 1 AS a) SELECT a FROM x")
show("UPDATE FROM", "UPDATE durably_runs SET status = 'pending' FROM (SELECT 'r1' AS id) AS s WHERE durably_runs.id = s.id")
show("BEGIN IMMEDIATE", "BEGIN IMMEDIATE")
show("ROLLBACK", "ROLLBACK")
show("BEGIN EXCLUSIVE", "BEGIN EXCLUSIVE")
show("COMMIT", "COMMIT")
show("SAVEPOINT", "SAVEPOINT sp")
show("RELEASE", "RELEASE sp")
show("PRAGMA journal_mode", "PRAGMA journal_mode")
show("PRAGMA foreign_keys", "PRAGMA foreign_keys")
show("PRAGMA busy_timeout", "PRAGMA busy_timeout")
show("EXPLAIN QUERY PLAN", "EXPLAIN QUERY PLAN SELECT id FROM durably_runs WHERE status = 'pending' ORDER BY created_at LIMIT 1")
show("sqlite_master partial", "SELECT name, sql FROM sqlite_master WHERE name = 'durably_rs_runs_pending_priority'")
show("sqlite_version", "SELECT sqlite_version()")
show("multi statement", "SELECT 1; SELECT 2")
show("double precision col", "SELECT typeof(deadline_ms) FROM durably_waits LIMIT 1")
show("float arg", "SELECT 1")
r = run([{"type": "execute", "stmt": {"sql": "SELECT typeof(?), ?", "args": [{"type": "float", "value": 1.5}, {"type": "blob", "base64": "AQI="}]}}])
print("float+padded blob args:", json.dumps(r["results"][0])[:300])
r = run([{"type": "execute", "stmt": {"sql": "SELECT ?", "args": [{"type": "integer", "value": 5}]}}])
print("integer as JSON number:", json.dumps(r)[:300])
