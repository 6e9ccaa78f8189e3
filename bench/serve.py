"""Latency of `mlxinterp serve` on a live server (uvicorn on a loopback port, HTTP like a browser):

One command, every number from one run (the matmul rate too, so the ratios hold under load):
    python -m bench serve --save bench/results

- the first full-vocabulary logit-lens view of a 20-token prompt after the server is up (it has run its
  start-up warm-up, as `mlxinterp serve` does), then further views with other prompts; each split into the
  unembedding matmul (timed alone, same shapes, to put beside the machine's measured matmul rate) and the rest;
- the steering playground: time from sending the request to the first steered token arriving, for the first
  request with a vector and for slider moves after it (the unsteered side is remembered, so a slider move
  recomputes only the steered side).
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

import mlx.core as mx

from mlxinterp.cli.serve import WARMUP_PROMPT
from mlxinterp.core.platform import matmul_gflops
from mlxinterp.serve.engine import warm_up

# The first is 20 tokens with BOS on Gemma 3 (the others 17-19; counts in the result); the warm-up uses the
# CLI's own prompt, so no view below repeats it.
LENS_PROMPTS = ["In 1969 Neil Armstrong became the first person to walk on the surface of the",
                "The Colosseum is an ancient amphitheatre in the centre of the city of Rome, in",
                "Water boils at one hundred degrees Celsius at sea level, but at high altitude it",
                "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm"]
STEER_PROMPT = "I think that the weather today is"
LENS_TARGET_S = 3.0  # first full-vocabulary lens view of a 20-token prompt (docs/serve.md)
FIRST_TOKEN_TARGET_S = 0.5  # steering playground: first generated token after the request
CONTRAST = {"positive": ["I love this. It is wonderful, happy and bright.", "What a great, joyful day."],
            "negative": ["I hate this. It is terrible, sad and dark.", "What an awful, miserable day."]}


class _Live:
    def __init__(self, app):
        import uvicorn  # optional dependency (the serve extra)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)

    def post(self, path: str, body: dict) -> tuple[float, dict]:
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = json.loads(r.read())
        conn.close()
        if r.status != 200:
            raise RuntimeError(f"{path}: {r.status} {data}")
        return time.perf_counter() - t0, data

    def first_steered_token(self, body: dict) -> tuple[float, float, str]:
        """(seconds to the first steered token, seconds to the end, steered text) for one /api/steer request."""
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        conn.request("POST", "/api/steer", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            raise RuntimeError(f"/api/steer: {r.status} {r.read()[:300]!r}")
        first, text = None, []
        for line in r:  # chunked NDJSON, read as it arrives
            e = json.loads(line)
            if e.get("event") == "token" and e["side"] == "steered":
                first = first if first is not None else time.perf_counter() - t0
                text.append(e["text"])
            if e.get("event") == "error":
                raise RuntimeError(e["error"])
        conn.close()
        return first, time.perf_counter() - t0, "".join(text)


def _mlx_lm_first_token_seconds(hm, ids: list[int]) -> float:
    """The floor: mlx-lm's own stream_generate, no taps, no server, to its first token (prefill included)."""
    from mlx_lm import stream_generate

    t0 = time.perf_counter()
    for _ in stream_generate(hm.model, hm.tokenizer, ids, max_tokens=1):
        break
    return time.perf_counter() - t0


def _unembed_seconds(hm, n_rows: int, rounds: int = 3) -> float:
    """The lens's unembedding alone: [n_rows, d_model] through the final norm and the tied/untied head."""
    h = mx.random.normal((n_rows, hm.info.d_model))
    mx.eval(hm.unembed(h))
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        mx.eval(hm.unembed(h))
        best = min(best, time.perf_counter() - t0)
    return best


