"""Two-hop factual queries: answer tokens, single-hop checks, the last-position logit lens, patch variants.

A query (data/twohop/queries.json) is a two-hop prompt ("The capital of the
country where the Eiffel Tower is located is"), its bridge ("France") and
answer ("Paris"), each with aliases, and the two single-hop prompts
(hop1_prompt -> bridge, hop2_prompt -> answer).

**What "answers" means** (every two-hop study uses `judge`):

- A target (bridge or answer) is the set of first tokens of `" " + alias`
  over its aliases. An alias that starts with an article ("the Netherlands")
  contributes the first token of the rest (" Netherlands"): " the" alone is
  evidence for no particular entity.
- The model *answers* a prompt when its top-1 next token (final layer, last
  position, greedy) is in that set, or when the top-1 is the article and the
  model's greedy continuation is the whole `" the X"` alias.
- Stricter (`answers_fully`): the greedy continuation reproduces the whole
  token sequence of some alias (checked teacher-forced: each alias token is
  the argmax given the prompt and the alias tokens before it). Multi-token
  answers whose first token is generic (" New" Delhi, " South" America) are
  what separates the two.
- A target's *rank* at a layer is the number of vocabulary tokens with a
  strictly larger logit than the target's best-ranked token (0 = top-1).

Prompts are plain text (no chat template) on every model, instruction-tuned
or not: the queries are completions.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxinterp.tasks import data
from mlxinterp.core.errors import MlxInterpError, PromptError
from mlxinterp.core.hooks import ActivationCache, HookedModel
from mlxinterp.analysis.patching import Patch, forward_last
from mlxinterp.analysis.stats import format_interval
from mlxinterp.core.taps import Capture
from mlxinterp.core import names as H

QUERIES = "twohop/queries.json"
ARTICLES = ("the ", "The ")
# Where the first-hop entity sits in each family's two-hop prompt (templates: data/twohop/README.md).
E1_PATTERNS = {
    "landmark_capital": r"^The capital of the country where (?P<e1>.+) (?:is|are) located is$",
    "landmark_currency": r"^The currency of the country where (?P<e1>.+) (?:is|are) located is the$",
    "landmark_language": r"^The official language of the country where (?P<e1>.+) (?:is|are) located is$",
    "uscity_state_capital": r"^The capital of the US state where (?P<e1>.+) is located is$",
    "book_author_country": r"^The author of (?P<e1>.+) was born in the country of$",
    "artwork_artist_country": r"^The artist who created (?P<e1>.+) was born in the country of$",
    "capital_continent": r"^The country whose capital is (?P<e1>.+) is located on the continent of$",
    "club_country_capital": r"^The capital of the country where (?P<e1>the football club .+) is based is$",
    "company_country_capital": r"^The capital of the country where (?P<e1>the company .+) is headquartered is$",
}


@dataclass(frozen=True)
class Target:
    """Token ids a bridge or answer may start with; full alias sequences; the article token of "the X" aliases."""

    first: tuple[int, ...]
    seqs: tuple[tuple[int, ...], ...]
    article_seqs: tuple[tuple[int, ...], ...] = ()


def load_queries(families: Iterable[str] | None = None) -> list[dict]:
    """The queries in file order; optionally only some families (an unknown name is an error)."""
    doc = data.load_json(QUERIES)
    if families is None:
        return list(doc["items"])
    wanted = list(families)
    unknown = [f for f in wanted if f not in doc["families"]]
    if unknown:
        raise MlxInterpError(f"unknown two-hop families {unknown}", hint=f"allowed: {', '.join(doc['families'])}")
    return [it for it in doc["items"] if it["family"] in wanted]


def _enc(hm: HookedModel, text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in hm.tokenizer.encode(text, add_special_tokens=False))


def target(hm: HookedModel, aliases: Sequence[str]) -> Target:
    """The Target of a list of aliases (see the module docstring for the rule)."""
    if not aliases:
        raise PromptError("a target needs at least one alias")
    first, seqs, article = [], [], []
    for a in aliases:
        seq = _enc(hm, " " + a)
        if not seq:
            raise PromptError(f"alias {a!r} encodes to no tokens")
        seqs.append(seq)
        if a.startswith(ARTICLES):
            article.append(seq)
            first.append(_enc(hm, " " + a[4:])[0])
        else:
            first.append(seq[0])
    return Target(tuple(dict.fromkeys(first)), tuple(dict.fromkeys(seqs)), tuple(dict.fromkeys(article)))


def last_states(hm: HookedModel, prompts: Sequence[str], batch_size: int = 16,
                capture: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(final logits at the last position [B, V], resid_post at the last position [n_layers, B, d_model] or None).

    Left-padded batches; only the last column is unembedded.
    """
    names = [H.resid_post(i) for i in range(hm.info.n_layers)] if capture else []
    logits, resid = [], []
    for s in range(0, len(prompts), batch_size):
        batch = hm.tokens(list(prompts[s : s + batch_size]))
        cache = ActivationCache(hm, batch.left_padding)
        tap = Capture(store=cache)
        out = forward_last(hm, batch, [(n, tap) for n in names])[:, 0]
        if capture:
            h = cache.stack("hook_resid_post")[:, :, -1].astype(mx.float32)
            mx.eval(out, h)
            resid.append(np.array(h))
        logits.append(np.array(out))
    return np.concatenate(logits), (np.concatenate(resid, axis=1) if capture else None)


