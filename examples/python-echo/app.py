"""The smallest useful agent, in Python: it answers with what it was sent, the version it ran
on and the `marker` value from its deployment's configuration.

Build and deploy (from this folder, with `gust serve` running):

    gust build
    gust config python-echo --set marker=hello
    gust deploy python-echo build/python-echo.wasm
    gust run python-echo '{"say": "hi"}'
"""

import gust


@gust.agent
def run(input, ctx):
    return {"input": input, "version": ctx.version, "marker": ctx.config("marker")}
