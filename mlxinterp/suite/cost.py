"""What an experiment costs before it runs: forwards, tokens, generated tokens, unembedded positions.

A study declares `@experiment(..., cost=fn)` with `fn(config, model) -> Cost`,
counting from its config what it will compute (the loaded model gives layer
counts and prompt lengths: its tokenizer is cheap to run). Seconds come from three rates measured on this machine with
the model itself (`measure_rates`), so the estimate follows the machine and
the model size:

    seconds = forwards * forward_s + tokens * token_s + unembedded * unembed_s

forward_s is the fixed cost of one forward (every weight streamed once: on a
CPU a forward of a few tokens costs about as much as one of one token),
token_s the extra cost per token through the blocks, unembed_s the cost of one
position's full-vocabulary unembedding (for Gemma 3 270M, 2 x 168M of its
268M parameters per token: the reason `forward_last` unembeds only the
positions a metric reads). A generation step is a forward of one token per row
with one unembedded position per row.

A study with no declared cost falls back to the seconds the reference run
recorded for it (results/<slug>/<exp>/result.json "timings"), scaled by n when
both configs have one; that figure is from the reference's own machine.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from mlxinterp.core import io
from mlxinterp.core.errors import ResultsError


@dataclass(frozen=True)
class Cost:
    """Counts for one experiment at its config (whole run, not per item); `items` is its item count."""

    forwards: int = 0  # model calls (a batch of B rows is one call)
    tokens: int = 0  # token-rows through the blocks, left padding included (prompt and generated)
    generated: int = 0  # generated token-rows (counted in tokens too)
    unembedded: int = 0  # positions unembedded over the full vocabulary
    items: int = 1

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.forwards + other.forwards, self.tokens + other.tokens, self.generated + other.generated,
                    self.unembedded + other.unembedded, max(self.items, other.items))

    def __mul__(self, k: int) -> "Cost":
        return Cost(self.forwards * k, self.tokens * k, self.generated * k, self.unembedded * k, self.items)

    __rmul__ = __mul__

    def with_items(self, items: int) -> "Cost":
        return dataclasses.replace(self, items=max(1, int(items)))

    def per_item(self) -> dict[str, float]:
        return {k: round(getattr(self, k) / self.items, 1) for k in ("forwards", "tokens", "generated", "unembedded")}

    def seconds(self, rates: "Rates") -> float:
        return self.forwards * rates.forward_s + self.tokens * rates.token_s + self.unembedded * rates.unembed_s


def forward(rows: int, tokens_each: int, batch: int = 32, unembed_each: int = 1) -> Cost:
    """`rows` prompts of ~`tokens_each` tokens, `batch` per call, `unembed_each` positions unembedded per row
    (1 for forward_last, 0 for a capture that stops before the unembedding, tokens_each for full logits)."""
    calls = -(-rows // max(1, batch))
    return Cost(forwards=calls, tokens=rows * tokens_each, unembedded=rows * unembed_each)


def generation(rows: int, prompt_tokens: int, max_tokens: int, batch: int | None = None) -> Cost:
    """Greedy generation of `max_tokens` for `rows` prompts: one batched call per `batch` rows (all by default,
    as generate_batch does), the prompt once, then one forward per step with one unembedded position per row."""
    batch = rows if batch is None else batch
    calls = -(-rows // max(1, batch))
    return Cost(forwards=calls * (1 + max_tokens), tokens=rows * (prompt_tokens + max_tokens),
                generated=rows * max_tokens, unembedded=rows * max_tokens)


@dataclass(frozen=True)
class Rates:
    """Seconds per forward, per token and per unembedded position, measured on this machine (see module doc)."""

    forward_s: float
    token_s: float
    unembed_s: float
    load_average: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def measure_rates(hm: Any, tokens: int = 64, rounds: int = 3) -> Rates:
    """Time a 1-token and a `tokens`-token forward (keys and values only: MLX never computes logits nobody
    evaluates) and the unembedding of `tokens` positions; the fastest of `rounds` each. A few seconds."""
    import os

    ids = mx.array([[int(i) % hm.info.vocab_size for i in range(1000, 1000 + tokens)]], dtype=mx.int32)

    def blocks(n: int) -> float:
        cache = make_prompt_cache(hm.model)
        t0 = time.perf_counter()
        hm.model(ids[:, :n], cache=cache)
        mx.eval([c.state for c in cache])
        return time.perf_counter() - t0

    h = mx.random.normal((1, tokens, hm.info.d_model), key=mx.random.key(0))

    def unembed() -> float:
        t0 = time.perf_counter()
        mx.eval(hm.unembed(h))
        return time.perf_counter() - t0

    blocks(tokens), unembed()  # warm-up
    # The fastest of the rounds: on a shared machine the others measure its other users too.
    one = min(blocks(1) for _ in range(rounds))
    many = min(blocks(tokens) for _ in range(rounds))
    emb = min(unembed() for _ in range(rounds))
    return Rates(forward_s=one, token_s=max(many - one, 0.0) / (tokens - 1), unembed_s=emb / tokens,
                 load_average=round(os.getloadavg()[0], 2))


def declared(exp: Any, config: Any, model: Any) -> Cost | None:
    """The experiment's declared cost at this config, or None when it declares none."""
    fn = getattr(exp, "cost", None)
    if fn is None:
        return None
    c = fn(config, model)
    if not isinstance(c, Cost):
        raise ResultsError(f"experiment {exp.name!r}: its cost function returned {type(c).__name__}, not a Cost")
    return c


