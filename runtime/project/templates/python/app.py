"""The `{{agent}}` agent: greets whoever it is asked to.

`gust build` turns this module into a WebAssembly component; see README.md. Import what you
need here, at module level: componentize-py runs this module once at build time and snapshots
the result, and a running agent has no file system to import from.
"""

import gust


@gust.agent
def run(input, ctx):
    name = (input or {}).get("name")
    if not isinstance(name, str) or not name.strip():
        raise gust.InvalidInput("`name` is missing")
    ctx.info(f"greeting {name}")
    # Set per deployment: `gust config {{agent}} --set GREETING=Hi`, then deploy again.
    greeting = ctx.config("GREETING", "Hello")
    return {"greeting": f"{greeting}, {name}!", "version": ctx.version}
