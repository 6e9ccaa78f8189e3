"""Expert routing by language: do tokens of English, French and Python prompts go to different experts?

For every MoE layer, the router's top-1 expert is read per token (mlx-lm's own
selection, mlxinterp.core.moe.selected_experts on `mlp.hook_router_logits`), and
the mutual information between the prompt's language and that expert is compared
with a permutation null (languages shuffled across prompts, 200 times): a layer
routes by language when its MI is above the null's 95th percentile.

    python examples/moe_routing.py                       # a tiny random qwen3_moe (a null result is expected)
    python examples/moe_routing.py --model mlx-community/Qwen3-30B-A3B-4bit --dtype native   # on a Mac

On the tiny random model there is nothing to find: the expected output is MI inside
the null interval at every layer, which is what the script then says.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlxinterp.core import moe
from mlxinterp.core.hooks import load
from mlxinterp.core.replica import write_replica

PROMPTS = {
    "english": ["The weather today is sunny and warm.", "She opened the door and walked into the garden.",
                "Please send me the report before Friday.", "The museum is closed on Mondays."],
    "french": ["Le temps est ensoleillé et chaud aujourd'hui.", "Elle a ouvert la porte et est entrée dans le jardin.",
               "Envoie-moi le rapport avant vendredi, s'il te plaît.", "Le musée est fermé le lundi."],
    "python": ["def add(a, b):\n    return a + b", "for i in range(10):\n    print(i * i)",
               "import numpy as np\nx = np.zeros(3)", "class Point:\n    def __init__(self, x):\n        self.x = x"],
}
TINY_MOE = {"model_type": "qwen3_moe", "hidden_size": 64, "num_hidden_layers": 4, "intermediate_size": 128,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512,
            "rms_norm_eps": 1e-6, "max_position_embeddings": 256, "rope_theta": 10000.0, "num_experts": 8,
            "num_experts_per_tok": 2, "decoder_sparse_step": 1, "mlp_only_layers": [], "moe_intermediate_size": 32,
            "norm_topk_prob": True, "tie_word_embeddings": False, "torch_dtype": "float32"}


def mutual_information(labels: np.ndarray, experts: np.ndarray) -> float:
    """MI (nats) between two integer label arrays, from their joint histogram."""
    joint = np.zeros((labels.max() + 1, experts.max() + 1))
    np.add.at(joint, (labels, experts), 1)
    p = joint / joint.sum()
    outer = p.sum(1, keepdims=True) @ p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / outer[nz])).sum())


def top1_experts(hm, text: str) -> dict[int, np.ndarray]:
    """Layer -> top-1 expert of every token of `text`."""
    names = [n for n in hm.hook_names if n.endswith("mlp.hook_router_logits")]
    _, cache = hm.run_with_cache(text, names=names)
    out = {}
    for n in names:
        inds, scores = moe.selected_experts(hm, cache[n])
        best = mx.take_along_axis(inds, mx.argmax(scores, axis=-1, keepdims=True), axis=-1)
        out[hm.point(n).layer] = np.array(best).reshape(-1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="an MoE checkpoint (default: a tiny random qwen3_moe)")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--permutations", type=int, default=200)
    args = ap.parse_args()
    if args.model is None:
        tmp = Path(tempfile.mkdtemp()) / "tiny-qwen3-moe"
        write_replica(TINY_MOE, tmp, seed=0)
        args.model, args.dtype = str(tmp), "native"
    hm = load(args.model, dtype=args.dtype)
    if not hm.spec.router:
        raise SystemExit(f"{args.model} is a {hm.info.arch} model, not a mixture of experts")
    per_prompt = [(lang, top1_experts(hm, p)) for lang, ps in PROMPTS.items() for p in ps]
    langs = list(PROMPTS)
    rng = np.random.default_rng(0)
    print(f"{hm.info.arch}: {hm.info.n_experts} experts, top-{hm.info.experts_per_token}; "
          f"{len(per_prompt)} prompts in {len(langs)} languages")
    for layer in sorted(per_prompt[0][1]):
        experts = [e[layer] for _, e in per_prompt]
        lab = np.array([langs.index(lang) for lang, _ in per_prompt])

        def mi(prompt_labels: np.ndarray) -> float:
            tok_labels = np.concatenate([np.full(len(e), lab_) for e, lab_ in zip(experts, prompt_labels)])
            return mutual_information(tok_labels, np.concatenate(experts))

        observed = mi(lab)
        null = np.array([mi(rng.permutation(lab)) for _ in range(args.permutations)])
        lo, hi = np.quantile(null, [0.025, 0.975])
        verdict = "routes by language" if observed > np.quantile(null, 0.95) else "no evidence (inside the null)"
        print(f"layer {layer:2d}: MI {observed:.3f} nats; permutation null 95% interval [{lo:.3f}, {hi:.3f}]: {verdict}")


if __name__ == "__main__":
    main()
