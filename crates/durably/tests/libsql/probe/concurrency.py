#!/usr/bin/env python3
# Concurrency of the test server: python3 concurrency.py http://127.0.0.1:18080
import json, sys, time, urllib.request, threading
url = sys.argv[1]
def run(reqs):
    body = json.dumps({"baton": None, "requests": reqs}).encode()
    try:
        r = urllib.request.urlopen(urllib.request.Request(url + "/v2/pipeline", body, {"content-type": "application/json"}))
        return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return {"http": e.code, "body": e.read().decode()[:200]}
def ex(sql): return {"type": "execute", "stmt": {"sql": sql}}
run([ex("CREATE TABLE IF NOT EXISTS c (w integer, i integer)"), ex("DELETE FROM c")])
# 2,000 rows: the cross join below reads 4 million (tursodb 0.7 has no recursive CTEs).
run([ex("CREATE TABLE IF NOT EXISTS big (x integer)"), ex("DELETE FROM big"),
     ex("INSERT INTO big VALUES " + ",".join(f"({i})" for i in range(2000)))])
slow = "SELECT count(*) FROM big a, big b"
# 1. Does a slow request block a fast one?
t0 = time.time(); out = {}
def slowq(): out["slow"] = run([ex(slow)]); out["slow_t"] = time.time() - t0
th = threading.Thread(target=slowq); th.start(); time.sleep(0.05)
t1 = time.time(); run([ex("SELECT 1")]); fast = time.time() - t1
th.join()
print(f"slow request alone took {out['slow_t']:.3f}s; a 'SELECT 1' sent 50 ms after it took {fast:.3f}s")
# 2. Concurrent transactional batches
errors = []
def txn(w):
    steps = [{"stmt": {"sql": "BEGIN IMMEDIATE"}}]
    steps.append({"condition": {"type": "ok", "step": 0}, "stmt": {"sql": f"INSERT INTO c VALUES ({w}, 1)"}})
    steps.append({"condition": {"type": "ok", "step": 1}, "stmt": {"sql": slow}})
    steps.append({"condition": {"type": "ok", "step": 2}, "stmt": {"sql": f"INSERT INTO c VALUES ({w}, 2)"}})
    steps.append({"condition": {"type": "ok", "step": 3}, "stmt": {"sql": "COMMIT"}})
    steps.append({"condition": {"type": "and", "conds": [{"type": "ok", "step": 0}, {"type": "not", "cond": {"type": "ok", "step": 4}}]}, "stmt": {"sql": "ROLLBACK"}})
    r = run([{"type": "batch", "batch": {"steps": steps}}])
    if "http" in r: errors.append((w, r)); return
    res = r["results"][0]
    if res["type"] != "ok": errors.append((w, res)); return
    errs = [e for e in res["response"]["result"]["step_errors"] if e]
    if errs: errors.append((w, errs))
ths = [threading.Thread(target=txn, args=(w,)) for w in range(8)]
t0 = time.time(); [t.start() for t in ths]; [t.join() for t in ths]
print(f"8 concurrent BEGIN IMMEDIATE batches: {time.time()-t0:.2f}s, {len(errors)} failed")
for e in errors[:5]: print("  ", json.dumps(e)[:300])
rows = run([ex("SELECT w, group_concat(i) FROM c GROUP BY w ORDER BY w")])["results"][0]["response"]["result"]["rows"]
print("  rows per writer:", [[c["value"] for c in r] for r in rows])
# 3. Concurrent plain autocommit writes
run([ex("DELETE FROM c")])
errors.clear()
def plain(w):
    for i in range(50):
        r = run([ex(f"INSERT INTO c VALUES ({w}, {i})")])
        if "http" in r or r["results"][0]["type"] != "ok": errors.append(r)
ths = [threading.Thread(target=plain, args=(w,)) for w in range(8)]
t0 = time.time(); [t.start() for t in ths]; [t.join() for t in ths]
n = run([ex("SELECT count(*) FROM c")])["results"][0]["response"]["result"]["rows"][0][0]["value"]
print(f"8 writers x 50 autocommit inserts: {time.time()-t0:.2f}s, {len(errors)} errors, {n} rows")
for e in errors[:3]: print("  ", json.dumps(e)[:300])

# 4. Is a whole pipeline serialized, or only each statement?
out = {}
def a(): out["a"] = run([ex("BEGIN"), ex(slow), ex("INSERT INTO c VALUES (99, 99)"), ex("COMMIT")])
th = threading.Thread(target=a); th.start(); time.sleep(0.1)
out["b"] = run([ex("ROLLBACK")])
th.join()
print("pipeline A = [BEGIN, slow, INSERT, COMMIT] as separate execute requests; B = [ROLLBACK] sent 100 ms later")
print("  A:", [r["type"] if r["type"] == "ok" else r["error"]["message"] for r in out["a"]["results"]])
print("  B:", [r["type"] if r["type"] == "ok" else r["error"]["message"] for r in out["b"]["results"]])
