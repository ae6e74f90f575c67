"""Schemathesis hooks for fuzzing the durably HTTP API (loaded by fuzz/run.sh).

One narrow exception, for a deliberate and documented behaviour of the server:

`limit` and `offset` of `GET /runs` are documented as non-negative integers (what clients
should send), but the server reads them as upstream @coji/durably 0.15 does, with JavaScript's
`parseInt` (shared/spec/UPSTREAM.md: `"5abc"` is 5, `"1.5"` is 1; tested in
crates/durably/tests/http.rs, `runs_filters_and_pages`). Negative testing then sees such values
accepted. A failure of `negative_data_rejection` is dropped only when the values it mutated are
`limit`/`offset` and every one of them is a value that parseInt reads as a non-negative integer;
any other accepted invalid value, and every other check, still fails the run.
"""

from __future__ import annotations

import re

import schemathesis
from schemathesis.core.failures import AcceptedNegativeData

# Rust's `str::trim_start` (Unicode White_Space), which the server's `parse_js_int` uses.
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B)) + "\u2028\u2029\u202f\u205f\u3000"
_JS_INT = re.compile(r"([+-]?)([0-9]+)")
_PAGE_PARAMETERS = {"limit", "offset"}


def server_reads_as_page_number(value: object) -> bool:
    """Mirror of `parse_js_int` in crates/durably/src/http/mod.rs: `Some(_)` or empty."""
    if isinstance(value, (list, tuple)):
        # the server reads the first value of a repeated parameter
        return not value or server_reads_as_page_number(value[0])
    text = "" if value is None else str(value)
    if text == "":
        return True  # an empty value is "no limit"
    match = _JS_INT.match(text.lstrip(_WHITE_SPACE))
    if match is None:
        return False
    sign, digits = match.groups()
    return sign != "-" or set(digits) == {"0"}


def _mutated_parameters(case) -> set[str] | None:
    meta = case.meta
    if meta is None:
        return None
    data = meta.phase.data
    names = set()
    if getattr(data, "parameter", None):
        names.add(data.parameter)
    for mutation in getattr(data, "mutations", ()) or ():
        if getattr(mutation, "parameter", None):
            names.add(mutation.parameter)
    location = getattr(data, "parameter_location", None)
    if location is not None and getattr(location, "name", "").upper() != "QUERY":
        return None
    return names or None


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    """Keep every failure but an accepted `limit`/`offset` that parseInt reads as a page number."""
    if not isinstance(failure, AcceptedNegativeData):
        return True
    if case.operation.label != "GET /runs":
        return True
    mutated = _mutated_parameters(case)
    if not mutated or not mutated <= _PAGE_PARAMETERS:
        return True
    query = case.query or {}
    if all(server_reads_as_page_number(query.get(name)) for name in mutated):
        shown = {name: query.get(name) for name in sorted(mutated)}
        print(f"fuzz/hooks.py: accepted as upstream's parseInt reads it (not a failure): GET /runs {shown}")
        return False
    return True
