"""`mlxinterp serve`: the model loaded once, explored in a browser (docs/serve.md).

engine: each view's computation (lens grid, attention, steering stream, patching) as JSON-ready dicts;
worker: one computation at a time on a model thread, a short queue, "busy" beyond it;
files: the results and vectors directories, and nothing outside them;
app: the Starlette application (page, static files, /api/...), with its request guard.
Needs the `serve` extra (starlette, uvicorn): pip install 'mlxinterp[serve]'.
"""
