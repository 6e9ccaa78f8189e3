"""Logit lens: read each layer's residual stream through the model's own unembedding.

`mode="normed"` applies the final norm first (what the model itself does);
`mode="raw"` multiplies the residual by the unembedding directly. Both run in
float32: late-layer residual norms overflow bfloat16 (the cross-model plan saw infinite
norms). Entropy is in nats.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np

from matplotlib.figure import Figure

from mlxinterp.analysis.plotting import subplots, token_label
from mlxinterp.core.errors import MlxInterpError, PromptError
from mlxinterp.core.validate import text as check_text, whole
from mlxinterp.core.io import save_figure

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


@dataclass
class LensLayer:
    layer: int
    top_tokens: list[dict]  # [{"token", "id", "prob"}], best first
    entropy: float
    targets: dict = field(default_factory=dict)  # token text -> {"id", "rank", "prob"}
    target_rank: int | None = None  # rank of the first target (0 = top-1)


@dataclass
class LensResult:
    prompt: str
    tokens: list[str]
    position: int
    mode: str
    layers: list[LensLayer]
    grid_tokens: list[list[str]] | None = None  # [layer][position] top-1 token
    grid_probs: list[list[float]] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def target_id(hm: HookedModel, text: str) -> int:
    """First token id of `text` as it would follow a prompt (no BOS)."""
    check_text(text, f"target {text!r:.40}")
    ids = hm.tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise PromptError(f"target {text!r} encodes to no tokens")
    return int(ids[0])


def layer_logits(hm: HookedModel, cache, position: int | slice = -1, mode: str = "normed", row: int = 0, tuned=None) -> mx.array:
    """[n_layers, ..., vocab] float32 logits of each block's output at `position`.

    tuned: a `tuned_lens.TunedLens`; its per-layer translators are applied first (normed mode only).
    """
    if mode not in ("normed", "raw"):
        raise MlxInterpError(f"lens mode={mode!r} is not allowed; use 'normed' or 'raw'")
    h = cache.stack("hook_resid_post")[:, row, position]
    if tuned is not None:
        if mode != "normed":
            raise MlxInterpError("a tuned lens reads through the final norm; use mode='normed' with it")
        h = tuned.apply(h)
    return hm.unembed(h, normed=(mode == "normed"))


def entropy(logits: mx.array) -> mx.array:
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return -mx.sum(mx.exp(logp) * logp, axis=-1)


def check_lens_args(targets, top_k: int, mode: str, position: int) -> list[str]:
    """The lens arguments that need no model (the CLI checks them before loading one); returns the
    targets as a list (a bare string is one target, not one per character)."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise MlxInterpError(f"top_k={top_k!r} is not allowed; use a whole number >= 1")
    if mode not in ("normed", "raw"):
        raise MlxInterpError(f"lens mode={mode!r:.40} is not allowed; use 'normed' or 'raw'")
    targets = [targets] if isinstance(targets, str) else list(targets or [])
    for t in targets:
        check_text(t, f"target {t!r:.40}")
    whole(position, "position", error=PromptError)
    return targets


def logit_lens(hm: HookedModel, prompt: str, targets: list[str] | None = None, top_k: int = 10,
               mode: str = "normed", chat: bool = False, grid: bool = False, position: int = -1,
               tuned=None) -> LensResult:
    """Per layer: top-k tokens, entropy and the rank/probability of target tokens at `position` (default last).

    grid=True also returns the top-1 token and its probability at every (layer, position).
    """
    targets = check_lens_args(targets, top_k, mode, position)
    batch = hm.tokens(prompt, chat=chat)
    n = batch.ids.shape[1]
    if not -n <= position < n:
        raise PromptError(f"position {position} is out of range for a {n}-token prompt (allowed {-n}..{n - 1})")
    position %= n
    _, cache = hm.run_with_cache(batch.ids, names="hook_resid_post", logits=False)
    logits = layer_logits(hm, cache, position, mode, tuned=tuned)
    probs = mx.softmax(logits, axis=-1)
    ent = entropy(logits)
    order = mx.argsort(-logits, axis=-1)
    mx.eval(probs, ent, order)
    probs_np, order_np, ent_np = np.array(probs), np.array(order[:, :top_k]), np.array(ent)
    tids = {t: target_id(hm, t) for t in targets or []}
    ranks = {t: np.array(mx.sum(logits > logits[:, i : i + 1], axis=-1)) for t, i in tids.items()}
    decode = hm.tokenizer.decode
    layers = []
    for layer in range(hm.info.n_layers):
        top = [{"token": decode([int(i)]), "id": int(i), "prob": float(probs_np[layer, i])} for i in order_np[layer]]
        tg = {t: {"id": i, "rank": int(ranks[t][layer]), "prob": float(probs_np[layer, i])} for t, i in tids.items()}
        first = next(iter(tg.values()), None)
        layers.append(LensLayer(layer, top, float(ent_np[layer]), tg, first["rank"] if first else None))
    ids = batch.ids[0].tolist()
    result = LensResult(prompt, [decode([i]) for i in ids], position, "tuned" if tuned is not None else mode, layers)
    if grid:
        all_logits = layer_logits(hm, cache, slice(None), mode, tuned=tuned)  # [layers, L, V]
        p = mx.softmax(all_logits, axis=-1)
        best = mx.argmax(all_logits, axis=-1)
        pmax = mx.max(p, axis=-1)
        mx.eval(best, pmax)
        result.grid_tokens = [[decode([int(i)]) for i in row] for row in np.array(best)]
        result.grid_probs = np.array(pmax).round(6).tolist()
    return result


def plot_lens(result: LensResult, path: Path) -> Path:
    """Save `lens_figure(result)` as a PNG at `path`; return the path."""
    fig = lens_figure(result)
    with warnings.catch_warnings():  # drawing warns once per glyph the font lacks, as tight_layout did
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        save_figure(Path(path), fig)
    return Path(path)


def lens_figure(result: LensResult) -> Figure:
    """Heatmap of the top-1 token at each (layer, position), coloured by its probability."""
    if result.grid_probs is None:
        raise ValueError("lens_figure needs logit_lens(..., grid=True)")
    probs = np.array(result.grid_probs)
    n_layers, n_pos = probs.shape
    fig, ax = subplots(figsize=(max(6, 1.1 * n_pos), max(4, 0.38 * n_layers)))
    im = ax.imshow(probs, aspect="auto", cmap="Blues", vmin=0, vmax=1, origin="lower")
    for l in range(n_layers):
        for p in range(n_pos):
            tok = token_label(result.grid_tokens[l][p])
            ax.text(p, l, tok, ha="center", va="center", fontsize=7, color="white" if probs[l, p] > 0.6 else "black")
    ax.set_xticks(range(n_pos), [token_label(t) for t in result.tokens], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("layer (output of block)")
    ax.set_title(f"logit lens ({result.mode}): top-1 token per layer and position")
    fig.colorbar(im, ax=ax, label="probability of top-1 token")
    with warnings.catch_warnings():  # tokens in scripts the font lacks draw as boxes; one warning each is noise
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        fig.tight_layout()
    return fig
