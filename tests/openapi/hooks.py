"""Schemathesis hooks for gust's OpenAPI check (tests/e2e/openapi.rs starts the host, seeds it
and runs `st run` with these hooks).

The document cannot say which agents, runs and keys exist, nor generate a WebAssembly
component, so these hooks supply what the schema cannot:

- uploads carry a real component most of the time (or bytes that are not one);
- three of every four generated cases name a seeded agent, run or key instead of a random
  one, so that every operation can answer 2xx; the fourth keeps the generated value and
  exercises the 4xx answers;
- operations that change what is live (config, deploy, rollback, uploads, deleting
  versions) go to scratch agents, so the agent whose runs are polled and pushed stays
  deployed as seeded;
- the stateful phase gets no seeds: it follows the document's links from what it created;
- push URLs in configurations are the test's receiver;
- log follows (`follow=1`) are not generated: they stream until the host stops (the
  streaming is tested on its own, in tests/e2e/logs.rs);
- every answer is recorded (operation id and status) for the test to check that each
  operation got at least one 2xx.

The seeds come in environment variables the test sets (GUST_ST_*); the choices depend only
on the order of the cases, so a run with the same seed makes the same requests.
"""

import itertools
import json
import os

import schemathesis
from hypothesis import strategies as st

with open(os.environ["GUST_ST_COMPONENT"], "rb") as f:
    COMPONENT = f.read()
SEEDS = json.loads(os.environ["GUST_ST_SEEDS"])
RECORD = os.environ["GUST_ST_RECORD"]

# Uploads: the real component, now and then bytes that are not one (a 422 with diagnostics).
schemathesis.openapi.media_type(
    "application/wasm",
    st.sampled_from([COMPONENT, COMPONENT, COMPONENT, b"\0asm not a component"]),
)

# Where each operation's `{agent}` goes.
ROUTED = {
    "put_config": "scratch",
    "get_config": "scratch",
    "deploy": "scratch",
    "preview": "scratch",
    "rollback": "scratch",
    "upload": "scratch",
    "list_versions": "versions",
    "get_version": "versions",
    "delete_version": "versions",
}

_counters: dict[str, itertools.count] = {}
_pools = {
    "waiting": list(SEEDS["waiting_runs"]),
    "keys": list(SEEDS["keys"]),
}


def _operation_id(ctx) -> str:
    return ctx.operation.definition.raw.get("operationId", "") if ctx.operation else ""


def _seeded_turn(operation_id: str) -> bool:
    """Three cases of four, per operation, use seeds."""
    counter = _counters.setdefault(operation_id, itertools.count())
    return next(counter) % 4 != 3


@schemathesis.hook
def map_case(ctx, case):
    op = _operation_id(ctx)
    if op == "logs" and case.query and "follow" in case.query:
        case.query["follow"] = "0"
    # A generated push URL may name an address that never answers: every push test would
    # then wait out the push timeout. Pushes go to the test's receiver (the URL rules are
    # tested in tests/e2e/guard.rs).
    body = case.body if isinstance(case.body, dict) else None
    if op == "put_config" and body and isinstance(body.get("push"), dict) and "url" in body["push"]:
        body["push"]["url"] = SEEDS["push_url"]
    # The stateful phase follows the document's links (upload → deploy → run → poll) with
    # the ids the answers carry: it gets no seeds, so its chains are its own.
    if str(case.meta.phase.name) == "stateful" if case.meta else False:
        return case
    params = case.path_parameters
    if not params or not _seeded_turn(op):
        return case
    if "agent" in params:
        params["agent"] = SEEDS["agents"][ROUTED.get(op, "seeded")]
    if "version" in params:
        # Version 1 is live; version 2 is not, so the first delete of it succeeds.
        params["version"] = 2 if op == "delete_version" else 1
    if "run_id" in params:
        if op == "cancel_run" and _pools["waiting"]:
            params["run_id"] = _pools["waiting"].pop()
        elif op != "cancel_run":
            params["run_id"] = SEEDS["done_run"]
    if "key_id" in params and _pools["keys"]:
        params["key_id"] = _pools["keys"].pop()
    return case


@schemathesis.hook
def after_call(ctx, case, response):
    """One JSON line per answer: its phase, operation, path, status, and a JSON body (the test
    follows the stateful chain through the ids in the bodies)."""
    try:
        body = json.loads(response.content) if response.status_code < 300 else None
    except ValueError:
        body = None
    line = {
        "phase": str(case.meta.phase.name) if case.meta else "",
        "op": case.operation.definition.raw.get("operationId", case.operation.label),
        "path": case.formatted_path,
        "status": response.status_code,
        "body": body,
    }
    with open(RECORD, "a") as f:
        f.write(json.dumps(line) + "\n")
