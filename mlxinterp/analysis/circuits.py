"""Edges between components: exact edge (path) patching, EAP / EAP-IG scores, circuits and faithfulness.

The graph (as in edge attribution patching, Syed et al. 2023; EAP-IG, Hanna et al. 2024):

- senders write into the residual stream: the input embedding ("input"), every attention
  head ("L3H1": its output projection of its slice of attn.hook_z, after Gemma's post-norm
  with that norm's scale frozen, analysis.decompose.stack_head_results) and every MLP ("L3MLP");
- receivers read the residual stream through a norm: each layer's attention ("L3ATTN", the
  input of ln1, read by all its heads' queries, keys and values), each MLP ("L3MLP_IN", the input
  of ln2) and the unembedding ("LOGITS", the input of the final norm).

An edge u -> v exists when u writes before v reads. Because the residual stream is a sum,
receiver v's input in the corrupted run plus every upstream sender's (clean - corrupt)
difference is exactly its clean input. An *edge patch* gives v the corrupted input plus the
differences of the kept edges into v only (through a tap at v's norm output: the norm is
applied to the patched input), everything else as in the corrupted run; that is path patching
from u to v along the direct path (Wang et al. 2022, "Interpretability in the wild", with
receivers at layer granularity). Keeping every edge restores the clean run; keeping none is
the corrupted run.

EAP scores every edge at once: (clean - corrupt difference of u) . d metric / d (input of v),
the gradient taken through v's norm only; EAP-IG averages that gradient over points on the
line from the corrupted to the clean input embeddings (`steps` midpoints, run as rows of one batch).

EAP and the circuit search use attention receivers at layer granularity (one input shared by all
heads' q, k and v). `path_patch_heads` patches finer receivers exactly: one head's query, key or
value input (sender -> "L3H1.q"), as in Wang et al. 2022's path patching to a head's q/k/v: the
receiver's projection alone reads the corrupted layer input plus the sender's difference (through
the layer's own norm), every other head, projection and the residual stream read the corrupted run.
Keys and values exist per key-value head: with grouped-query attention a k/v receiver is that
shared head ("L3H1.k" is the key input of head 1's group, read by every query head of the group).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from mlxinterp.analysis.decompose import stack_head_results
from mlxinterp.analysis.attribution import token_pair
from mlxinterp.analysis.gradients import check_metric, metric_on, metric_vocab, value_and_grad
from mlxinterp.analysis.patching import Metric, forward_last
from mlxinterp.analysis.plotting import subplots
from mlxinterp.core import taps as T
from mlxinterp.core.archs import text_model
from mlxinterp.core.errors import HookNameError, MlxInterpError
from mlxinterp.core.hooks import plain_call

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


@dataclass
class Receiver:
    label: str
    stage: int
    norm_hook: str  # the norm's output: the tap point
    input_hook: str  # the norm's input: the residual the receiver reads
    norm: object = field(repr=False, default=None)


@dataclass
class Graph:
    """Senders, receivers and the cached clean/corrupt quantities edges need."""

    senders: list[str]
    sender_stage: np.ndarray
    receivers: list[Receiver]
    clean_ids: list[int]
    corrupt_ids: list[int]
    clean_metric: float
    corrupt_metric: float
    deltas: mx.array = field(repr=False, default=None)  # [n_senders, L, d]: clean - corrupt contribution
    inputs: dict = field(repr=False, default_factory=dict)  # receiver label -> corrupt input [L, d]
    gains: dict = field(repr=False, default_factory=dict)  # receiver label -> (gain [d], eps)

    def valid(self) -> np.ndarray:
        """[n_senders, n_receivers] bool: the sender writes before the receiver reads."""
        return self.sender_stage[:, None] < np.array([r.stage for r in self.receivers])[None, :]

    def edge_label(self, u: int, v: int) -> str:
        return f"{self.senders[u]}->{self.receivers[v].label}"


def _module(root, path: str):
    for part in path.split(".") if path else []:
        root = getattr(root, part)
    return root


def _rms_gain(norm, d: int) -> tuple[mx.array, float]:
    """(gain, eps) with mx.fast.rms_norm(x, gain, eps) == norm(x): the module's own weight, or 1 + weight
    (Gemma), whichever reproduces the module bit for bit on a test vector."""
    eps = float(getattr(norm, "eps", 0.0))
    w = getattr(norm, "weight", None)
    if w is None:
        raise MlxInterpError(f"{type(norm).__name__} has no weight; edge patching needs RMSNorm receivers")
    x = mx.random.normal((2, d), key=mx.random.key(0)).astype(w.dtype)
    ref = norm(x)
    for g in (w, 1.0 + w):
        if mx.array_equal(mx.fast.rms_norm(x, g.astype(w.dtype), eps), ref):
            return g.astype(w.dtype), eps
    raise MlxInterpError(f"{type(norm).__name__} is not an RMSNorm this module can reproduce; "
                         "edge patching supports RMSNorm receivers only")


def build_graph(hm: HookedModel, clean, corrupt, metric: Metric) -> Graph:
    """Senders, receivers, clean - corrupt sender differences and corrupt receiver inputs, from two forwards."""
    check_metric(metric)
    clean_ids, corrupt_ids = token_pair(hm, clean, corrupt)
    n, H = hm.info.n_layers, hm.info.n_heads
    for s in ("ln1.hook_normalized", "ln2.hook_normalized", "hook_resid_mid"):
        if s not in hm.spec.sites:
            raise HookNameError(f"this architecture has no {s}; edge patching needs pre-norm blocks")
    blocks = text_model(hm.model).layers
    receivers = []
    for l in range(n):
        receivers.append(Receiver(f"L{l}ATTN", 2 * l + 1, f"blocks.{l}.ln1.hook_normalized",
                                  f"blocks.{l}.hook_resid_pre", _module(blocks[l], hm.spec.sites["ln1.hook_normalized"].path)))
        receivers.append(Receiver(f"L{l}MLP_IN", 2 * l + 2, f"blocks.{l}.ln2.hook_normalized",
                                  f"blocks.{l}.hook_resid_mid", _module(blocks[l], hm.spec.sites["ln2.hook_normalized"].path)))
    receivers.append(Receiver("LOGITS", 2 * n + 1, "ln_final.hook_normalized", f"blocks.{n - 1}.hook_resid_post",
                              text_model(hm.model).norm))
    names = sorted({r.input_hook for r in receivers} | {"blocks.0.hook_resid_pre"}
                   | {f"blocks.{l}.{s}" for l in range(n) for s in ("attn.hook_z", "attn.hook_out", "hook_mlp_out")})
    logits, cache = hm.run_with_cache(mx.array([clean_ids, corrupt_ids]), names=names)
    heads, _ = stack_head_results(cache)  # [n * H, 2, L, d]
    diff = lambda a: (a[..., 0, :, :] - a[..., 1, :, :]).astype(mx.float32)  # noqa: E731
    deltas = [diff(cache["blocks.0.hook_resid_pre"])[None]]
    senders, stage = ["input"], [0]
    hd = diff(heads)
    for l in range(n):
        deltas.append(hd[l * H:(l + 1) * H])
        senders += [f"L{l}H{h}" for h in range(H)]
        stage += [2 * l + 1] * H
        deltas.append(diff(cache[f"blocks.{l}.hook_mlp_out"])[None])
        senders.append(f"L{l}MLP")
        stage.append(2 * l + 2)
    d = hm.info.d_model
    metric_vals = _metric_rows(hm, metric, logits)
    g = Graph(senders, np.array(stage), receivers, clean_ids, corrupt_ids, metric_vals[0], metric_vals[1],
              mx.concatenate(deltas), {r.label: cache[r.input_hook][1].astype(mx.float32) for r in receivers},
              {r.label: _rms_gain(r.norm, d) for r in receivers})
    mx.eval(g.deltas, *g.inputs.values())
    return g


def _metric_rows(hm: HookedModel, metric: Metric, logits: mx.array) -> list[float]:
    last = logits[:, -1].astype(mx.float32)
    vocab = metric_vocab(metric)
    vals = metric_on(metric, last[:, list(vocab)] if vocab is not None else last)
    return [float(v) for v in np.array(vals)]


def edge_scores(hm: HookedModel, graph: Graph, metric: Metric, steps: int | None = 8) -> np.ndarray:
    """[n_senders, n_receivers] EAP scores (steps=None: gradient at the corrupted run) or EAP-IG (steps midpoints).

    Invalid edges (receiver before sender) are 0.
    """
    ids = graph.corrupt_ids
    taps = []
    if steps is None:
        rows = mx.array([ids])
    else:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise MlxInterpError(f"steps={steps!r} is not allowed; use a whole number >= 1, or None for plain EAP")
        _, cache = hm.run_with_cache(mx.array([graph.clean_ids, ids]), names=["hook_embed"])
        e = cache["hook_embed"].astype(mx.float32)
        alpha = mx.array(((np.arange(steps) + 0.5) / steps).astype(np.float32)).reshape(-1, 1, 1)
        line = e[1:2] + alpha * (e[0:1] - e[1:2])
        taps = [("hook_embed", T.Fn(fn=lambda a, ctx: line.astype(a.dtype)))]
        rows = mx.array([ids] * steps)
    recs = graph.receivers
    at = list(dict.fromkeys([r.norm_hook for r in recs] + [r.input_hook for r in recs]))
    res = value_and_grad(hm, rows, metric, at, taps=taps)
    grads = []
    for r in recs:
        gain, eps = graph.gains[r.label]
        x = res.acts[r.input_hook]
        _, (gx,) = mx.vjp(lambda x: mx.fast.rms_norm(x, gain.astype(mx.float32), eps), [x], [res.grads[r.norm_hook]])
        grads.append(mx.mean(gx, axis=0))  # [L, d]
    G = mx.stack(grads)  # [n_receivers, L, d]
    S = graph.deltas.reshape(len(graph.senders), -1) @ G.reshape(len(recs), -1).T
    return np.where(graph.valid(), np.array(S, dtype=np.float64), 0.0)


def run_edges(hm: HookedModel, graph: Graph, metric: Metric, edge_sets: Sequence[dict[tuple[int, int], float]],
              batch_size: int = 16) -> np.ndarray:
    """Metric with each set of kept edges ({(sender, receiver): weight}, weight 1 = the full difference).

    Each row runs the corrupted prompt; receiver v reads its corrupted input plus the weighted
    clean - corrupt differences of its kept edges, through its own norm.
    """
    valid = graph.valid()
    for es in edge_sets:
        for (u, v) in es:
            if not (0 <= u < len(graph.senders) and 0 <= v < len(graph.receivers)) or not valid[u, v]:
                raise MlxInterpError(f"edge ({u}, {v}) does not exist in this graph")
    out = np.zeros(len(edge_sets))
    L = len(graph.corrupt_ids)
    for s in range(0, len(edge_sets), batch_size):
        chunk = edge_sets[s:s + batch_size]
        B = len(chunk)
        taps = []
        for v, r in enumerate(graph.receivers):
            W = np.zeros((B, len(graph.senders)), np.float32)
            for row, es in enumerate(chunk):
                for (u, vv), w in es.items():
                    if vv == v:
                        W[row, u] += w
            if not W.any():
                continue
            add = (mx.array(W) @ graph.deltas.reshape(len(graph.senders), -1)).reshape(B, L, -1)
            x = graph.inputs[r.label][None] + add
            gain, eps = graph.gains[r.label]
            touched = mx.array(W.any(axis=1)).reshape(B, 1, 1)
            new = mx.fast.rms_norm(x.astype(gain.dtype), gain, eps)
            taps.append((r.norm_hook, T.Fn(fn=lambda a, ctx, new=new, m=touched: mx.where(m, new.astype(a.dtype), a))))
        logits = forward_last(hm, mx.array([graph.corrupt_ids] * B), taps, vocab=metric_vocab(metric))[:, 0]
        vals = metric_on(metric, logits)
        mx.eval(vals)
        out[s:s + B] = np.array(vals, dtype=np.float64)
    return out


QKV = ("q", "k", "v")


def _head_receiver(hm: HookedModel, receiver) -> tuple[int, int, str]:
    """(layer, head index in its projection, "q"|"k"|"v") for "L3H1.q" or (3, 1, "q"); k/v heads are
    kv heads (a query head's k/v receiver is its group's kv head)."""
    if isinstance(receiver, str):
        try:
            head, kind = receiver.split(".")
            layer, h = (int(x) for x in head[1:].split("H"))
            if not head.startswith("L"):
                raise ValueError
        except ValueError:
            raise MlxInterpError(f"receiver {receiver!r} is not allowed; use 'L<layer>H<head>.<q|k|v>', "
                                 "e.g. 'L3H1.q'") from None
    else:
        layer, h, kind = receiver
    n, H, Hkv = hm.info.n_layers, hm.info.n_heads, hm.info.n_kv_heads
    if kind not in QKV or not 0 <= int(layer) < n or not 0 <= int(h) < H:
        raise MlxInterpError(f"receiver {receiver!r} is out of range: layers 0..{n - 1}, heads 0..{H - 1}, q|k|v")
    return int(layer), int(h) if kind == "q" else int(h) // (H // Hkv), kind


def path_patch_heads(hm: HookedModel, graph: Graph, metric: Metric, edges: Sequence[tuple[str, object]],
                     batch_size: int = 16) -> np.ndarray:
    """Metric after patching each single edge sender -> one head's query / key / value input.

    edges: (sender label from graph.senders, e.g. "L1H2", "L0MLP" or "input"; receiver "L3H1.q" or
    (layer, head, "q"|"k"|"v")). Row i runs the corrupted prompt with layer l's q/k/v projection of that
    head (kv head for k and v) computed from norm(corrupted input of layer l + the sender's clean -
    corrupt difference) at every position; nothing else in layer l changes. Returns [len(edges)].
    """
    blocks = text_model(hm.model).layers
    H, Hkv, D = hm.info.n_heads, hm.info.n_kv_heads, hm.info.head_dim
    rows = []
    for sender, receiver in edges:
        if sender not in graph.senders:
            raise MlxInterpError(f"sender {sender!r} is not in the graph; e.g. {', '.join(graph.senders[:3])}")
        u = graph.senders.index(sender)
        layer, h, kind = _head_receiver(hm, receiver)
        if graph.sender_stage[u] >= 2 * layer + 1:
            raise MlxInterpError(f"edge {sender} -> {receiver} does not exist: {sender} writes after layer "
                                 f"{layer} reads")
        rows.append((u, layer, h, kind))
    out = np.zeros(len(rows))
    L = len(graph.corrupt_ids)
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        B = len(chunk)
        groups: dict[tuple[int, str], list[tuple[int, int, int]]] = {}
        for row, (u, layer, h, kind) in enumerate(chunk):
            groups.setdefault((layer, kind), []).append((row, u, h))
        taps = []
        for (layer, kind), members in groups.items():
            gain, eps = graph.gains[f"L{layer}ATTN"]
            us = mx.array([u for _, u, _ in members])
            x = graph.inputs[f"L{layer}ATTN"][None] + graph.deltas[us]  # [m, L, d]
            normed = mx.fast.rms_norm(x.astype(gain.dtype), gain, eps)
            proj = plain_call(getattr(blocks[layer].self_attn, f"{kind}_proj"), normed)
            heads = H if kind == "q" else Hkv
            proj = proj.reshape(len(members), L, heads, D)
            new = mx.zeros((B, L, heads, D), dtype=proj.dtype)
            mask = np.zeros((B, 1, heads, 1), bool)
            idx = mx.array([row for row, _, _ in members])
            new[idx] = proj
            for row, _, h in members:
                mask[row, 0, h, 0] = True
            m = mx.array(mask)
            taps.append((f"blocks.{layer}.attn.hook_{kind}",
                         T.Fn(fn=lambda a, ctx, new=new, m=m: mx.where(m, new.astype(a.dtype), a))))
        logits = forward_last(hm, mx.array([graph.corrupt_ids] * B), taps, vocab=metric_vocab(metric))[:, 0]
        vals = metric_on(metric, logits)
        mx.eval(vals)
        out[s:s + B] = np.array(vals, dtype=np.float64)
    return out


@dataclass
class Circuit:
    """Edges ranked by |score|, the faithfulness curve and the chosen circuit."""

    senders: list[str]
    receivers: list[str]
    scores: np.ndarray
    ranked: list[tuple[int, int]]
    curve_edges: list[int]
    curve_metric: list[float]
    clean_metric: float
    corrupt_metric: float
    n_edges: int  # size of the circuit: the smallest curve point recovering >= `target` of the effect
    target: float

    @property
    def recovered(self) -> list[float]:
        d = self.clean_metric - self.corrupt_metric
        return [(m - self.corrupt_metric) / d if abs(d) > 1e-9 else float("nan") for m in self.curve_metric]

    def edges(self, k: int | None = None) -> list[dict]:
        k = self.n_edges if k is None else k
        return [{"sender": self.senders[u], "receiver": self.receivers[v], "score": float(self.scores[u, v])}
                for u, v in self.ranked[:k]]

    def to_dict(self) -> dict:
        return {"clean_metric": self.clean_metric, "corrupt_metric": self.corrupt_metric,
                "n_edges_total": len(self.ranked), "target_recovered": self.target, "n_edges": self.n_edges,
                "faithfulness": [{"edges": n, "metric": m, "recovered": r}
                                 for n, m, r in zip(self.curve_edges, self.curve_metric, self.recovered)],
                "edges": self.edges()}


def _curve_points(total: int) -> list[int]:
    pts = {0, total}
    k = 1
    while k < total:
        pts.update({k, min(total, 2 * k), min(total, 5 * k)})
        k *= 10
    return sorted(p for p in pts if p <= total)


def find_circuit(hm: HookedModel, clean, corrupt, metric: Metric, steps: int | None = 8, target: float = 0.8,
                 points: Sequence[int] | None = None, progress: Callable[[str], None] | None = None) -> Circuit:
    """EAP(-IG) scores for every edge, then the faithfulness curve of the top-N edges by |score| (exact edge
    patching, one batch per chunk of N values); the circuit is the smallest N recovering >= target."""
    graph = build_graph(hm, clean, corrupt, metric)
    if progress:
        progress("scoring edges")
    S = edge_scores(hm, graph, metric, steps)
    valid = np.argwhere(graph.valid())
    order = np.argsort(-np.abs(S[valid[:, 0], valid[:, 1]]), kind="stable")
    ranked = [tuple(map(int, valid[i])) for i in order]
    pts = sorted(set(points)) if points is not None else _curve_points(len(ranked))
    if any(p < 0 or p > len(ranked) for p in pts):
        raise MlxInterpError(f"curve points must be in 0..{len(ranked)}")
    if progress:
        progress(f"faithfulness curve ({len(pts)} points)")
    vals = run_edges(hm, graph, metric, [{e: 1.0 for e in ranked[:p]} for p in pts])
    d = graph.clean_metric - graph.corrupt_metric
    rec = (vals - graph.corrupt_metric) / d if abs(d) > 1e-9 else np.full(len(vals), np.nan)
    hit = [p for p, r in zip(pts, rec) if r >= target]
    n_edges = hit[0] if hit else len(ranked)
    return Circuit(graph.senders, [r.label for r in graph.receivers], S, ranked, list(pts), vals.tolist(),
                   graph.clean_metric, graph.corrupt_metric, n_edges, target)


def plot_circuit(c: Circuit, n_layers: int, k: int | None = None):
    """Faithfulness curve and the circuit's edges drawn by layer; returns a matplotlib Figure."""
    fig, (a0, a1) = subplots(1, 2, figsize=(13, 5))
    xs = [max(n, 0.8) for n in c.curve_edges]
    a0.plot(xs, c.recovered, "o-")
    a0.set_xscale("log")
    a0.axhline(c.target, color="grey", ls="--", lw=0.8)
    a0.axvline(max(c.n_edges, 0.8), color="tab:red", lw=0.8)
    a0.set(xlabel="edges kept (top by |score|; 0 plotted at 0.8)", ylabel="metric recovered (1 = clean)",
           title="faithfulness")

    def pos(label: str, receiver: bool) -> tuple[float, float]:
        if label == "input":
            return 0.0, -1.0
        if label == "LOGITS":
            return 0.0, 2 * n_layers
        layer = int(label[1:].split("H")[0].split("M")[0].split("A")[0])
        if "H" in label and not label.endswith("_IN") and "ATTN" not in label:
            h = int(label.split("H")[1])
            return 1.0 + h, 2 * layer
        if label.endswith("ATTN"):
            return 1.0, 2 * layer - 0.4
        return -1.0, 2 * layer + 1 - (0.4 if receiver else 0.0)

    edges = c.edges(k)
    top = max((abs(e["score"]) for e in edges), default=1.0) or 1.0
    for e in edges:
        (x0, y0), (x1, y1) = pos(e["sender"], False), pos(e["receiver"], True)
        a1.plot([x0, x1], [y0, y1], color="tab:red" if e["score"] > 0 else "tab:blue",
                lw=0.5 + 3 * abs(e["score"]) / top, alpha=0.7)
    nodes = {e["sender"] for e in edges} | {e["receiver"] for e in edges}
    for lab in nodes:
        x, y = pos(lab, lab.endswith(("ATTN", "_IN")) or lab == "LOGITS")
        a1.annotate(lab, (x, y), fontsize=6, ha="center")
    a1.set(xlabel="MLP (left) | heads (right)", ylabel="depth", title=f"circuit: {len(edges)} edges (red +, blue -)")
    a1.set_xticks([])
    return fig