def bench_serve(hm, lens_rounds: int = 3, slider_moves: int = 5, vector_path: Path | None = None,
                progress=None) -> dict:
    from mlxinterp.serve.app import ServeConfig, create_app  # optional dependency (starlette, the serve extra)

    say = progress or (lambda msg: None)
    lengths = {p: len(hm.tokens(p).ids[0].tolist()) for p in LENS_PROMPTS}
    vec_dir = vector_path.parent if vector_path else Path("results")
    app = create_app(hm, ServeConfig(vectors_dir=vec_dir))
    ex = app.state.explorer
    say("warm-up (as mlxinterp serve does before it prints its URL)")
    t0 = time.perf_counter()
    ex.worker.run_sync(warm_up, hm, WARMUP_PROMPT, ex.limits)
    warmup = time.perf_counter() - t0
    res: dict = {"model": hm.info.slug, "warmup_seconds": warmup, "load_average_start": list(os.getloadavg()),
                 "lens_prompt_tokens": lengths}
    with _Live(app) as live:
        views = []
        for i, prompt in enumerate(LENS_PROMPTS[: max(1, lens_rounds + 1)]):
            say(f"lens view {i + 1}")
            wall, data = live.post("/api/lens", {"prompt": prompt, "target": " Paris", "top_k": 8})
            views.append({"wall_seconds": wall, "server_seconds": data["seconds"], "tokens": len(data["tokens"])})
        n_rows = hm.info.n_layers * views[0]["tokens"]
        say("unembedding alone and the matmul rate")
        unembed = _unembed_seconds(hm, n_rows)
        flops = 2 * n_rows * hm.info.d_model * hm.info.vocab_size
        rate512, rate_big = matmul_gflops(512), matmul_gflops(2048)
        res["lens"] = {"first_view": views[0], "later_views": views[1:],
                       "later_median_wall_seconds": statistics.median(v["wall_seconds"] for v in views[1:]) if views[1:] else None,
                       "rows": n_rows, "unembed_gflop": flops / 1e9, "unembed_seconds": unembed,
                       "unembed_gflops": flops / unembed / 1e9, "machine_matmul_gflops_512": rate512,
                       "machine_matmul_gflops_2048": rate_big,
                       "first_view_over_unembed": views[0]["wall_seconds"] / unembed,
                       # the whole view (forward, unembedding, top-k / rank / entropy, JSON) as a matmul rate:
                       # the 120 GFLOP of unembedding over the first view's wall time, beside the machine's rate
                       "first_view_gflops": flops / views[0]["wall_seconds"] / 1e9,
                       "first_view_share_of_matmul_rate": flops / views[0]["wall_seconds"] / 1e9 / rate_big}
        vector = {"path": vector_path.name} if vector_path else CONTRAST
        layers = None if vector_path else [hm.info.n_layers // 2]
        body = {"prompt": STEER_PROMPT, "vector": vector, "layers": layers, "max_tokens": 16}
        say("steering: first request")
        first, total, text0 = live.first_steered_token({**body, "strength_pct": 10})
        moves = []
        ids = hm.tokens(STEER_PROMPT).ids[0].tolist()
        for k in range(slider_moves):
            say(f"steering: slider move {k + 1}")
            f, t, _ = live.first_steered_token({**body, "strength_pct": 12 + 4 * k})
            # the floor, measured right after on the idle server: mlx-lm's own first token for this prompt
            floor = ex.worker.run_sync(_mlx_lm_first_token_seconds, hm, ids)
            moves.append({"first_token_seconds": f, "total_seconds": t, "mlx_lm_first_token_seconds": floor,
                          "first_token_over_mlx_lm": f / floor})
        res["steering"] = {"vector": str(vector_path) if vector_path else "contrast prompts (extracted on first use)",
                           "first_request": {"first_token_seconds": first, "total_seconds": total},
                           "slider_moves": moves,
                           "slider_median_first_token_seconds": statistics.median(m["first_token_seconds"] for m in moves),
                           "slider_median_first_token_over_mlx_lm": statistics.median(
                               m["first_token_over_mlx_lm"] for m in moves),
                           "max_tokens": 16}
    res["load_average_end"] = list(os.getloadavg())
    first_token = res["steering"]["first_request"]["first_token_seconds"]
    res["targets"] = {
        "lens_first_view_seconds": {"value": res["lens"]["first_view"]["wall_seconds"], "target": LENS_TARGET_S},
        "steering_first_token_seconds": {"value": first_token, "target": FIRST_TOKEN_TARGET_S},
        "steering_slider_first_token_seconds": {"value": res["steering"]["slider_median_first_token_seconds"],
                                                "target": FIRST_TOKEN_TARGET_S}}
    for t in res["targets"].values():
        t["met"] = t["value"] <= t["target"]
    return res
