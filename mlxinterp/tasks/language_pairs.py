"""English / Chinese prompt pairs (data/crosslingual/pairs.json) and what the subspace studies compute from them.

The five subspace studies (subspace_structure, subspace_patching,
update_decomposition, ard_mmd, linear_bridge) read the same prompts through
the same forwards and the same attention-kernel Z bases
(mlxinterp.analysis.subspace). `activations` and `z_basis` compute each
once per loaded model and keep it in a memo that lives exactly as long as
that model object: the memo is keyed weakly on the model, so when the suite
frees a model (suite.runner.free_memory) its activations go with it.

Layers are given as fractions of depth: the Qwen2.5-3B subspace notes' layers 32 and 33 of
Qwen2.5-3B's 36 layers are 32/35 and 33/35, which map back to exactly 32
and 33 on that model. The BOS position (identical in both languages at every
layer, and an outlier in norm) is left out of every mean, cloud and patch
(`content`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import weakref
from typing import Any

import mlx.core as mx
import numpy as np

from mlxinterp.analysis import subspace as S
from mlxinterp.core import names as H
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.tasks import data

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

PAIRS_FILE = "crosslingual/pairs.json"
SEED_FRACS = (32 / 35, 33 / 35)  # the Qwen2.5-3B subspace notes' L32 (approach) and L33 (bottleneck) of 36 layers
LANGS = ("en", "zh")

# model -> {key: value}; an entry disappears when its model object is freed (see the module docstring)
_MEMO: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()


def load_pairs(n: int | None = None) -> list[dict]:
    """The prompt pairs, arithmetic and factual interleaved so any prefix mixes both kinds."""
    raw = data.load_json(PAIRS_FILE)
    kinds = {}
    for p in raw["pairs"]:
        kinds.setdefault(p["kind"], []).append(p)
    groups = list(kinds.values())
    mixed = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
    if n is not None and not 2 <= n <= len(mixed):
        raise MlxInterpError(f"n={n} pairs requested; data/{PAIRS_FILE} has {len(mixed)} (need >= 2)")
    return mixed[:n] if n else mixed


def prompt(pair: dict, lang: str) -> str:
    """The pair's question in language `lang`, in that language's answer template."""
    return data.load_json(PAIRS_FILE)["templates"][lang].format(q=pair[lang])


def layers_at(fracs, n_layers: int) -> list[int]:
    """Layer indices round(f * (L - 1)); colliding layers are moved down so they stay distinct."""
    bad = [f for f in fracs if not 0 <= f <= 1]
    if bad:
        raise MlxInterpError(f"layer fractions {bad} must lie in [0, 1] (fractions of depth)")
    out: list[int] = []
    for f in sorted(fracs, reverse=True):
        l = int(round(f * (n_layers - 1)))
        while l in out and l > 0:
            l -= 1
        out.append(l)
    return sorted(set(out))


def primary_layer(n_layers: int) -> int:
    """The source's primary layer (its L32 of 36) on a model of `n_layers`: the first of layers_at(SEED_FRACS)."""
    return layers_at(SEED_FRACS, n_layers)[0]


def memo(hm: HookedModel) -> dict:
    """The memo of `hm`: a dict that is dropped when the model object is."""
    try:
        return _MEMO.setdefault(hm, {})
    except TypeError:  # not weak-referenceable (a stand-in model): compute every time
        return {}


def activations(hm: HookedModel, text: str) -> dict:
    """Residual stream before every block plus the final output ([L+1, T, d]) and MLP outputs ([L, T, d]).

    Computed once per (model, prompt) while the model is loaded (`memo`), so the five
    experiments share one forward per prompt. `start` is the first content position
    (1 when the prompt starts with BOS).
    """
    cache, key = memo(hm), ("activations", text)
    if key not in cache:
        L = hm.info.n_layers
        names = [H.resid_pre(i) for i in range(L)] + [H.resid_post(L - 1)]
        names += [H.mlp_out(i) for i in range(L)]
        _, acts = hm.run_with_cache(text, names=names)
        grab = lambda n: np.array(acts[n][0].astype(mx.float32))  # noqa: E731
        resid = np.stack([grab(n) for n in names[: L + 1]])
        mlp = np.stack([grab(n) for n in names[L + 1 :]])
        ids = hm.tokens(text).ids[0].tolist()
        start = 1 if hm.info.bos_token_id is not None and ids[0] == hm.info.bos_token_id else 0
        cache[key] = {"resid": resid, "mlp": mlp, "start": start}
    return cache[key]


def gram(hm: HookedModel, layer: int, parts=S.KERNEL_PARTS) -> np.ndarray:
    """The stacked kernel's Gram matrix of a layer, computed once per loaded model (the experiments share it)."""
    cache, key = memo(hm), ("gram", layer, tuple(parts))
    if key not in cache:
        cache[key] = S.kernel_gram(S.head_weights(hm, layer), parts)
    return cache[key]


def z_basis(hm: HookedModel, layer: int, k: int, parts=S.KERNEL_PARTS) -> np.ndarray:
    """V_Z (k x d) of a layer, from one eigendecomposition of its kernel Gram matrix per loaded model."""
    cache, key = memo(hm), ("z_basis", layer, tuple(parts))
    if key not in cache:
        cache[key] = S.z_basis_from_gram(gram(hm, layer, parts), hm.info.d_model)
    if not 0 < k <= hm.info.d_model:
        raise MlxInterpError(f"k={k} must be between 1 and d_model={hm.info.d_model}")
    return cache[key][:k].copy()


def content(acts: dict, layer: int) -> np.ndarray:
    """The content tokens' (BOS left out) residual stream at `layer`, as float64 [T - start, d]."""
    return acts["resid"][layer, acts["start"] :].astype(np.float64)
