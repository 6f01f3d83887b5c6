"""Test guest: the input's `op` picks what the Python SDK is made to do."""

import gust
from gust import http


def explode(depth):
    if depth == 0:
        raise ValueError("boom")
    explode(depth - 1)


def tokens(url, tail):
    """The streaming form: yields chunks around a wait on `url`, then returns `tail`."""
    yield "first "
    http.get(url)
    yield "second"
    return tail


# Counts the calls this instance served: every call gets a fresh instance, so always 1.
served = 0


@gust.agent
def run(input, ctx):
    global served
    op = (input or {}).get("op")
    if op == "count":
        served += 1
        return {"served": served}
    if op == "context":
        return {
            "agent": ctx.agent,
            "version": ctx.version,
            "run_id": ctx.run_id,
            "mode": ctx.mode,
            "attempt": ctx.attempt,
            "content_type": ctx.content_type,
            "has_deadline": ctx.deadline is not None,
            "config": ctx.config(input.get("key", "marker")),
        }
    if op == "raise":
        explode(3)
    if op == "invalid":
        raise gust.InvalidInput("the probe was asked to refuse")
    if op == "failed":
        raise gust.Failed("the probe was asked to fail")
    if op == "unserializable":
        return {"set": {1, 2}}
    if op == "steps":
        for step in range(1, 4):
            ctx.info(f"step {step}")
            ctx.progress(step / 3, f"step {step} of 3")
        return {"steps": 3}
    if op == "stream":
        # Emits, waits on `url` (a gate the test holds), emits again.
        ctx.emit("first ")
        http.get(input["url"])
        ctx.emit(b"second")
        return None
    if op == "generate":
        return tokens(input["url"], input.get("tail"))
    if op == "fetch":
        try:
            timeout = input.get("timeout")
            answer = http.get(input["url"], timeout=tuple(timeout) if isinstance(timeout, list) else timeout)
        except ValueError as e:
            return {"invalid": str(e)}
        except http.Denied as e:
            return {"denied": str(e)}
        except http.HttpError as e:
            return {"error": str(e)}
        return {"status": answer.status, "body": answer.text()}
    if op == "post":
        answer = http.post(input["url"], json={"sent": input.get("payload")})
        return {"status": answer.status, "body": answer.json()}
    return {"echo": input}