def ranks(logits, ids: Sequence[int]) -> np.ndarray:
    """Rank of the best of `ids` along the last axis: how many tokens have a strictly larger logit."""
    x = mx.array(logits) if isinstance(logits, np.ndarray) else logits
    best = mx.max(x[..., list(ids)], axis=-1, keepdims=True)
    return np.array(mx.sum(x > best, axis=-1)).astype(np.int64)


def lens_ranks(hm: HookedModel, resid: np.ndarray, targets: Sequence[Sequence[Sequence[int]]]) -> np.ndarray:
    """Logit-lens ranks [B, n_targets, n_layers] for resid [n_layers, B, d_model]; targets[b] = id sets of row b.

    The lens is the model's own final norm + unembedding (hm.unembed), float32.
    """
    logits = hm.unembed(mx.array(resid))  # [n_layers, B, V]
    out = []
    for b, sets in enumerate(targets):
        out.append(np.stack([ranks(logits[:, b], ids) for ids in sets]))
    return np.stack(out)


def first_entry(rank_by_layer: Sequence[int], k: int) -> int | None:
    """First layer whose rank is < k (the target enters the top-k), or None if it never does."""
    hits = np.flatnonzero(np.asarray(rank_by_layer) < k)
    return int(hits[0]) if hits.size else None


def answers_fully(hm: HookedModel, prompts: Sequence[str], seqs: Sequence[Sequence[Sequence[int]]],
                  batch_size: int = 16) -> list[bool]:
    """Per prompt: is one of its token sequences the model's greedy continuation? (teacher-forced, batched)."""
    rows, owner, lengths = [], [], []
    for i, (p, ss) in enumerate(zip(prompts, seqs)):
        ids = hm.tokens(p).ids[0].tolist()
        for seq in ss:
            rows.append(ids + list(seq))
            owner.append(i)
            lengths.append(len(seq))
    ok = np.zeros(len(prompts), bool)
    for s in range(0, len(rows), batch_size):
        chunk, lens = rows[s : s + batch_size], lengths[s : s + batch_size]
        k = max(lens)
        logits = forward_last(hm, hm.tokens(chunk), read=tuple(range(-k - 1, -1)))  # predicts the last k tokens
        pred = np.array(mx.argmax(logits, axis=-1))
        for j, (row, n) in enumerate(zip(chunk, lens)):
            if np.array_equal(pred[j, k - n :], row[-n:]):
                ok[owner[s + j]] = True
    return ok.tolist()


def judge(hm: HookedModel, prompts: Sequence[str], logits: np.ndarray, targets: Sequence[Target]) -> list[bool]:
    """Does the model answer each prompt? logits [B, V] are its final last-position logits (module docstring)."""
    top = np.argmax(logits, axis=-1)
    ok = [int(t) in tg.first for t, tg in zip(top, targets)]
    check = [i for i, (t, tg) in enumerate(zip(top, targets))
             if not ok[i] and any(int(t) == s[0] for s in tg.article_seqs)]
    if check:
        full = answers_fully(hm, [prompts[i] for i in check], [targets[i].article_seqs for i in check])
        for i, f in zip(check, full):
            ok[i] = f
    return ok


def char_span_tokens(hm: HookedModel, prompt: str, start: int, end: int) -> tuple[int, int]:
    """Token indices (first, last) of the characters prompt[start:end], counting BOS as the model sees it.

    Raises PromptError when the span's edges are not token boundaries.
    """
    full = list(hm.tokens(prompt).ids[0].tolist())
    before = list(hm.tokens(prompt[:start].rstrip()).ids[0].tolist()) if prompt[:start].strip() else full[:1]
    upto = list(hm.tokens(prompt[:end]).ids[0].tolist())
    if full[: len(upto)] != upto or full[: len(before)] != before or len(before) >= len(upto):
        raise PromptError(f"characters {start}:{end} ({prompt[start:end]!r}) of {prompt!r} do not fall on token "
                          "boundaries for this tokenizer")
    return len(before), len(upto) - 1


