"""Feature inspection: top-activating contexts per feature and the logit effects of decoder directions.

Contexts come from activation shards (`sae_train.ActivationStore`, which keeps each
row's tokens), so inspecting needs no second model run. Logit effects read each
decoder row through the model's real final norm and unembedding
(`sae.decoder_logit_effects`). Output: a dict (JSON) and a standalone HTML page
(inline CSS, no scripts from anywhere else).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import html
from pathlib import Path
from typing import Sequence

import mlx.core as mx
import numpy as np

from mlxinterp.analysis.sae import SAE, decoder_logit_effects
from mlxinterp.analysis.sae_train import ActivationStore
from mlxinterp.core.io import atomic_write_text

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


def top_contexts(sae: SAE, store: ActivationStore, top_n: int = 8, max_rows: int | None = None,
                 batch: int = 4096) -> dict:
    """Per feature, the `top_n` largest activations over the store's rows: values and (shard, row) indices,
    plus each feature's firing frequency and mean activation when active."""
    w = sae.d_sae
    best_v = np.full((w, top_n), -np.inf, np.float32)
    best_i = np.full((w, top_n), -1, np.int64)
    fires = np.zeros(w, np.int64)
    total = np.zeros(w, np.float64)
    offsets, seen = [], 0
    for si, s in enumerate(store.shards):
        offsets.append(seen)
        a = store.acts(si)
        n = s["rows"] if max_rows is None else min(s["rows"], max_rows - seen)
        for r in range(0, n, batch):
            f = np.array(sae.encode(mx.array(np.asarray(a[r : min(r + batch, n)]))))  # [b, w]
            fires += (f > 0).sum(0)
            total += f.sum(0)
            k = min(top_n, f.shape[0])
            part = np.argpartition(-f, k - 1, axis=0)[:k].T  # [w, k] rows of this batch
            vals = np.take_along_axis(f.T, part, axis=1)
            cat_v = np.concatenate([best_v, vals], 1)
            cat_i = np.concatenate([best_i, part + seen + r], 1)
            order = np.argsort(-cat_v, axis=1)[:, :top_n]
            best_v, best_i = np.take_along_axis(cat_v, order, 1), np.take_along_axis(cat_i, order, 1)
        seen += n
        if max_rows is not None and seen >= max_rows:
            break
    return {"values": best_v, "rows": best_i, "freq": fires / max(seen, 1),
            "mean_when_active": np.where(fires > 0, total / np.maximum(fires, 1), 0.0), "rows_seen": seen,
            "offsets": offsets}


def _row_token(store: ActivationStore, row: int, offsets: list[int], width: int = 12) -> tuple[list[int], int]:
    """The tokens before (and including) a row's position, and the index of that token."""
    si = int(np.searchsorted(offsets, row, side="right") - 1)
    local = row - offsets[si]
    toks = store.tokens(si)
    L = toks.shape[1] - store.manifest.get("skip_first", 0)
    w, p = divmod(local, L)
    p += store.manifest.get("skip_first", 0)
    lo = max(0, p - width)
    hi = min(toks.shape[1], p + 4)
    return toks[w, lo:hi].tolist(), p - lo


def inspect(hm: HookedModel, sae: SAE, store: ActivationStore, features: Sequence[int] | None = None, n_features: int = 50,
            top_n: int = 8, max_rows: int | None = 100_000, logit_top: int = 8, dense_frac: float = 0.1) -> dict:
    """JSON-ready inspection of `features` (default: the `n_features` most frequently active features among
    those active on at most `dense_frac` of the positions)."""
    tc = top_contexts(sae, store, top_n, max_rows)
    if features is None:  # the most frequent non-dense features: dense ones (> 10 % of positions) are rarely readable
        ok = (tc["freq"] > 0) & (tc["freq"] <= dense_frac)
        features = [int(i) for i in np.argsort(-np.where(ok, tc["freq"], -1.0))[: min(n_features, int(ok.sum()))]]
    effects = {e["feature"]: e for e in decoder_logit_effects(hm, sae, features, logit_top)} if features else {}
    dec = hm.tokenizer.decode
    out = []
    for f in features:
        ctxs = []
        for v, row in zip(tc["values"][f], tc["rows"][f]):
            if row < 0 or not np.isfinite(v) or v <= 0:
                continue
            toks, at = _row_token(store, int(row), tc["offsets"])
            ctxs.append({"activation": round(float(v), 4), "tokens": [dec([t]) for t in toks], "at": at})
        out.append({"feature": int(f), "freq": round(float(tc["freq"][f]), 6),
                    "mean_when_active": round(float(tc["mean_when_active"][f]), 4), "contexts": ctxs,
                    "promotes": effects[f]["promotes"], "suppresses": effects[f]["suppresses"]})
    dead = int((tc["freq"] == 0).sum())
    return {"hook": sae.hook, "d_sae": sae.d_sae, "rows_seen": tc["rows_seen"], "dead_on_slice": dead,
            "dense_on_slice": int((tc["freq"] > dense_frac).sum()), "features": out}


def _tok(t: str) -> str:
    return html.escape(t.replace("\n", "⏎"))


def write_html(report: dict, path: str | Path, title: str = "SAE features") -> Path:
    """A standalone page: one card per feature with its contexts (the active token highlighted) and logit effects."""
    cards = []
    for f in report["features"]:
        rows = []
        for c in f["contexts"]:
            toks = "".join(f'<span class="hit">{_tok(t)}</span>' if i == c["at"] else _tok(t)
                           for i, t in enumerate(c["tokens"]))
            rows.append(f'<tr><td class="v">{c["activation"]:.3g}</td><td class="ctx">{toks}</td></tr>')
        up = " ".join(f'<code>{_tok(t["token"])}</code>' for t in f["promotes"])
        down = " ".join(f'<code>{_tok(t["token"])}</code>' for t in f["suppresses"])
        cards.append(f'<section id="f{f["feature"]}"><h2>feature {f["feature"]}</h2>'
                     f'<p>active on {100 * f["freq"]:.3g}% of tokens; mean activation when active {f["mean_when_active"]:.3g}</p>'
                     f'<p><b>promotes</b> {up}</p><p><b>suppresses</b> {down}</p>'
                     f'<table>{"".join(rows)}</table></section>')
    index = " ".join(f'<a href="#f{f["feature"]}">{f["feature"]}</a>' for f in report["features"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>
body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
section{{border:1px solid #ccc;border-radius:6px;padding:0.5em 1em;margin:1em 0}}
.ctx{{font-family:monospace;white-space:pre-wrap}} .hit{{background:#fc8;font-weight:bold}}
.v{{text-align:right;padding-right:1em;color:#555}} code{{background:#eef;padding:0 3px;margin:0 2px}}
</style></head><body><h1>{html.escape(title)}</h1>
<p>hook {html.escape(report["hook"])}; {report["d_sae"]} features; {report["rows_seen"]} token positions read;
{report["dead_on_slice"]} features never active on them, {report.get("dense_on_slice", 0)} active on more than 10 %. Logit effects: decoder direction through the final norm
and unembedding, mean logit subtracted.</p><p>{index}</p>{"".join(cards)}</body></html>"""
    return atomic_write_text(path, page)
