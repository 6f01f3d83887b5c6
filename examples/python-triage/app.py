"""The reference agent flow in Python: triage a support ticket in several steps.

1. check the ticket;
2. classify it with a model, through an OpenAI-compatible chat-completions API;
3. look the customer up with a tool API;
4. decide priority and queue, and answer with a typed result.

The same flow as `examples/triage` (Rust) and `examples/js-triage`. Build and deploy (from this
folder, with `gust serve` running):

    gust build
    gust config python-triage --set MODEL_BASE_URL=https://api.openai.com/v1 \\
        --set MODEL=gpt-4o-mini --set MODEL_API_KEY=sk-… \\
        --set TOOLS_BASE_URL=https://crm.example.com \\
        --allow-host https://api.openai.com --allow-host https://crm.example.com
    gust deploy python-triage build/python-triage.wasm
    gust run python-triage '{"customer_id": "c-42", "subject": "Charged twice", "body": "My card was billed two times."}'
"""

import json
import re

import gust
from gust import http

CATEGORIES = ["billing", "outage", "account", "other"]
URGENCIES = ["low", "normal", "high"]


@gust.agent
def run(ticket, ctx):
    # 1. Check the ticket.
    if not isinstance(ticket, dict):
        raise gust.InvalidInput("the input is a ticket object")
    unknown = set(ticket) - {"customer_id", "subject", "body"}
    if unknown:
        raise gust.InvalidInput(f"unknown field `{sorted(unknown)[0]}`")
    customer_id = str(ticket.get("customer_id") or "").strip()
    subject = str(ticket.get("subject") or "").strip()
    if not customer_id or not subject:
        raise gust.InvalidInput("`subject` and `customer_id` are required")
    ctx.progress(0.1, "checked the ticket")

    # 2. Classify it with the model.
    classification = classify(subject, str(ticket.get("body") or ""), ctx)
    ctx.info(f"classified as {classification['category']} ({classification['urgency']})")
    ctx.progress(0.4, "classified")

    # 3. Look the customer up.
    customer = lookup(customer_id, ctx)
    ctx.info(f"customer {customer['id']} is on the {customer['tier']} tier")
    ctx.progress(0.7, "looked up the customer")

    # 4. Decide.
    urgency, tier = classification["urgency"], customer["tier"]
    if urgency == "high" or (urgency == "normal" and tier == "enterprise"):
        priority = "p1"
    elif urgency == "normal" or tier == "enterprise":
        priority = "p2"
    else:
        priority = "p3"
    queue = f"{classification['category']}-{'urgent' if priority == 'p1' else 'standard'}"
    ctx.progress(1.0, "routed")
    return {
        "category": classification["category"],
        "urgency": urgency,
        "summary": classification["summary"],
        "customer": customer,
        "priority": priority,
        "queue": queue,
    }


def setting(ctx, key):
    value = ctx.config(key)
    if value is None:
        raise gust.Failed(f"the deployment does not set {key}")
    return value


def classify(subject, body, ctx):
    base = setting(ctx, "MODEL_BASE_URL").rstrip("/")
    request = {
        "model": setting(ctx, "MODEL"),
        "temperature": 0,
        "response_format": {"type": "json_object"},
        "messages": [
            {
                "role": "system",
                "content": "You triage support tickets. Answer only JSON: "
                f'{{"category": one of {CATEGORIES}, "urgency": "low"|"normal"|"high", '
                '"summary": one sentence}.',
            },
            {"role": "user", "content": f"{subject}\n\n{body}"},
        ],
    }
    try:
        answer = http.post(
            f"{base}/chat/completions",
            headers={"authorization": f"Bearer {setting(ctx, 'MODEL_API_KEY')}"},
            json=request,
        )
    except http.HttpError as e:
        raise gust.Failed(f"the model could not be reached: {e}")
    if answer.status != 200:
        raise gust.Failed(f"the model answered HTTP {answer.status}")
    try:
        content = answer.json()["choices"][0]["message"]["content"]
        classification = json.loads(content)
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise gust.Failed(f"the model did not answer the JSON asked for: {e!r}")
    if classification.get("category") not in CATEGORIES:
        raise gust.Failed(f"the model chose an unknown category `{classification.get('category')}`")
    if classification.get("urgency") not in URGENCIES:
        raise gust.Failed(f"the model chose an unknown urgency `{classification.get('urgency')}`")
    return classification


def lookup(customer_id, ctx):
    base = setting(ctx, "TOOLS_BASE_URL").rstrip("/")
    safe_id = re.sub(r"[^A-Za-z0-9_-]", "", customer_id)
    try:
        answer = http.get(f"{base}/customers/{safe_id}")
    except http.HttpError as e:
        raise gust.Failed(f"the customer tool could not be reached: {e}")
    if answer.status == 200:
        return answer.json()
    if answer.status == 404:
        raise gust.InvalidInput(f"no customer `{customer_id}`")
    raise gust.Failed(f"the customer tool answered HTTP {answer.status}")