def reference_seconds(reference: Path | None, slug: str, exp: str, config: Any) -> float | None:
    """Seconds the reference run recorded for this experiment, scaled by n when both configs have one."""
    if reference is None:
        return None
    path = Path(reference) / slug / exp / "result.json"
    if not path.is_file():
        return None
    try:
        record = io.read_json(path)
    except ResultsError:
        return None
    seconds = (record.get("timings") or {}).get("seconds")
    if not isinstance(seconds, (int, float)):
        return None
    ref_n, n = (record.get("config") or {}).get("n"), getattr(config, "n", None)
    if isinstance(ref_n, int) and isinstance(n, int) and ref_n > 0:
        seconds *= n / ref_n
    return float(seconds)


def estimate(exp: Any, config: Any, model: Any, rates: Rates | None, reference: Path | None = None) -> dict:
    """One experiment's cost record: counts (whole run and per item) and estimated seconds, with their source."""
    c = declared(exp, config, model)
    if c is not None:
        out = {"source": "declared", **{k: getattr(c, k) for k in ("forwards", "tokens", "generated", "unembedded",
                                                                   "items")}, "per_item": c.per_item()}
        out["estimated_seconds"] = round(c.seconds(rates), 1) if rates is not None else None
        return out
    seconds = reference_seconds(reference, model.info.slug, exp.name, config)
    return {"source": "reference timings" if seconds is not None else "none",
            "estimated_seconds": round(seconds, 1) if seconds is not None else None}


def suite_estimate(exps: list, configs: dict[str, Any], model: Any, rates: Rates | None,
                   reference: Path | None = None) -> dict:
    """Per experiment and `total_seconds` (the experiments with an estimate; `unestimated` lists the others)."""
    per = {e.name: estimate(e, configs[e.name], model, rates, reference) for e in exps}
    known = [v["estimated_seconds"] for v in per.values() if v["estimated_seconds"] is not None]
    return {"model": model.info.slug, "rates": rates.to_dict() if rates else None, "experiments": per,
            "total_seconds": round(sum(known), 1),
            "unestimated": [k for k, v in per.items() if v["estimated_seconds"] is None]}


# The committed reference results in a checkout (scripts/run.sh runs from the repository root).
DEFAULT_REFERENCE = Path("results")


def duration(seconds: float) -> str:
    """1 h 41 min / 12 min / 40 s."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min" if s >= 60 else f"{s} s"


def summary_line(est: dict) -> str:
    """One line before a run: the total, where each part comes from, and the measured rates."""
    per = est["experiments"].values()
    n_decl = sum(v["source"] == "declared" for v in per)
    n_ref = sum(v["source"] == "reference timings" for v in per)
    r = est["rates"]
    rates = (f"; rates here: {r['forward_s'] * 1e3:.0f} ms/forward + {r['token_s'] * 1e3:.1f} ms/token + "
             f"{r['unembed_s'] * 1e3:.1f} ms/unembedded position (load average {r['load_average']:g})") if r else ""
    n = len(est["experiments"])
    if est["unestimated"] and len(est["unestimated"]) == n:  # "estimated 0 s" would read as a real figure
        return (f"no time estimate for {', '.join(est['unestimated'])} on {est['model']} (no declared cost and "
                f"no recorded timings in the reference results){rates}")
    missing = f"; no estimate for {', '.join(est['unestimated'])}" if est["unestimated"] else ""
    return (f"estimated {duration(est['total_seconds'])} for {n} experiment{'s' if n != 1 else ''} on {est['model']} "
            f"({n_decl} from declared costs, {n_ref} from the reference's recorded timings{missing}){rates}")
