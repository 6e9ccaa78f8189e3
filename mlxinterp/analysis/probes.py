"""Linear probes with controls: logistic regression per layer, held-out accuracy, selectivity.

A probe that reaches high accuracy shows the information is linearly decodable, not
that the model uses it, and a flexible probe can memorise. Hewitt & Liang 2019
("Designing and interpreting probes with control tasks"): train the same probe on
a *control task* that gives each input type a random but fixed label; selectivity =
real-task accuracy - control-task accuracy on held-out examples. Here the type of an
example is a caller-chosen key (default: the token the activation was read at), so
a probe that succeeds by recognising the token also succeeds on the control task.

The probe's weight vector, mapped back to activation space (w / feature std), is
compared by cosine with the difference-of-means direction (`directions.diff_of_means`)
of the same training split.

Splits keep aligned pairs together (`groups`): a pair's two prompts share their
question, so one in train and one in test would leak.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

from mlxinterp.analysis.directions import diff_of_means
from mlxinterp.core.errors import MlxInterpError


class ProbeError(MlxInterpError):
    """Probe data that cannot train or test a probe."""


@dataclass
class ProbeResult:
    layer: int
    train_acc: float
    test_acc: float
    control_train_acc: float
    control_test_acc: float
    selectivity: float
    cos_diff_of_means: float
    n_train: int
    n_test: int
    # Per held-out example (in test order): its index, and whether the real / control probe got it right,
    # so a caller can put an interval on the accuracy that respects its units (e.g. pairs).
    test_index: list[int] = field(default_factory=list, repr=False)
    test_correct: list[int] = field(default_factory=list, repr=False)
    control_test_correct: list[int] = field(default_factory=list, repr=False)

    def to_dict(self, per_example: bool = False) -> dict:
        d = asdict(self)
        if not per_example:
            for k in ("test_index", "test_correct", "control_test_correct"):
                d.pop(k)
        return d


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 200, lr: float = 0.05
                 ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Full-batch L2-regularised logistic regression in MLX on standardised features.

    Returns (w, b, mean, std): predict with ((X - mean) / std) @ w + b > 0.
    """
    X = np.asarray(X, np.float64)
    mean, std = X.mean(0), X.std(0) + 1e-6
    Z = mx.array(((X - mean) / std).astype(np.float32))
    t = mx.array(np.asarray(y, np.float32))
    p = {"w": mx.zeros((X.shape[1],)), "b": mx.zeros(())}

    def loss(p):
        z = Z @ p["w"] + p["b"]
        # log(1 + e^z) - t z, written stably
        nll = mx.mean(mx.logaddexp(mx.zeros_like(z), z) - t * z)
        return nll + 0.5 * l2 * mx.sum(p["w"] ** 2)

    vg = mx.value_and_grad(loss)
    opt = optim.Adam(learning_rate=lr)
    opt.init(p)
    for _ in range(steps):
        _, g = vg(p)
        p = opt.apply_gradients(g, p)
        mx.eval(p, opt.state)
    return np.array(p["w"], np.float64), float(p["b"].item()), mean, std


def _correct(X, y, w, b, mean, std) -> np.ndarray:
    return (((X - mean) / std @ w + b > 0).astype(int) == y).astype(int)


def _accuracy(X, y, w, b, mean, std) -> float:
    return float(_correct(X, y, w, b, mean, std).mean())


def control_labels(types: Sequence, seed: int = 0, p_positive: float = 0.5) -> np.ndarray:
    """One random label per distinct type (Hewitt & Liang's control task), the same for every example of a type."""
    uniq = sorted(set(types), key=str)
    rng = np.random.default_rng(seed)
    lab = {t: int(rng.random() < p_positive) for t in uniq}
    return np.array([lab[t] for t in types])


def choose_types(token_ids: Sequence[Sequence[int]], max_share: float = 0.25, min_types: int = 8
                 ) -> tuple[int | None, list]:
    """Control-task types for prompt-level probes: the last n tokens of each prompt, for the smallest n that
    gives at least `min_types` types with none holding more than `max_share` of the prompts.

    Hewitt & Liang's types are words that recur between train and test; prompts that all end in "?" would
    make a last-token control one constant label (accuracy 1, selectivity meaningless). Returns (n, types);
    n is None when no ending works and every prompt is its own type (the control is then chance on test).
    """
    N = len(token_ids)
    for n in (1, 2, 3, 4):
        types = [tuple(t[-n:]) for t in token_ids]
        counts = np.unique([str(t) for t in types], return_counts=True)[1]
        if len(counts) >= min(min_types, N) and counts.max() <= max_share * N:
            return n, types
    return None, list(range(N))


def split(n: int, groups: Sequence | None, test_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train / test indices with whole groups on one side."""
    g = np.arange(n) if groups is None else np.asarray(groups)
    uniq = np.unique(g)
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(test_frac * len(uniq))))
    if n_test >= len(uniq):
        raise ProbeError(f"{len(uniq)} groups cannot be split into train and test (test_frac={test_frac})")
    test_groups = rng.choice(uniq, n_test, replace=False)
    test = np.isin(g, test_groups)
    return np.flatnonzero(~test), np.flatnonzero(test)


def probe_layers(acts: dict[int, np.ndarray], y: Sequence[int], types: Sequence | None = None,
                 groups: Sequence | None = None, test_frac: float = 0.25, seed: int = 0, l2: float = 1e-2,
                 steps: int = 200) -> list[ProbeResult]:
    """A probe per layer: {layer: [N, d]} activations, binary labels y; control task from `types`
    (default: every example its own type, i.e. random labels that cannot generalise)."""
    y = np.asarray(y, int)
    n = len(y)
    if set(np.unique(y)) != {0, 1}:
        raise ProbeError(f"probe labels must contain both 0 and 1; got {sorted(set(y.tolist()))}")
    for layer, X in acts.items():
        if X.shape[0] != n or not np.isfinite(X).all():
            raise ProbeError(f"layer {layer}: activations {X.shape} do not match {n} labels or are not finite")
    tr, te = split(n, groups, test_frac, seed)
    if len(set(y[tr])) < 2 or len(set(y[te])) < 2:
        raise ProbeError("the train or test split holds one class only; use more examples or another seed")
    ctrl = control_labels(types if types is not None else list(range(n)), seed + 1, float(y.mean()))
    out = []
    for layer in sorted(acts):
        X = np.asarray(acts[layer], np.float64)
        w, b, mu, sd = fit_logistic(X[tr], y[tr], l2, steps)
        cw, cb, cmu, csd = fit_logistic(X[tr], ctrl[tr], l2, steps)
        right, cright = _correct(X[te], y[te], w, b, mu, sd), _correct(X[te], ctrl[te], cw, cb, cmu, csd)
        acc, cacc = float(right.mean()), float(cright.mean())
        raw_w = w / sd  # the probe's direction in activation space
        dom = diff_of_means(X[tr][y[tr] == 1], X[tr][y[tr] == 0], f"layer {layer}").vector.astype(np.float64)
        cos = float(raw_w @ dom / (np.linalg.norm(raw_w) * np.linalg.norm(dom) + 1e-12))
        out.append(ProbeResult(layer, round(_accuracy(X[tr], y[tr], w, b, mu, sd), 4), round(acc, 4),
                               round(_accuracy(X[tr], ctrl[tr], cw, cb, cmu, csd), 4), round(cacc, 4),
                               round(acc - cacc, 4), round(cos, 4), len(tr), len(te), te.tolist(), right.tolist(),
                               cright.tolist()))
    return out
