"""Function vectors (Todd et al., "Function Vectors in Large Language Models", ICLR 2024).

An in-context-learning (ICL) prompt shows input/output demonstrations of a task
and ends with a query; some attention heads at the last position carry "which
task this is". Todd et al. find them by causal mediation: the *average indirect
effect* (AIE) of a head is how much patching its mean output (over clean ICL
prompts) into a *shuffled-label* ICL prompt, at the last position, raises the
probability of the correct answer. The function vector (FV) is the sum of the
top heads' mean outputs, as they enter the residual stream; added to the
residual at one layer of a zero-shot prompt it should make the model do the task.

Here:
- prompts use Todd et al.'s template "Q: {x}\\nA: {y}" joined by blank lines;
- a head's output is `attn.hook_z` (the per-head input of o_proj), patched with
  `patching.run_variants` (one row per head, the shared prefix run once);
- a head's contribution to the residual is o_proj applied to a z with only that
  head non-zero (minus o_proj(0), in case of a bias), and, on Gemma's sandwich
  blocks, scaled the way the post-attention RMSNorm scales the whole attention
  output at that position: y = x * g / rms(x) with x the summed o_proj output,
  so the heads' contributions add up exactly to `hook_attn_out`
  (`analysis.decompose.head_results`; tested). It is averaged over the clean ICL prompts.

Two simpler vectors from the cross-model plan are built beside it for comparison: v1, the
mean residual (resid_post, last position) over ICL prompts; v2, that minus the
mean over the zero-shot prompts of the same queries.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxinterp.tasks import data
from mlxinterp.analysis import directions
from mlxinterp.core.errors import PromptError
from mlxinterp.analysis.patching import Patch, run_variants
from mlxinterp.core import names as H
from mlxinterp.analysis.decompose import head_results
from mlxinterp.analysis.lens import target_id
from mlxinterp.core.hooks import HookedModel

TASKS = ("antonym", "country_capital", "english_french", "english_spanish", "singular_plural", "present_past",
         "uppercase", "sentiment")


def load_task(name: str) -> list[tuple[str, str]]:
    """Input/output pairs of data/function_vectors/<name>.json."""
    if name not in TASKS:
        raise PromptError(f"function-vector task {name!r} is not allowed; use one of {', '.join(TASKS)}")
    return [(str(x), str(y)) for x, y in data.load_json(f"function_vectors/{name}.json")["pairs"]]


def demo(x: str, y: str) -> str:
    return f"Q: {x}\nA: {y}"


def icl_prompt(demos: Sequence[tuple[str, str]], query: str) -> str:
    """Demonstrations then the query, Todd et al.'s Q/A template."""
    return "\n\n".join([demo(x, y) for x, y in demos] + [zero_shot_prompt(query)])


def zero_shot_prompt(query: str) -> str:
    return f"Q: {query}\nA:"


def answer_token(hm: HookedModel, answer: str) -> int:
    """First token of the answer as it follows "A:" (with its leading space)."""
    return target_id(hm, " " + answer)


@dataclass
class IclSet:
    """One ICL item: its demonstrations, the same with labels shuffled, and the query pair."""

    demos: list[tuple[str, str]]
    shuffled: list[tuple[str, str]]
    query: tuple[str, str]

    @property
    def clean(self) -> str:
        return icl_prompt(self.demos, self.query[0])

    @property
    def corrupt(self) -> str:
        return icl_prompt(self.shuffled, self.query[0])


def icl_sets(pool: Sequence[tuple[str, str]], queries: Sequence[tuple[str, str]], n_demos: int,
             rng: np.random.Generator) -> list[IclSet]:
    """For each query: n_demos demonstrations drawn from `pool` (never the query itself), and a shuffled-label copy.

    The shuffle is a derangement of the demos' outputs when the outputs allow
    one (no demo keeps its own label), as in Todd et al.'s corrupted prompts.
    """
    out = []
    for q in queries:
        others = [p for p in pool if p[0] != q[0]]
        if len(others) < n_demos:
            raise PromptError(f"{n_demos} demonstrations requested but the pool has {len(others)} other pairs")
        demos = [others[i] for i in rng.choice(len(others), n_demos, replace=False)]
        out.append(IclSet(demos, shuffle_labels(demos, rng), tuple(q)))
    return out