def e1_span(hm: HookedModel, item: dict) -> tuple[int, int]:
    """Token indices (first, last) of the first-hop entity in the two-hop prompt."""
    pattern = E1_PATTERNS.get(item["family"])
    if pattern is None:
        raise MlxInterpError(f"no entity pattern for family {item['family']!r}",
                             hint=f"add one to mlxinterp.tasks.twohop.E1_PATTERNS (known: {', '.join(E1_PATTERNS)})")
    m = re.match(pattern, item["prompt"])
    if m is None:
        raise PromptError(f"{item['id']}: prompt {item['prompt']!r} does not match its family pattern {pattern!r}")
    return char_span_tokens(hm, item["prompt"], m.start("e1"), m.end("e1"))


def bridge_position(hm: HookedModel, item: dict) -> int:
    """Token index of the bridge's last token in hop2_prompt (which names the bridge)."""
    p, b = item["hop2_prompt"], item["bridge"]
    start = p.find(b)
    if start < 0:
        raise PromptError(f"{item['id']}: hop2_prompt {p!r} does not contain the bridge {b!r}")
    return char_span_tokens(hm, p, start, start + len(b))[1]


def backpatch_variants(resid: np.ndarray, donor: np.ndarray | None = None
                       ) -> tuple[list[tuple[int, int]], list[list[Patch]]]:
    """Every (source s, target t < s): write layer s's last-position resid_post over layer t's.

    resid [n_layers, d_model] is the query's own last-position resid_post;
    `donor` (same shape, another prompt's) supplies the value instead, still
    from layer s: the control with the same pairs but none of the query's content.
    """
    src = resid if donor is None else donor
    pairs = [(s, t) for s in range(resid.shape[0]) for t in range(s)]
    return pairs, [[Patch(H.resid_post(t), -1, src[s])] for s, t in pairs]


def target_metric(tgt: Target):
    """run_variants metric: per row [log-prob of the best target token, its rank, 1 if it is top-1]."""
    ids = list(tgt.first)

    def metric(logits: mx.array) -> mx.array:
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        best = mx.max(logp[:, ids], axis=-1)
        rank = mx.sum(logp > best[:, None], axis=-1).astype(mx.float32)
        return mx.stack([best, rank, (rank == 0).astype(mx.float32)], axis=-1)

    return metric


def pick_foil(hm: HookedModel, item: dict, pool: Sequence[dict], rng: np.random.Generator) -> dict | None:
    """A random other query of the same family whose bridge and answer share no first token with `item`'s.

    Chosen a priori (before any measurement) from `pool`; None when no query qualifies.
    """
    same = [c for c in pool if c["family"] == item["family"] and c["id"] != item["id"]]
    a, b = set(target(hm, item["answer_aliases"]).first), set(target(hm, item["bridge_aliases"]).first)
    for j in rng.permutation(len(same)):
        c = same[int(j)]
        if a.isdisjoint(target(hm, c["answer_aliases"]).first) and b.isdisjoint(target(hm, c["bridge_aliases"]).first):
            return c
    return None


def foil_rng(seed: int, query_id: str) -> np.random.Generator:
    """The generator that draws a query's foil: the same in every experiment, process and model."""
    key = int.from_bytes(hashlib.sha256(f"foil:{query_id}".encode()).digest()[:8], "little")
    return np.random.default_rng([seed, key])


# ----------------------------------------------------------------- query outcomes
# (the twohop study computes them; backpatch, crossprompt and quantization reuse them)


def chunked(xs: list, size: int) -> list[list]:
    """`xs` in consecutive lists of `size` (the last may be shorter): the unit ctx.map checkpoints."""
    return [xs[i : i + size] for i in range(0, len(xs), size)]


