"""The torch side of the benchmarks: the same weights in transformers' Gemma3ForCausalLM.

Benchmark-only (the optional extra `bench`: torch, nnsight, transformer-lens);
nothing in the toolkit imports this module. The model comes from the
converted safetensors in mlxinterp's cache, so MLX and torch run exactly the
same float32 numbers: mlx-lm's gemma3_text parameter names are the Hugging
Face names, and both implementations apply Gemma's RMSNorm as (1 + w).

One known difference is not a weight: mlx-lm scales embeddings by sqrt(d)
rounded to bfloat16 (25.25 for d = 640) and transformers by the float32
sqrt(d) (25.298). `embed_scale="mlx"` copies mlx-lm's constant so the two
forwards compute the same function; `"hf"` keeps transformers' own.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from mlxinterp.core.errors import MlxInterpError

EXTRA_HINT = "install the benchmark extra: pip install torch==2.13.0 (CPU build first), then pip install -e '.[bench]'"


def require(*modules: str) -> None:
    """Import-check the benchmark-only packages with a clear message naming the missing one."""
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise MlxInterpError(f"benchmark dependency {m!r} is not installed ({e})", hint=EXTRA_HINT) from e


def hf_config(model_dir: Path):
    """transformers' Gemma3TextConfig for an mlx-lm gemma3_text directory."""
    require("torch", "transformers")
    from transformers import Gemma3TextConfig

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    if cfg.get("model_type") != "gemma3_text":
        raise MlxInterpError(f"model_type {cfg.get('model_type')!r} in {model_dir} is not supported by the torch "
                             "reference; allowed: 'gemma3_text' (the default model)")
    pattern = int(cfg.get("sliding_window_pattern", 6))
    n = int(cfg["num_hidden_layers"])
    return Gemma3TextConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=n, num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"], head_dim=cfg["head_dim"],
        max_position_embeddings=cfg.get("max_position_embeddings", 32768), rms_norm_eps=cfg["rms_norm_eps"],
        query_pre_attn_scalar=cfg.get("query_pre_attn_scalar", cfg["head_dim"]),
        sliding_window=cfg.get("sliding_window", 512),
        layer_types=["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": cfg.get("rope_theta", 1e6)},
                         "sliding_attention": {"rope_type": "default",
                                               "rope_theta": cfg.get("rope_local_base_freq", 1e4)}},
        final_logit_softcapping=cfg.get("final_logit_softcapping"),
        attn_logit_softcapping=cfg.get("attn_logit_softcapping"),
        tie_word_embeddings=cfg.get("tie_word_embeddings", True),
        bos_token_id=cfg.get("bos_token_id", 2), eos_token_id=cfg.get("eos_token_id", 1),
        pad_token_id=cfg.get("pad_token_id", 0), hidden_activation="gelu_pytorch_tanh",
        architectures=["Gemma3ForCausalLM"],
    )


