#!/usr/bin/env python3
# Every statement of the SQLite schema ladders on the test server:
# python3 schema.py http://127.0.0.1:18080
import re, json, sys, urllib.request
import os
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../src/store/")
def literals(text):
    out = []
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"', text, re.S):
        s = m.group(1)
        s = re.sub(r'\\\n\s*', '', s)
        s = s.replace('\\"', '"').replace('\\n', '\n')
        out.append(s)
    return out
schema = open(root + "schema.rs").read()
mig = open(root + "migrations.rs").read()
stmts = []
for name in ["SCHEMA_V1", "SCHEMA_V2", "SCHEMA_V3", "SCHEMA_V4"]:
    body = re.search(r'pub\(crate\) const %s: &\[&str\] = &\[(.*?)\n\];' % name, schema, re.S).group(1)
    stmts += [(name, s) for s in literals(body)]
own = re.search(r'pub\(crate\) const SQLITE_OWN: Ladder = Ladder \{(.*?)\n\};', mig, re.S).group(1)
own = own.split("migrations:")[1]
v1 = re.search(r'version: 1,\s*statements: &\[(.*?)\],\s*\}', own, re.S).group(1)
stmts += [("SQLITE_OWN v1", s) for s in literals(v1)]
for name in ["SQLITE_SCHEDULES", "SQLITE_CHILDREN"]:
    body = re.search(r'pub\(crate\) const %s: &\[&str\] = &\[(.*?)\n\];' % name, mig, re.S).group(1)
    stmts += [(name, s) for s in literals(body)]
url = sys.argv[1]
ok = 0
for name, s in stmts:
    req = {"baton": None, "requests": [{"type": "execute", "stmt": {"sql": s}}]}
    r = urllib.request.urlopen(urllib.request.Request(url + "/v2/pipeline", json.dumps(req).encode(), {"content-type": "application/json"}))
    res = json.loads(r.read())["results"][0]
    if res["type"] == "ok":
        ok += 1
    else:
        print("FAIL", name, s[:120].replace("\n", " "), "->", res["error"])
print(f"{ok}/{len(stmts)} statements ok")
