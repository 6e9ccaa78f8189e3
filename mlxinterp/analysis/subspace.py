"""Subspaces of the residual stream: the attention kernel's Z mask, projectors, OT alignment, ARD-MMD.

The attention kernel of layer l (read from mlx-lm's own weights, never re-derived
from a forward pass). For head h, with d_head rows per head in the projections,

    A_h = W_Q[h] G,  B_h = W_K[kv(h)] G,  C_h = W_V[kv(h)] G,  O_h = W_O[:, h]      (d_head x d, d x d_head)
    QK_h = A_h^T B_h          (d x d: the bilinear form score(x_q, x_k) = x_q^T QK_h x_k, before RoPE / q-k norms)
    OV_h = O_h C_h            (d x d: what head h writes for a residual vector it attends to)

where W_Q[h] are rows h*d_head:(h+1)*d_head of `self_attn.q_proj.weight`, kv(h) = h // (n_heads / n_kv_heads)
expands grouped-query kv heads, 4-bit weights are dequantized with `mx.dequantize`, biases are ignored,
and G = diag(gamma) folds in the layer's input RMSNorm gain (measured by calling the model's own norm
module on the identity), so the kernels act on raw residual-stream directions.
RoPE and Gemma's per-head q/k RMSNorms are nonlinear in position / norm and are not part of the kernel.

The stacked multi-head kernel is

    M_l = [QK_1/|QK_1|_F ; QK_1^T/|QK_1|_F ; OV_1/|OV_1|_F ; ... ; QK_H/|QK_H|_F ; QK_H^T/|QK_H|_F ; OV_H/|OV_H|_F]
          (3 H d x d; each block scaled to unit Frobenius norm so no head and neither circuit dominates)

and the Z mask of layer l is V_Z, the top-k right singular vectors of M_l (k x d, orthonormal rows):
the residual directions the layer's attention reads on its key, query and value sides. They are the
top eigenvectors of M^T M = sum_h (QK_h^T QK_h + QK_h QK_h^T)/|QK_h|^2 + OV_h^T OV_h/|OV_h|^2, which is
computed in factored form (d_head-sized inner products), so a 2048-wide model costs a few d x d products.
"""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import ot
from scipy.spatial.distance import cdist

from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.hooks import HookedModel, plain_call

KERNEL_PARTS = ("qk", "ov")


# ------------------------------------------------------------------ weights


def _weight(linear) -> np.ndarray:
    """A projection's weight as float64 [out, in], dequantizing quantized layers."""
    w = linear.weight
    if hasattr(linear, "scales"):  # nn.QuantizedLinear
        w = mx.dequantize(w, linear.scales, getattr(linear, "biases", None), linear.group_size, linear.bits)
    return np.array(w.astype(mx.float32), dtype=np.float64)


def _layer(hm: HookedModel, layer: int):
    return hm.block(layer)


def norm_gain(hm: HookedModel, layer: int) -> np.ndarray:
    """The input RMSNorm's per-dimension gain (d,), measured with the model's own norm module.

    A one-hot row e_j has RMS 1/sqrt(d), so norm(e_j) = sqrt(d) * gain_j * e_j,
    whatever the family's convention (Gemma's 1 + w, Llama's w).
    """
    d = hm.info.d_model
    out = plain_call(_layer(hm, layer).input_layernorm, mx.eye(d, dtype=mx.float32))
    return np.diag(np.array(out.astype(mx.float32), dtype=np.float64)) / np.sqrt(d)


@dataclass
class HeadWeights:
    """Per-head read/write matrices of one layer, kv heads expanded, norm gain folded in."""

    A: np.ndarray  # [H, dh, d]  W_Q[h] G
    B: np.ndarray  # [H, dh, d]  W_K[kv(h)] G
    C: np.ndarray  # [H, dh, d]  W_V[kv(h)] G
    O: np.ndarray  # [H, d, dh]  W_O[:, h]