def shuffle_labels(demos: Sequence[tuple[str, str]], rng: np.random.Generator, tries: int = 100) -> list[tuple[str, str]]:
    """Demos with outputs permuted so that, when possible, no input keeps its own output."""
    ys = [y for _, y in demos]
    perm = rng.permutation(len(ys))
    for _ in range(tries):
        if all(ys[p] != ys[i] for i, p in enumerate(perm)):
            break
        perm = rng.permutation(len(ys))
    return [(x, ys[p]) for (x, _), p in zip(demos, perm)]


# ------------------------------------------------------------ activations and heads


def last_activations(hm: HookedModel, prompts: Sequence[str], batch_size: int = 8) -> dict[str, np.ndarray]:
    """At each prompt's last position, every layer: z [N, layers, H, Dh], o_proj output [N, layers, d], resid_post [N, layers, d]."""
    n, n_heads, Dh = hm.info.n_layers, hm.info.n_heads, hm.info.head_dim
    hooks = [H.name(l, s) for l in range(n) for s in ("attn.hook_z", "attn.hook_out", "hook_resid_post")]
    acts = directions.collect(hm, list(prompts), hooks, "last", batch_size=batch_size)
    get = lambda s: np.stack([acts[H.name(l, s)] for l in range(n)], axis=1)  # noqa: E731
    return {"z": get("attn.hook_z").reshape(len(prompts), n, n_heads, Dh), "attn_raw": get("attn.hook_out"),
            "resid": get("hook_resid_post")}


def mean_contributions(hm: HookedModel, acts: dict[str, np.ndarray]) -> np.ndarray:
    """Mean residual contribution of every head over the prompts: [layers, H, d_model]."""
    return np.stack([np.array(head_results(hm, l, acts["z"][:, l], acts["attn_raw"][:, l]), np.float64).mean(0)
                     for l in range(hm.info.n_layers)])


def prob_metric(target: int) -> Callable:
    """Probability of `target` at the read position (Todd et al.'s AIE metric)."""
    return lambda logits: mx.exp(logits[:, target] - mx.logsumexp(logits, axis=-1))


def head_variants(z_mean: np.ndarray) -> list[list[Patch]]:
    """One variant per (layer, head) in row-major order: the head's mean z at the last position."""
    n_layers, n_heads = z_mean.shape[:2]
    return [[Patch(H.z(l), -1, z_mean[l, h].astype(np.float32), head=h)]
            for l in range(n_layers) for h in range(n_heads)]


def indirect_effects(hm: HookedModel, corrupt_prompt: str, target: int, z_mean: np.ndarray, batch_size: int = 32) -> dict:
    """One corrupted prompt: P(target) unpatched, and its change when each head's mean clean z is patched in.

    Returns {"p_corrupt": float, "effect": [layers, H]}; the AIE is the mean of `effect` over prompts.
    """
    ids = hm.tokens(corrupt_prompt).ids[0].tolist()
    variants = [[]] + head_variants(z_mean)
    vals = run_variants(hm, ids, variants, prob_metric(target), batch_size=batch_size, reuse_prefix=True)
    return {"p_corrupt": float(vals[0]), "effect": (vals[1:] - vals[0]).reshape(z_mean.shape[:2])}