def load_hf(model_dir: Path | None = None, embed_scale: str = "mlx", attn: str = "sdpa", threads: int | None = None):
    """Gemma3ForCausalLM (float32, eval mode) holding the mlx-lm directory's weights.

    attn: "sdpa" (transformers' default) or "eager" (what TransformerLens's bridge forces).
    """
    if embed_scale not in ("mlx", "hf"):
        raise MlxInterpError(f"embed_scale={embed_scale!r} is not allowed; use 'mlx' or 'hf'")
    require("torch", "transformers", "safetensors")
    import torch
    from safetensors.torch import load_file
    from transformers import Gemma3ForCausalLM

    from mlxinterp.core.loading import default_model_dir

    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    if threads:
        torch.set_num_threads(threads)
    cfg = hf_config(model_dir)
    cfg._attn_implementation = attn
    with torch.device("meta"):
        model = Gemma3ForCausalLM(cfg)
    state = load_file(str(model_dir / "model.safetensors"))
    state = {k: v.float() for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise MlxInterpError(f"weights of {model_dir} do not map onto Gemma3ForCausalLM: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
    model.lm_head.weight = model.model.embed_tokens.weight  # tied
    emb = model.model.embed_tokens
    d = cfg.hidden_size
    scale = float(torch.tensor(math.sqrt(d), dtype=torch.bfloat16)) if embed_scale == "mlx" else math.sqrt(d)
    emb.scalar_embed_scale = scale
    emb.embed_scale = torch.tensor(scale, dtype=torch.float32)
    model.model.rotary_emb = type(model.model.rotary_emb)(cfg)  # built on meta above: recompute inv_freq on CPU
    return model.eval()


def hf_tokenizer(model_dir: Path | None = None):
    """The same tokenizer (tokenizer.json of the imported model) as a transformers fast tokenizer."""
    require("transformers")
    from transformers import AutoTokenizer

    from mlxinterp.core.loading import default_model_dir

    return AutoTokenizer.from_pretrained(str(model_dir or default_model_dir()))


# ------------------------------------------------------------------ benchmark conditions (worker side)
def _ids(tok, text: str):
    import torch

    return torch.tensor([tok(text).input_ids])


def _token(tok, text: str) -> int:
    ids = tok(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise MlxInterpError(f"{text!r} is {len(ids)} tokens; the metric needs one")
    return ids[0]


def torch_conditions(kind: str, loops: bool = True, threads: int | None = None) -> dict:
    """The torch conditions of one benchmark (same weights as MLX), set up in a worker process."""
    require("torch", "transformers")
    import os

    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.set_grad_enabled(False)
    if kind == "patching":
        return _patching(loops)
    if kind == "forward":
        return _forward()
    if kind == "atp":
        return _atp()
    raise MlxInterpError(f"torch benchmark kind {kind!r} is not allowed; use patching, forward or atp")


def _bridge(tok):
    """TransformerLens 4.x's TransformerBridge over transformers' model (it forces eager attention)."""
    require("transformer_lens")
    import logging

    from transformer_lens.model_bridge import TransformerBridge

    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    return TransformerBridge.boot_transformers("google/gemma-3-270m", hf_model=load_hf(attn="eager"), tokenizer=tok,
                                               device="cpu")


def _patching(loops: bool) -> dict:
    """The Eiffel/Colosseum resid_pre sweep in torch: a plain hooks loop, nnsight (loop, batched), TransformerLens."""
    require("nnsight", "transformer_lens")
    # bench.harness imports MLX, which must come before nnsight: nnsight 0.8.1's import-time hooks make a
    # later import of mlx.core abort the process ("Critical nanobind error")
    from bench.harness import CLEAN, CORRUPT, FOIL, TARGET, Condition

    import nnsight
    from nnsight import TransformersModel

    tok = hf_tokenizer()
    hf = load_hf()
    clean, corrupt = _ids(tok, CLEAN), _ids(tok, CORRUPT)
    t, f = _token(tok, TARGET), _token(tok, FOIL)
    n, L = hf.config.num_hidden_layers, clean.shape[1]
    cells = [(l, p) for l in range(n) for p in range(L)]
    layers = hf.model.layers

    def metric(logits):
        return float(logits[0, -1, t] - logits[0, -1, f])

    def grid(values: dict) -> dict:
        g = [[float("nan")] * L for _ in range(n)]
        for (l, p), v in values.items():
            g[l][p] = v
        return {"metric": g, "clean": metric(hf(clean).logits), "corrupt": metric(hf(corrupt).logits)}

    def hooks_loop(limit=None):
        acts = hf(clean, output_hidden_states=True).hidden_states  # [i] is the input of layer i
        out = {}
        for l, p in cells[:limit]:
            def pre(module, args, l=l, p=p):
                h = args[0].clone()
                h[:, p] = acts[l][:, p]
                return (h, *args[1:])
            handle = layers[l].register_forward_pre_hook(pre)
            try:
                out[(l, p)] = metric(hf(corrupt).logits)
            finally:
                handle.remove()
        return grid(out)

    lm = TransformersModel(hf, task="text-generation", tokenizer=tok)
    nl = lm.model.layers

    def nnsight_clean():
        with lm.trace(clean):
            acts = nnsight.save([nl[l].input.clone() for l in range(n)])
        return acts

    def nnsight_loop(limit=None):
        acts = nnsight_clean()
        out = {}
        for l, p in cells[:limit]:
            with lm.trace(corrupt):
                nl[l].input[:, p] = acts[l][:, p]
                logits = lm.lm_head.output
                d = (logits[0, -1, t] - logits[0, -1, f]).save()
            out[(l, p)] = float(d)
        return grid(out)

    def nnsight_batched(limit=None):
        """nnsight's fast idiom: one trace, one invoke per patch (a single batched forward)."""
        acts = nnsight_clean()
        todo = cells[:limit]
        with lm.trace() as tracer:
            res = nnsight.save([])
            for l, p in todo:
                with tracer.invoke(corrupt):
                    nl[l].input[:, p] = acts[l][:, p]
                    logits = lm.lm_head.output
                    res.append(logits[0, -1, t] - logits[0, -1, f])
        return grid({c: float(v) for c, v in zip(todo, res)})

    from transformer_lens import patching as tlp

    bridge = _bridge(tok)

    def tl_metric(logits):
        return logits[0, -1, t] - logits[0, -1, f]

    def tl_sweep(limit=None):
        """TransformerLens's own patching module (one run_with_hooks per cell) on the bridge."""
        _, cache = bridge.run_with_cache(clean, names_filter=lambda name: name.endswith("hook_resid_pre"))
        if limit is None:
            g = tlp.get_act_patch_resid_pre(bridge, corrupt, cache, tl_metric)
            return {"metric": g.tolist(), "clean": float(tl_metric(bridge(clean))),
                    "corrupt": float(tl_metric(bridge(corrupt)))}
        return {"metric": [], "clean": 0.0, "corrupt": 0.0}

    conds = {"nnsight_batched": Condition(nnsight_batched, warm=lambda: nnsight_batched(4))}
    if loops:
        conds["hooks_loop"] = Condition(hooks_loop, warm=lambda: hooks_loop(2))
        conds["nnsight_loop"] = Condition(nnsight_loop, warm=lambda: nnsight_loop(2))
        conds["transformer_lens_sweep"] = Condition(tl_sweep, warm=lambda: tl_sweep(1))
    return conds


def _atp() -> dict:
    """Attribution patching of resid_post (every decoder layer's output) at every layer x position, Eiffel ->
    Colosseum, logit(Paris) - logit(Rome): (a_clean - a_corrupt) . d metric / d a at the corrupted run.

    Two torch idioms on the same weights, each timed whole (clean forward, corrupted forward + backward, the
    products): nnsight's (one trace per prompt, `with metric.backward():` reading each layer output's .grad in
    reverse order, as nnsight's gradient docs show) and plain torch (forward hooks keep each layer's output
    with retain_grad, one backward). The model's parameters stay trainable, as loaded, in both: nnsight needs
    a forward that tracks gradients, and both then compute parameter gradients nobody reads, as users of
    these idioms do.
    """
    import torch

    from bench.harness import CLEAN, CORRUPT, FOIL, TARGET, Condition  # MLX before nnsight (see _patching)

    import nnsight
    from nnsight import TransformersModel

    torch.set_grad_enabled(True)
    tok = hf_tokenizer()
    hf = load_hf()
    clean, corrupt = _ids(tok, CLEAN), _ids(tok, CORRUPT)
    t, f = _token(tok, TARGET), _token(tok, FOIL)
    n = hf.config.num_hidden_layers
    lm = TransformersModel(hf, task="text-generation", tokenizer=tok)
    nl = lm.model.layers

    def grid(clean_acts, acts_grads) -> list[list[float]]:
        return [(c[0] - a[0]).mul(g[0]).sum(-1).tolist() for c, (a, g) in zip(clean_acts, acts_grads)]

    def nnsight_atp():
        with torch.no_grad(), lm.trace(clean):
            clean_acts = nnsight.save([nl[l].output for l in range(n)])
        with lm.trace(corrupt):
            acts = [nl[l].output for l in range(n)]
            logits = lm.lm_head.output
            metric = logits[0, -1, t] - logits[0, -1, f]
            saved_acts = nnsight.save([a for a in acts])
            with metric.backward():
                grads = nnsight.save([acts[l].grad for l in reversed(range(n))])
        hf.zero_grad(set_to_none=True)
        return grid(clean_acts, list(zip(saved_acts, reversed(grads))))

    def hooks_atp():
        layers = hf.model.layers
        kept: list = []

        def keep(module, args, out):
            if out.requires_grad:
                out.retain_grad()
            kept.append(out)

        handles = [layer.register_forward_hook(keep) for layer in layers]
        try:
            with torch.no_grad():
                hf(clean)
            clean_acts, kept[:] = list(kept), []
            logits = hf(corrupt).logits
            (logits[0, -1, t] - logits[0, -1, f]).backward()
            out = grid(clean_acts, [(a.detach(), a.grad) for a in kept])
        finally:
            for h in handles:
                h.remove()
            hf.zero_grad(set_to_none=True)
        return out

    def frozen(fn):
        """The same idiom with the parameters frozen and the embedding output as the gradient's leaf: no
        parameter gradients (the fastest form of either idiom; needs one extra forward hook)."""
        def run():
            hf.requires_grad_(False)
            h = hf.model.embed_tokens.register_forward_hook(lambda m, a, out: out.requires_grad_())
            try:
                return fn()
            finally:
                h.remove()
                hf.requires_grad_(True)
        return run

    return {"nnsight_atp": Condition(nnsight_atp), "nnsight_atp_frozen": Condition(frozen(nnsight_atp)),
            "torch_hooks_atp_frozen": Condition(frozen(hooks_atp))}


def _forward() -> dict:
    """One forward of FORWARD_PROMPT (full logits): transformers sdpa / eager, TransformerLens forward and run_with_cache."""
    import torch

    from bench.harness import FORWARD_PROMPT, Condition

    tok = hf_tokenizer()
    ids = _ids(tok, FORWARD_PROMPT)
    sdpa, eager, bridge = load_hf(), load_hf(attn="eager"), _bridge(tok)

    def summary(logits) -> dict:
        last = logits[0, -1]
        return {"tokens": int(ids.shape[1]), "argmax": int(last.argmax()), "max_logit": float(last.max())}

    def capture():
        logits, cache = bridge.run_with_cache(ids)
        return {**summary(logits), "captured": len(cache.keys())}

    def one_thread():
        """torch pinned to one thread: immune to OpenMP's spin-waiting when other processes share the cores."""
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return summary(sdpa(ids).logits)
        finally:
            torch.set_num_threads(n)

    return {"forward_sdpa": Condition(lambda: summary(sdpa(ids).logits)),
            "forward_sdpa_1thread": Condition(one_thread),
            "forward_eager": Condition(lambda: summary(eager(ids).logits)),
            "transformer_lens_forward": Condition(lambda: summary(bridge(ids))),
            "transformer_lens_run_with_cache_all": Condition(capture)}


# ------------------------------------------------------------------ numerical agreement
AGREEMENT_PROMPTS = (
    "The Eiffel Tower is located in the city of",
    "Paris is the capital of",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Water boils at a temperature of 100 degrees",
    "Die Hauptstadt von Deutschland ist",
)


def agreement(hm, prompts=None) -> dict:
    """MLX (hm) vs transformers on the same weights: residual stream before every layer, final norm, logits.

    Two torch references: with mlx-lm's bfloat16-rounded embedding scale (same
    function: differences are float rounding) and with transformers' own
    float32 sqrt(d) (what a user of the Hugging Face model gets).
    """
    import numpy as np
    import torch

    import mlx.core as mx

    require("torch", "transformers")
    torch.set_grad_enabled(False)
    prompts = list(prompts or AGREEMENT_PROMPTS)
    n = hm.info.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n)] + ["ln_final.hook_normalized"]
    out = {"prompts": prompts, "per_prompt": []}
    refs = {"mlx_embed_scale": load_hf(embed_scale="mlx"), "hf_embed_scale": load_hf(embed_scale="hf")}
    for prompt in prompts:
        ids = hm.tokens(prompt).ids
        logits, cache = hm.run_with_cache(ids, names=names)
        ours = [np.array(cache[nm][0].astype(mx.float32)) for nm in names]
        ours_logits = np.array(logits[0].astype(mx.float32))
        row = {"prompt": prompt, "tokens": int(ids.shape[1])}
        for key, model in refs.items():
            states = _torch_states(model, torch.tensor(np.array(ids)).long())
            theirs_logits = states.pop()
            per_layer = [float(np.abs(a - b).max()) for a, b in zip(ours, states)]
            scale = [float(np.abs(b).max()) for b in states]
            row[key] = {
                "hidden_max_abs_diff": per_layer,
                "hidden_max_abs": scale,
                "hidden_max_rel_diff": max(d / s for d, s in zip(per_layer, scale) if s > 0),
                "logits_max_abs_diff": float(np.abs(ours_logits - theirs_logits).max()),
                "top1_agreement": float((ours_logits.argmax(-1) == theirs_logits.argmax(-1)).mean()),
                "top1_ours": [int(i) for i in ours_logits.argmax(-1)],
            }
        out["per_prompt"].append(row)
    for key in refs:
        rows = [r[key] for r in out["per_prompt"]]
        n_pos = sum(r["tokens"] for r in out["per_prompt"])
        out[key] = {
            "logits_max_abs_diff": max(r["logits_max_abs_diff"] for r in rows),
            "hidden_max_abs_diff": max(max(r["hidden_max_abs_diff"]) for r in rows),
            "hidden_max_rel_diff": max(r["hidden_max_rel_diff"] for r in rows),
            "top1_agreement": sum(r["top1_agreement"] * p["tokens"] for r, p in zip(rows, out["per_prompt"])) / n_pos,
            "positions": n_pos,
        }
    return out


def _torch_states(model, ids) -> list:
    """Inputs of every decoder layer, the final norm's output and the logits, via forward hooks."""
    got: list = []
    handles = [layer.register_forward_pre_hook(lambda m, args: got.append(args[0][0].float().numpy().copy()))
               for layer in model.model.layers]
    handles.append(model.model.norm.register_forward_hook(lambda m, a, o: got.append(o[0].float().numpy().copy())))
    try:
        logits = model(ids).logits[0].float().numpy()
    finally:
        for h in handles:
            h.remove()
    return [*got, logits]