def head_weights(hm: HookedModel, layer: int, fold_norm: bool = True) -> HeadWeights:
    """The layer's per-head W_Q, W_K, W_V (GQA-expanded) and W_O blocks as float64."""
    attn = _layer(hm, layer).self_attn
    H, Hkv, dh, d = hm.info.n_heads, hm.info.n_kv_heads, hm.info.head_dim, hm.info.d_model
    q, k, v, o = (_weight(getattr(attn, n)) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    if q.shape != (H * dh, d) or k.shape != (Hkv * dh, d) or o.shape != (d, H * dh):
        raise MlxInterpError(f"layer {layer}: unexpected attention shapes q{q.shape} k{k.shape} o{o.shape} "
                             f"for {H} heads, {Hkv} kv heads, head_dim {dh}, d_model {d}")
    g = norm_gain(hm, layer) if fold_norm else np.ones(d)
    kv = np.arange(H) // (H // Hkv)
    A = q.reshape(H, dh, d) * g
    B = k.reshape(Hkv, dh, d)[kv] * g
    C = v.reshape(Hkv, dh, d)[kv] * g
    O = o.reshape(d, H, dh).transpose(1, 0, 2)
    return HeadWeights(A, B, C, O)


# ------------------------------------------------------------------ kernel


def _check_parts(parts) -> tuple[str, ...]:
    parts = tuple(parts)
    bad = [p for p in parts if p not in KERNEL_PARTS]
    if bad or not parts:
        raise MlxInterpError(f"kernel parts {list(parts)!r} not allowed; use a non-empty subset of {KERNEL_PARTS}")
    return parts


def kernel_gram(w: HeadWeights, parts=KERNEL_PARTS) -> np.ndarray:
    """M^T M (d x d) of the stacked, per-block Frobenius-normalised kernel (module docstring)."""
    parts = _check_parts(parts)
    d = w.A.shape[2]
    gram = np.zeros((d, d))
    for A, B, C, O in zip(w.A, w.B, w.C, w.O):
        if "qk" in parts:
            AA, BB = A @ A.T, B @ B.T  # dh x dh
            fro2 = np.trace(AA @ BB)  # |A^T B|_F^2
            gram += (B.T @ AA @ B + A.T @ BB @ A) / fro2
        if "ov" in parts:
            OO = O.T @ O
            fro2 = np.trace(OO @ (C @ C.T))  # |O C|_F^2
            gram += C.T @ OO @ C / fro2
    return (gram + gram.T) / 2


def z_basis_from_gram(gram: np.ndarray, k: int) -> np.ndarray:
    """Top-k eigenvectors of a Gram matrix as orthonormal rows (k x d), largest first."""
    d = gram.shape[0]
    if not 0 < k <= d:
        raise MlxInterpError(f"k={k} must be between 1 and d_model={d}")
    vals, vecs = np.linalg.eigh(gram)
    return vecs[:, ::-1][:, :k].T.copy()


def z_basis(hm: HookedModel, layer: int, k: int, parts=KERNEL_PARTS, fold_norm: bool = True) -> np.ndarray:
    """V_Z (k x d): top-k right singular vectors of layer `layer`'s stacked attention kernel."""
    return z_basis_from_gram(kernel_gram(head_weights(hm, layer, fold_norm), parts), k)


def kernel_singular_values(w: HeadWeights) -> dict[str, np.ndarray]:
    """Singular values of each head's QK_h and OV_h ([H, dh] each), via QR of the thin factors."""
    def tri(m: np.ndarray) -> np.ndarray:  # R of m = QR (d x dh), from the small Gram (much cheaper than QR)
        try:
            return np.linalg.cholesky(m.T @ m).T
        except np.linalg.LinAlgError:  # rank-deficient head
            return np.linalg.qr(m)[1]

    def svals(left: np.ndarray, right: np.ndarray) -> np.ndarray:  # singular values of left @ right^T
        return np.linalg.svd(tri(left) @ tri(right).T, compute_uv=False)

    qk = np.stack([svals(A.T, B.T) for A, B in zip(w.A, w.B)])
    ov = np.stack([svals(O, C.T) for C, O in zip(w.C, w.O)])
    return {"qk": qk, "ov": ov}


def effective_rank(s: np.ndarray) -> float:
    """Roy & Vetterli's effective rank exp(H(p)), p = s / sum(s), of a singular-value spectrum."""
    s = np.asarray(s, dtype=np.float64)
    s = s[s > 0]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def subspace_similarity(U: np.ndarray, V: np.ndarray) -> float:
    """Mean squared cosine of the principal angles, |U V^T|_F^2 / min(k_U, k_V); chance k/d for random V."""
    return float(np.linalg.norm(U @ V.T) ** 2 / min(len(U), len(V)))


def random_basis(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    """A uniformly random k-dimensional subspace of R^d as orthonormal rows."""
    q, _ = np.linalg.qr(rng.normal(size=(d, k)))
    return q.T.copy()


# ------------------------------------------------------------------ projectors


def projectors(V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P_Z, P_Zperp) = (V^T V, I - V^T V) for orthonormal rows V (k x d)."""
    V = np.asarray(V, dtype=np.float64)
    gram = V @ V.T
    if not np.allclose(gram, np.eye(len(V)), atol=1e-6):
        raise MlxInterpError(f"basis rows are not orthonormal (max |VV^T - I| = {np.abs(gram - np.eye(len(V))).max():.2e})")
    P = V.T @ V
    return P, np.eye(V.shape[1]) - P


def energy_fraction(X: np.ndarray, V: np.ndarray) -> np.ndarray:
    """|V x|^2 / |x|^2 for each row x of X: the share of each vector's energy inside span(V)."""
    X = np.asarray(X, dtype=np.float64)
    return ((X @ V.T) ** 2).sum(-1) / np.maximum((X ** 2).sum(-1), 1e-30)


# ------------------------------------------------------------------ OT alignment


def ot_plan(X_src: np.ndarray, X_tgt: np.ndarray) -> np.ndarray:
    """Exact OT plan (n x m) between token clouds: uniform marginals, squared-Euclidean cost (POT's ot.emd)."""
    X_src, X_tgt = np.asarray(X_src, np.float64), np.asarray(X_tgt, np.float64)
    if X_src.ndim != 2 or X_tgt.ndim != 2 or X_src.shape[1] != X_tgt.shape[1] or not len(X_src) or not len(X_tgt):
        raise MlxInterpError(f"OT needs two non-empty [n, d] clouds of equal d; got {X_src.shape} and {X_tgt.shape}")
    a, b = np.full(len(X_src), 1 / len(X_src)), np.full(len(X_tgt), 1 / len(X_tgt))
    C = ot.dist(X_src, X_tgt, metric="sqeuclidean")
    return ot.emd(a, b, C / C.max() if C.max() > 0 else C)  # scaling the cost leaves the plan unchanged


def ot_transport(X_src: np.ndarray, plan: np.ndarray) -> np.ndarray:
    """Barycentric image of each target token: z(t) = sum_s plan[s, t] / b_t * X_src[s]  (m x d)."""
    b = plan.sum(0)
    return (plan / b).T @ np.asarray(X_src, np.float64)


# ------------------------------------------------------------------ ARD-RBF MMD
#
# Two objectives over log lengthscales (fit_ard), both with the L1 penalty lam * sum_j 1/ell_j:
#
# - "seed" (the Qwen2.5-3B subspace notes verbatim): MINIMISE sum_pairs unbiased MMD^2. Degenerate: every ell_j -> inf sends
#   MMD^2 -> 0 and the penalty -> 0, so nothing keeps a lengthscale finite, and the unbiased estimator's
#   negative values (sampling noise) are a lower target the optimiser finds instead. Kept so that finding
#   stays reproducible (BUGFIX 22).
# - "power": MAXIMISE sum_pairs biased MMD^2 (the V-statistic, >= 0). The penalty now opposes the data
#   term, so the loss is bounded below by -sum_pairs (1/n + 1/m) and a coordinate keeps a finite
#   lengthscale only if it helps tell the languages apart: the short-ell set D is a sparse set of
#   language-discriminating coordinates. Plain MMD^2, not Sutherland et al.'s (2017) MMD^2 / std ratio.
#   Caveat: as all ell -> 0 the V-statistic tends to 1/n + 1/m for ANY two distinct clouds (each token
#   only "sees" itself), so a gain is only evidence of discrimination when it beats the same fit on
#   label-shuffled clouds (the study runs that control) -- the unbiased value is reported alongside.

MMD_ESTIMATORS = ("biased", "unbiased")
ARD_OBJECTIVES = {"seed": ("unbiased", 1.0), "power": ("biased", -1.0)}  # objective -> (estimator, sign of MMD^2 in the loss)


def _check_estimator(estimator: str) -> str:
    if estimator not in MMD_ESTIMATORS:
        raise MlxInterpError(f"MMD estimator {estimator!r} not allowed; use one of {MMD_ESTIMATORS}")
    return estimator


def check_objective(objective: str) -> str:
    """The objective name, or a clear error listing the allowed ones."""
    if objective not in ARD_OBJECTIVES:
        raise MlxInterpError(f"ARD objective {objective!r} not allowed; use one of {tuple(ARD_OBJECTIVES)}")
    return objective


def mmd2_reference(X: np.ndarray, Y: np.ndarray, lengthscales: np.ndarray, estimator: str = "unbiased") -> float:
    """MMD^2 between clouds X (n x d) and Y (m x d) under the ARD-RBF kernel (numpy reference).

    unbiased: within-cloud sums skip the diagonal and divide by n(n-1); biased (V-statistic): keep it, divide by n^2.
    """
    _check_estimator(estimator)
    ell = np.asarray(lengthscales, np.float64)
    Xs, Ys = np.asarray(X, np.float64) / ell, np.asarray(Y, np.float64) / ell
    kxx, kyy, kxy = (np.exp(-0.5 * cdist(a, b, "sqeuclidean")) for a, b in ((Xs, Xs), (Ys, Ys), (Xs, Ys)))
    n, m = len(X), len(Y)
    if estimator == "biased":
        return float(kxx.mean() + kyy.mean() - 2 * kxy.mean())
    return float((kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1)) - 2 * kxy.mean())


def pad_clouds(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """Stack P pairs of clouds into zero-padded [P, N, d] arrays with 0/1 weights [P, N]."""
    n = max(max(len(x), len(y)) for x, y in pairs)
    d = pairs[0][0].shape[1]
    X, Y = np.zeros((len(pairs), n, d), np.float32), np.zeros((len(pairs), n, d), np.float32)
    wx, wy = np.zeros((len(pairs), n), np.float32), np.zeros((len(pairs), n), np.float32)
    for i, (x, y) in enumerate(pairs):
        if len(x) < 2 or len(y) < 2:
            raise MlxInterpError(f"pair {i}: the unbiased MMD needs >= 2 tokens per cloud; got {len(x)} and {len(y)}")
        X[i, : len(x)], Y[i, : len(y)], wx[i, : len(x)], wy[i, : len(y)] = x, y, 1, 1
    return mx.array(X), mx.array(Y), mx.array(wx), mx.array(wy)


def mmd2_batch(log_ell: mx.array, X: mx.array, Y: mx.array, wx: mx.array, wy: mx.array,
               estimator: str = "unbiased") -> mx.array:
    """ARD-RBF MMD^2 of each padded pair [P] (MLX, differentiable in log_ell); estimator as in mmd2_reference."""
    _check_estimator(estimator)
    inv = mx.exp(-log_ell)
    Xs, Ys = X * inv, Y * inv

    def gram(a, b):
        sq = (a * a).sum(-1)[:, :, None] + (b * b).sum(-1)[:, None, :] - 2 * (a @ b.transpose(0, 2, 1))
        return mx.exp(-0.5 * mx.maximum(sq, 0.0))

    def within(a, w):
        n = w.sum(-1)
        total = (w[:, :, None] * gram(a, a) * w[:, None, :]).sum((1, 2))
        if estimator == "biased":
            return total / (n * n)
        return (total - n) / (n * (n - 1))  # drop the diagonal (k(x,x) = 1)

    cross = (wx[:, :, None] * gram(Xs, Ys) * wy[:, None, :]).sum((1, 2)) / (wx.sum(-1) * wy.sum(-1))
    return within(Xs, wx) + within(Ys, wy) - 2 * cross


def mmd2_per_pair(log_ell, X: mx.array, Y: mx.array, wx: mx.array, wy: mx.array) -> dict[str, np.ndarray]:
    """MMD^2 of each pair [P] under each estimator (both, whatever the objective used): per-item records and CIs over pairs."""
    p = mx.array(np.asarray(log_ell, np.float32))
    return {e: np.array(mmd2_batch(p, X, Y, wx, wy, e), np.float64) for e in MMD_ESTIMATORS}


def mmd2_sums(per_pair: dict[str, np.ndarray]) -> dict[str, float]:
    """sum over pairs of mmd2_per_pair's values, per estimator: the quantity the fit's objective uses."""
    return {e: float(v.sum()) for e, v in per_pair.items()}


@dataclass
class ARDFit:
    """Result of an ARD-MMD fit: final log lengthscales, the loss trace, and MMD^2 (summed and per pair) at start and end."""

    log_ell: np.ndarray
    history: list[dict]
    steps: int
    converged: bool
    window_change: float | None  # |loss change| over the last `window` steps / the convergence scale (< tol: converged)
    mmd2_start_pairs: dict[str, np.ndarray]  # per-pair values [P], per estimator
    mmd2_end_pairs: dict[str, np.ndarray]

    @property
    def mmd2_start(self) -> dict[str, float]:
        """Summed MMD^2 per estimator at the initial lengthscales."""
        return mmd2_sums(self.mmd2_start_pairs)

    @property
    def mmd2_end(self) -> dict[str, float]:
        """Summed MMD^2 per estimator at the fitted lengthscales."""
        return mmd2_sums(self.mmd2_end_pairs)


def fit_ard(X: mx.array, Y: mx.array, wx: mx.array, wy: mx.array, log_ell0: np.ndarray, lam: float, *,
            objective: str, lr: float = 0.01, steps: int = 500, tol: float = 1e-4, window: int = 100,
            log_every: int = 25, on_log=None) -> ARDFit:
    """Fit log lengthscales with Adam (mx.grad, mx.compile): loss = sign * sum_pairs MMD^2 + lam * sum_j 1/ell_j.

    objective "seed": sign +1, unbiased MMD^2 (the Qwen2.5-3B subspace notes, degenerate); "power": sign -1, biased MMD^2
    (bounded, well-posed); see the section comment above. `history[i]["mmd2_sum"]` uses the objective's estimator.
    Convergence: stop once the loss moved by less than tol * max(|loss|, |loss - loss at step 1|) over the
    last `window` steps (relative to the distance travelled too, so a loss passing through 0 can converge).
    """
    check_objective(objective)
    if lam < 0 or steps < 1 or lr <= 0:
        raise MlxInterpError(f"ARD fit needs lam >= 0, steps >= 1, lr > 0; got lam={lam}, steps={steps}, lr={lr}")
    estimator, sign = ARD_OBJECTIVES[objective]

    def loss_fn(log_ell):
        mmd = mmd2_batch(log_ell, X, Y, wx, wy, estimator).sum()
        return sign * mmd + lam * mx.exp(-log_ell).sum(), mmd

    grad_fn = mx.value_and_grad(lambda p: loss_fn(p)[0])
    opt = optim.Adam(learning_rate=lr)
    state = {"p": mx.array(np.asarray(log_ell0, np.float32))}
    opt.init(state)

    @mx.compile
    def step_values(p):
        return grad_fn(p)

    start_pairs = mmd2_per_pair(log_ell0, X, Y, wx, wy)
    history, trace, converged, step = [], [], False, 0
    for step in range(1, steps + 1):
        loss, g = step_values(state["p"])
        state = opt.apply_gradients({"p": g}, state)
        mx.eval(state["p"], loss)
        trace.append(float(loss))
        if step % log_every == 0 or step == 1:
            mmd = float(loss_fn(state["p"])[1])
            history.append({"step": step, "loss": trace[-1], "mmd2_sum": mmd})
            if on_log:
                on_log(history[-1])
        if step > window and abs(trace[-1] - trace[-1 - window]) < tol * _loss_scale(trace):
            converged = True
            break
    final = {"step": step, "loss": trace[-1], "mmd2_sum": float(loss_fn(state["p"])[1])}
    if not history or history[-1]["step"] != step:
        history.append(final)
    log_ell = np.array(state["p"], np.float64)
    change = abs(trace[-1] - trace[-1 - window]) / _loss_scale(trace) if len(trace) > window else None
    return ARDFit(log_ell, history, step, converged, change, start_pairs, mmd2_per_pair(log_ell, X, Y, wx, wy))


def _loss_scale(trace: list[float]) -> float:
    """What 'the loss moved little' is relative to: its size or the distance it travelled (it may cross 0)."""
    return max(abs(trace[-1]), abs(trace[-1] - trace[0]), 1e-8)


def svd_warm_start(V: np.ndarray, scale: float, eps: float = 1e-3) -> np.ndarray:
    """log ell_j = log(scale) - log(e_j / mean(e) + eps), e_j = sum_i V[i, j]^2 (coordinate j's share of Z).

    Coordinates that take part in Z start with shorter lengthscales; an average
    coordinate starts at `scale` (sqrt(d) for standardised data: the median heuristic).
    """
    e = (np.asarray(V) ** 2).sum(0)
    return np.log(scale) - np.log(e / e.mean() + eps)