def top_heads(aie: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The k (layer, head) cells with the largest AIE, largest first."""
    flat = np.argsort(-np.asarray(aie).ravel(), kind="stable")[:k]
    return [tuple(int(i) for i in np.unravel_index(f, np.shape(aie))) for f in flat]


def function_vector(contrib: np.ndarray, heads: Sequence[tuple[int, int]]) -> np.ndarray:
    """Sum of the chosen heads' mean residual contributions: the FV, [d_model]."""
    if not heads:
        raise PromptError("a function vector needs at least one head")
    return np.sum([contrib[l, h] for l, h in heads], axis=0)


def addition_variants(resid: np.ndarray, vectors: dict[str, np.ndarray], layers: Sequence[int]) -> tuple[list, list]:
    """Variants adding each vector at each layer's resid_post, last position, as patches of resid + vector.

    resid: the prompt's own resid_post at the last position, [layers, d]. vectors:
    name -> [d] (one vector for every layer) or [layers, d] (per layer).
    Returns (variants, labels) with labels (name, layer); the first variant is unpatched.
    """
    variants, labels = [[]], [("base", -1)]
    for name, v in vectors.items():
        for l in layers:
            vec = v[l] if np.ndim(v) == 2 else v
            variants.append([Patch(H.resid_post(l), -1, (resid[l] + vec).astype(np.float32))])
            labels.append((name, l))
    return variants, labels


def answer_margin(target: int) -> Callable:
    """logit(target) - the largest other logit: > 0 exactly when the target is the top-1 token."""
    def metric(logits):
        others = mx.where(mx.arange(logits.shape[-1]) == target, -mx.inf, logits)
        return logits[:, target] - mx.max(others, axis=-1)
    return metric


# ----------------------------------------------------------------- the function-vector study's split


@dataclass
class FunctionVectorsConfig:
    # Full size by default: all 8 tasks of data/function_vectors (70-85 pairs each). Sizes are per task.
    n: int = 12  # ICL prompts per task for the AIE: even-numbered ones choose the FV heads, odd-numbered ones
    #              report their AIE (8 tasks x 6 = 48 report prompts, >= 30)
    seed: int = 0
    tasks: tuple = TASKS  # every task in the data (the function-vector study); clusters of the pooled intervals
    n_demos: int = 5
    n_pool: int = 40  # pairs per task for demonstrations and AIE queries
    n_eval: int = 30  # held-out zero-shot queries per task (even: choose the layer, odd: report): 30 is what
    #                   the smallest task (70 pairs) leaves after the pool; 8 tasks x 15 = 120 report queries
    top_k: int = 10  # heads in the FV (Todd et al.)
    natural_templates: tuple = ('The word "{x}" means', "When I think of {x}, I think of")
    natural_tokens: int = 8
    batch_size: int = 32


def task_split(name: str, cfg: FunctionVectorsConfig, ctx) -> dict:
    """Pool / held-out pairs, AIE ICL sets and evaluation ICL sets for one task (all seeded by task name).

    Draws from `ctx.rng_for(...)`, so the split depends on the calling experiment's name and seed
    (the function-vector and quantization studies both use it).
    """
    pairs = load_task(name)
    if cfg.n_pool + cfg.n_eval > len(pairs) or cfg.n > cfg.n_pool or cfg.n_eval < 2:
        raise PromptError(f"task {name}: n_pool={cfg.n_pool} + n_eval={cfg.n_eval} must fit its {len(pairs)} pairs, "
                          f"n={cfg.n} <= n_pool, n_eval >= 2")
    perm = ctx.rng_for("split", name).permutation(len(pairs))
    pool = [pairs[i] for i in perm[: cfg.n_pool]]
    held = [pairs[i] for i in perm[cfg.n_pool : cfg.n_pool + cfg.n_eval]]
    rng = ctx.rng_for("aie", name)
    queries = [pool[i] for i in rng.choice(len(pool), cfg.n, replace=False)]
    return {"pool": pool, "held": held, "aie": icl_sets(pool, queries, cfg.n_demos, rng),
            "eval_icl": icl_sets(pool, held, cfg.n_demos, ctx.rng_for("eval", name))}