def status_chunk(hm: HookedModel, pairs: list[list[dict]], top_k: int | None) -> list[dict]:
    """Per (query, foil) pair: single-hop and two-hop outcomes; with top_k, logit-lens ranks too.

    One left-padded batch per prompt kind. With top_k None nothing is captured
    (statuses only: the outcomes are the same numbers either way).
    """
    items = [q for q, _ in pairs]
    dec = hm.tokenizer.decode
    ans = [target(hm, q["answer_aliases"]) for q in items]
    bri = [target(hm, q["bridge_aliases"]) for q in items]
    two = [q["prompt"] for q in items]
    logits, resid = last_states(hm, two, batch_size=len(two), capture=top_k is not None)
    hop1, hop2 = _dedup_logits(hm, [q["hop1_prompt"] for q in items]), _dedup_logits(hm, [q["hop2_prompt"] for q in items])
    ok2 = judge(hm, two, logits, ans)
    ok_h1 = judge(hm, [q["hop1_prompt"] for q in items], hop1, bri)
    ok_h2 = judge(hm, [q["hop2_prompt"] for q in items], hop2, ans)
    strict = [False] * len(items)
    idx = [i for i, ok in enumerate(ok2) if ok]
    if idx:
        full = answers_fully(hm, [two[i] for i in idx], [ans[i].seqs for i in idx])
        for i, f in zip(idx, full):
            strict[i] = f
    out = []
    for i, (q, foil) in enumerate(pairs):
        rec = {"id": q["id"], "family": q["family"], "difficulty": q["difficulty"], "foil": foil["id"] if foil else None,
               "twohop": bool(ok2[i]), "twohop_full_sequence": bool(strict[i]), "hop1": bool(ok_h1[i]),
               "hop2": bool(ok_h2[i]), "top1": {"twohop": dec([int(np.argmax(logits[i]))]),
                                                "hop1": dec([int(np.argmax(hop1[i]))]), "hop2": dec([int(np.argmax(hop2[i]))])},
               "final_rank": {"answer": int(ranks(logits[i], ans[i].first)),
                              "bridge": int(ranks(logits[i], bri[i].first))}}
        out.append(rec)
    if top_k is not None:
        sets = []
        for q, foil in pairs:
            s = [target(hm, q["bridge_aliases"]).first, target(hm, q["answer_aliases"]).first]
            if foil:
                s += [target(hm, foil["bridge_aliases"]).first, target(hm, foil["answer_aliases"]).first]
            sets.append(s)
        width = max(map(len, sets))
        sets = [s + [s[0]] * (width - len(s)) for s in sets]  # pad rows without a foil, dropped below
        r = lens_ranks(hm, resid, sets)
        for i, rec in enumerate(out):
            names = ["bridge", "answer"] + (["foil_bridge", "foil_answer"] if pairs[i][1] else [])
            rec["ranks"] = {nm: r[i, j].tolist() for j, nm in enumerate(names)}
            rec["entry"] = {nm: first_entry(rec["ranks"][nm], top_k) for nm in names}
    return out


def _dedup_logits(hm: HookedModel, prompts: list[str]) -> np.ndarray:
    """Final last-position logits per prompt, running each distinct prompt once."""
    uniq = list(dict.fromkeys(prompts))
    logits, _ = last_states(hm, uniq, batch_size=len(uniq), capture=False)
    where = {p: i for i, p in enumerate(uniq)}
    return logits[[where[p] for p in prompts]]


def foil_pairs(hm: HookedModel, items: list[dict], pool: list[dict], ctx) -> list[list[dict]]:
    """(query, foil) per query; the foil is drawn a priori with a per-query seed (stable under resume and n)."""
    return [[q, pick_foil(hm, q, pool, foil_rng(ctx.seed, q["id"]))] for q in items]


def statuses(hm: HookedModel, ctx, chunk: int = 8) -> tuple[list[dict], str]:
    """Every query's outcomes (answers hop1 / hop2 / two-hop), and where they came from.

    Reused from this model's twohop result when it covers every query with
    the same weights (same chunking, hence the same numbers); else computed
    here, checkpointed by ctx.map under the key "status". The calling
    experiment declares `reuses=["twohop"]` (ctx.record_of reads the result).
    """
    pool = load_queries()
    rec = ctx.record_of("twohop")
    if rec is not None:
        byid = {q["id"]: q for q in rec["result"].get("queries", [])}
        same = (rec.get("model", {}).get("weights_hash") == hm.info.weights_hash
                and rec.get("config", {}).get("chunk") == chunk)
        if same and all(q["id"] in byid for q in pool):
            return [byid[q["id"]] for q in pool], "reused from twohop/result.json"
    pairs = foil_pairs(hm, pool, pool, ctx)
    done = ctx.map("status", chunked(pairs, chunk), lambda ch: status_chunk(hm, ch, None))
    return [r for ch in done for r in ch], "computed (no matching twohop result)"


def ci_text(c: dict, pct: bool = True) -> str:
    """'27.3 % [22.9, 32.2] (94/344)' for a proportion, '+1.23 [0.80, 1.70] (n=40)' for a mean."""
    if c.get("k") is not None:
        return format_interval(c, ".1f", pct=pct, counts=True)
    return format_interval(c, "+.2f", counts=True)


def choose_backpatch_queries(recs: list[dict], n: int, rng: np.random.Generator) -> list[dict]:
    """Wrong two-hop queries in a seeded order, those answering both single hops first; the first n.

    The back-patching study's choice of queries, also used by the quantization study.
    """
    wrong = [r for r in recs if not r["twohop"]]
    first = [r for r in wrong if r["hop1"] and r["hop2"]]
    rest = [r for r in wrong if not (r["hop1"] and r["hop2"])]
    order = [first[i] for i in rng.permutation(len(first))] + [rest[i] for i in rng.permutation(len(rest))]
    return order[:n]
