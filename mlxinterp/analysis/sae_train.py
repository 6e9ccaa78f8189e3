"""Training sparse autoencoders (TopK or JumpReLU) in MLX, from activations streamed to disk.

TopK recipe: Gao et al. 2024, "Scaling and evaluating sparse autoencoders" (TopK
activation, unit-norm decoder rows, encoder initialised as the decoder's
transpose, b_dec at the data mean, AuxK loss on dead latents with weight 1/32).
JumpReLU recipe: Rajamanoharan et al. 2024, "Jumping ahead" (the Gemma Scope
SAEs): f = z * H(z - theta) with a learned per-latent threshold theta = exp(log_theta),
loss = reconstruction + lambda * L0, where L0 = sum_i H(z_i - theta_i). H has no
useful derivative, so theta is trained with straight-through pseudo-derivatives
from a rectangle kernel of bandwidth eps: d/dtheta [z H(z - theta)] := -(theta/eps) K,
d/dtheta H(z - theta) := -(1/eps) K, K = 1[|z - theta| < eps/2]. These are the exact
theta-derivatives of the kernel-smoothed functions `smoothed_jumprelu` and
`smoothed_step` (tested by finite differences). lambda rises linearly from 0 over the
first `l0_warmup` of the steps, as in Gemma Scope. Same initialisation, unit-norm
decoder and scaling as the TopK recipe; no AuxK (the L0 penalty, not a hard k,
decides how many latents fire).
Activations are scaled by one constant so that E||x||^2 = d_in during training
(SAELens's "expected_average_only_in"); the constant is folded back into the
saved weights, so the saved SAE reads the model's raw activations.

Collection runs the model only up to the SAE's hook: a tap captures the activation
and raises, so later blocks and the 262k-row unembedding never run. The BOS
position is skipped (its residual norm is far larger than any text position's).
Shards of float32 rows go to disk with a manifest written after each shard, so a
killed collection resumes after the last finished shard. Training checkpoints
(weights, Adam moments, dead-latent counters, step) are one safetensors file plus
JSON, written atomically.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import io
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

from mlxinterp.analysis.sae import SAE, SAEError, sae_taps
from mlxinterp.core.io import atomic_write_bytes, read_json, write_json

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

MANIFEST = "manifest.json"
Progress = Callable[[str, int, int], None]  # (stage, done, total)


def activations_upto(hm: HookedModel, hook: str, ids: mx.array) -> mx.array:
    """[B, L, width] float32 activations at `hook`. Only the captures are evaluated (run_with_cache with
    logits=False): MLX computes lazily, so the layers after `hook` are never computed in one process, and a
    layer-sharded model still runs every rank's share of the forward in step (core/pipeline.py)."""
    _, cache = hm.run_with_cache(ids, names=[hook], logits=False)
    a = cache[hook]
    return a.reshape(*a.shape[:2], -1).astype(mx.float32)


# ---------------------------------------------------------------- activation store
class ActivationStore:
    """Shards `acts_XXXXX.npy` (float32 [rows, d]) and `tokens_XXXXX.npy` (int32 [windows, ctx_len]) + manifest."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.manifest = read_json(self.dir / MANIFEST) if (self.dir / MANIFEST).exists() else None

    @property
    def shards(self) -> list[dict]:
        return self.manifest["shards"] if self.manifest else []

    @property
    def n_rows(self) -> int:
        return sum(s["rows"] for s in self.shards)

    @property
    def d(self) -> int:
        return int(self.manifest["d"])

    def acts(self, i: int) -> np.ndarray:
        return np.load(self.dir / self.shards[i]["acts"], mmap_mode="r")

    def tokens(self, i: int) -> np.ndarray:
        return np.load(self.dir / self.shards[i]["tokens"])

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to n rows spread over all shards (for initialisation and scale)."""
        per = max(1, n // max(1, len(self.shards)))
        rng = np.random.default_rng(seed)
        out = []
        for i, s in enumerate(self.shards):
            a = self.acts(i)
            out.append(np.asarray(a[np.sort(rng.choice(s["rows"], min(per, s["rows"]), replace=False))]))
        return np.concatenate(out)

    def batches(self, batch_size: int, epoch: int, seed: int, start: int = 0) -> Iterator[np.ndarray]:
        """Rows in a seeded order per epoch: shards shuffled, rows shuffled within a shard, read as one
        stream (a batch may span two shards), so an epoch trains on every row but the last
        n_rows mod batch_size; batches from `start` on (a resumed run skips whole shards without
        reading them)."""
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(self.shards))
        perms = [rng.permutation(self.shards[i]["rows"]) for i in order]
        skip = start * batch_size  # rows of the stream before the first batch wanted
        pending: list[np.ndarray] = []
        have, seen = 0, 0
        for i, perm in zip(order, perms):
            lo, seen = seen, seen + len(perm)
            if seen <= skip:
                continue
            a = np.asarray(self.acts(i))
            idx = perm[max(0, skip - lo):]
            while have + len(idx) >= batch_size:
                need = batch_size - have
                pending.append(a[np.sort(idx[:need])])
                yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending, have, idx = [], 0, idx[need:]
            if len(idx):
                pending.append(a[np.sort(idx)])
                have += len(idx)

    def batches_per_epoch(self, batch_size: int) -> int:
        return sum(s["rows"] for s in self.shards) // batch_size


def collect(hm: HookedModel, hook: str, windows: Iterable[np.ndarray], out_dir: str | Path, n_tokens: int,
            batch_windows: int = 16, shard_rows: int = 16384, progress: Progress | None = None,
            source: dict | None = None, log: Callable[[str], None] | None = None, streams: int = 1) -> ActivationStore:
    """Stream activations at `hook` for about `n_tokens` text positions (BOS skipped) into shards.

    Resumes: windows already in finished shards are skipped (the caller's iterator must give the
    same windows in the same order, e.g. tasks.corpus.windows with the same seed).
    """
    if isinstance(streams, bool) or not isinstance(streams, int) or streams < 1:
        raise SAEError(f"streams={streams!r} is not allowed; use an integer >= 1")
    out = Path(out_dir)
    hm.point(hook)
    store = ActivationStore(out)
    key = {"model": hm.info.spec, "hook": hm.point(hook).name, "source": source or {}}
    if store.manifest and store.manifest.get("key") != key:
        raise SAEError(f"{out} holds activations of another collection ({store.manifest.get('key')})",
                       hint="use another --work directory or delete this one")
    man = store.manifest or {"key": key, "d": int(np.prod(hm.point(hook).feature_shape)), "shards": [],
                             "windows": 0, "seconds": 0.0, "skip_first": 0}
    skip = man["windows"]
    done_rows = sum(s["rows"] for s in man["shards"])
    it = iter(windows)
    for _ in range(skip):
        next(it, None)
    acts, toks, rows = [], [], 0
    t0 = time.perf_counter()
    skip_first = None

    def flush():
        nonlocal acts, toks, rows
        if not acts:
            return
        i = len(man["shards"])
        a, t = np.concatenate(acts), np.stack(toks)
        names = {"acts": f"acts_{i:05d}.npy", "tokens": f"tokens_{i:05d}.npy"}
        for name, arr in ((names["acts"], a), (names["tokens"], t)):
            buf = io.BytesIO()
            np.save(buf, arr)
            atomic_write_bytes(out / name, buf.getvalue())
        man["shards"].append({**names, "rows": int(a.shape[0]), "windows": int(t.shape[0])})
        man["windows"] += int(t.shape[0])
        man["seconds"] = round(man["seconds"] + time.perf_counter() - t0_flush[0], 3)
        t0_flush[0] = time.perf_counter()
        write_json(out / MANIFEST, man)
        if log:
            log(f"{out.name}: shard {i} written, {sum(s['rows'] for s in man['shards'])} positions so far "
                f"({man['seconds']:.0f} s of collection)")
        acts, toks, rows = [], [], 0

    t0_flush = [t0]
    # MLX's CPU back end runs each stream's element-wise ops on one thread; with two streams one batch's
    # element-wise work (GELU, norms) overlaps another's matmuls. Each batch is computed exactly as alone.
    lanes = [mx.default_stream(mx.default_device())] + [mx.new_stream(mx.default_device()) for _ in range(streams - 1)]
    while done_rows + rows < n_tokens:
        chunks = []
        for _ in lanes:
            chunk = [w for _, w in zip(range(batch_windows), it)]
            if chunk:
                chunks.append(chunk)
        if not chunks:
            break
        pending, skips = [], []
        for lane, chunk in zip(lanes, chunks):
            if len({len(w) for w in chunk}) != 1:
                raise SAEError("corpus windows must all have one length")
            skips.append(1 if hm.info.needs_bos and hm.info.bos_token_id is not None
                         and int(chunk[0][0]) == hm.info.bos_token_id else 0)
            with mx.stream(lane):
                pending.append(activations_upto(hm, hook, mx.array(np.stack(chunk)))[:, skips[-1]:])
        mx.eval(*pending)
        for a, chunk, skip_first in zip(pending, chunks, skips):
            a = np.array(a).reshape(-1, a.shape[-1])
            if not np.isfinite(a).all():
                raise SAEError(f"non-finite activations at {hook}", hint="run the model in float32 (--dtype float32)")
            acts.append(a)
            toks.extend(chunk)
            rows += a.shape[0]
            man["skip_first"] = skip_first
            if rows >= shard_rows:
                flush()
                done_rows = sum(s["rows"] for s in man["shards"])
            if progress:
                progress("collect", min(done_rows + rows, n_tokens), n_tokens)
    flush()
    return ActivationStore(out)


# ---------------------------------------------------------------- JumpReLU with straight-through thresholds
def _batch_sum(g: mx.array, theta: mx.array) -> mx.array:
    """Sum a per-element gradient over the batch axes down to theta's shape [d_sae]."""
    return g.reshape(-1, theta.shape[-1]).sum(axis=0)


@mx.custom_function
def jumprelu(z: mx.array, theta: mx.array, eps: mx.array) -> mx.array:
    """z * H(z - theta); gradient to z is H(z - theta), to theta the rectangle-kernel pseudo-derivative."""
    return mx.where(z > theta, z, 0.0)


@jumprelu.vjp
def _jumprelu_vjp(primals, cotangent, output):
    z, theta, eps = primals
    window = (mx.abs(z - theta) < eps / 2).astype(z.dtype)
    d_theta = _batch_sum(-(theta / eps) * window * cotangent, theta)
    return cotangent * (z > theta).astype(z.dtype), d_theta, mx.zeros_like(eps)


@mx.custom_function
def step(z: mx.array, theta: mx.array, eps: mx.array) -> mx.array:
    """H(z - theta) (counts into L0); no gradient to z, the rectangle-kernel pseudo-derivative to theta."""
    return (z > theta).astype(z.dtype)


@step.vjp
def _step_vjp(primals, cotangent, output):
    z, theta, eps = primals
    window = (mx.abs(z - theta) < eps / 2).astype(z.dtype)
    return mx.zeros_like(z), _batch_sum(-(1.0 / eps) * window * cotangent, theta), mx.zeros_like(eps)


def smoothed_step(z: mx.array, theta: mx.array, eps: float) -> mx.array:
    """H convolved with the rectangle kernel: its theta-derivative is exactly `step`'s pseudo-derivative."""
    return mx.clip((z - theta) / eps + 0.5, 0.0, 1.0)


def smoothed_jumprelu(z: mx.array, theta: mx.array, eps: float) -> mx.array:
    """z above the window, 0 below it, and in between the function whose theta-derivative is -(theta/eps):
    z - (theta^2 - (z - eps/2)^2) / (2 eps). Its theta-derivative is exactly `jumprelu`'s pseudo-derivative."""
    mid = z - (theta * theta - (z - eps / 2) ** 2) / (2 * eps)
    return mx.where(z - theta >= eps / 2, z, mx.where(z - theta <= -eps / 2, 0.0, mid))


# ---------------------------------------------------------------- training
ARCHITECTURES = ("topk", "jumprelu")


@dataclass
class TrainConfig:
    width: int = 4096
    k: int = 32  # TopK only
    architecture: str = "topk"  # or "jumprelu"
    l0_coef: float = 1e-3  # JumpReLU: lambda, in units of the normalised MSE per active latent
    l0_warmup: float = 0.1  # JumpReLU: fraction of the steps over which lambda rises from 0
    # JumpReLU kernel width eps and initial theta, in Gemma Scope's units (inputs scaled to E||x||^2 = 1, where
    # both are 0.001); training here scales to E||x||^2 = d_in, so both are multiplied by sqrt(d_in).
    bandwidth: float = 0.001
    threshold_init: float = 0.001
    batch_size: int = 1024
    epochs: int = 1
    lr: float | None = None  # default: 2e-4 * sqrt(16384 / width), Gao et al.'s scaling
    aux_k: int | None = None  # default: d_in // 2
    aux_coef: float = 1 / 32
    dead_tokens: int = 100_000  # a latent is dead after this many training tokens without firing
    seed: int = 0
    checkpoint_every: int = 100  # steps

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else 2e-4 * math.sqrt(16384 / self.width)


def check_config(cfg: TrainConfig) -> None:
    """Options are whole numbers in range (checked before any model loads)."""
    for name, lo in (("width", 1), ("k", 1), ("batch_size", 1), ("epochs", 1), ("checkpoint_every", 1), ("dead_tokens", 1)):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise SAEError(f"{name}={v!r} is not allowed; use a whole number >= {lo}")
    if cfg.architecture not in ARCHITECTURES:
        raise SAEError(f"architecture={cfg.architecture!r} is not allowed; use one of {', '.join(ARCHITECTURES)}")
    if cfg.architecture == "topk" and cfg.k > cfg.width:
        raise SAEError(f"k={cfg.k} is larger than width={cfg.width}")
    for name in ("l0_coef", "bandwidth", "threshold_init"):
        v = getattr(cfg, name)
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                and (v > 0 or name == "l0_coef")):
            raise SAEError(f"{name}={v!r} is not allowed; use a number {'>= 0' if name == 'l0_coef' else '> 0'}")
    if not (isinstance(cfg.l0_warmup, (int, float)) and 0 <= cfg.l0_warmup <= 1):
        raise SAEError(f"l0_warmup={cfg.l0_warmup!r} is not allowed; use a fraction in [0, 1]")
    if not cfg.learning_rate() > 0:
        raise SAEError(f"lr={cfg.lr!r} is not allowed; use a number > 0")


def _init_params(d: int, cfg: TrainConfig, mean: np.ndarray) -> dict[str, mx.array]:
    """Gao et al.'s initialisation (shared by both architectures); JumpReLU adds log(theta)."""
    rng = np.random.default_rng(cfg.seed)
    W_dec = rng.normal(size=(cfg.width, d)).astype(np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    p = {"W_enc": mx.array(W_dec.T.copy()), "b_enc": mx.zeros((cfg.width,)), "W_dec": mx.array(W_dec),
         "b_dec": mx.array(mean.astype(np.float32))}
    if cfg.architecture == "jumprelu":
        p["log_threshold"] = mx.full((cfg.width,), math.log(cfg.threshold_init * math.sqrt(d)))
    return p


def jumprelu_loss(p: dict, x: mx.array, l0_coef: float | mx.array, eps: float, var: mx.array):
    """Normalised MSE + l0_coef * mean L0 for a JumpReLU SAE (straight-through thresholds)."""
    theta = mx.exp(p["log_threshold"])
    e = mx.array(eps, dtype=mx.float32)
    z = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    f = jumprelu(z, theta, e)
    err = x - (f @ p["W_dec"] + p["b_dec"])
    mse = mx.mean(mx.sum(err * err, axis=-1)) / var
    l0 = mx.mean(mx.sum(step(z, theta, e), axis=-1))
    return mse + l0_coef * l0, (mse, mx.stop_gradient(f))


def _loss(p: dict, x: mx.array, k: int, aux_k: int, aux_coef: float, dead_ids: mx.array | None, var: mx.array):
    """Normalised MSE (fraction of variance unexplained in the batch) + AuxK on dead latents.

    The k chosen activations are scattered into a dense [batch, width] matrix and decoded with one
    matmul: on a CPU that is faster than gathering the k decoder rows per position and scatter-adding
    their gradient back (a whole step 1.4x, `python -m bench sae-step`; same gradients). The encoder
    is written x W_enc - b_dec W_enc rather than (x - b_dec) W_enc: the same values, but b_dec's
    gradient is then one [width] x [width, d] product, not a dense [batch, width] x [width, d] one.
    """
    pre = x @ p["W_enc"] - p["b_dec"] @ p["W_enc"] + p["b_enc"]
    idx = mx.stop_gradient(mx.argpartition(-pre, kth=k - 1, axis=-1)[:, :k])
    vals = mx.maximum(mx.take_along_axis(pre, idx, axis=-1), 0.0)
    f = mx.put_along_axis(mx.zeros_like(pre), idx, vals, axis=-1)
    recon = f @ p["W_dec"] + p["b_dec"]
    err = x - recon
    mse = mx.mean(mx.sum(err * err, axis=-1)) / var
    if dead_ids is None:
        return mse, (mse, f)
    # AuxK: the dead latents' top aux_k pre-activations try to explain what the live ones left over.
    pre_d = mx.take(pre, dead_ids, axis=1)
    ak = min(aux_k, int(dead_ids.shape[0]))
    kth = mx.stop_gradient(mx.topk(pre_d, ak, axis=-1).min(axis=-1, keepdims=True))
    fa = mx.where(pre_d >= kth, mx.maximum(pre_d, 0.0), 0.0)
    e_hat = fa @ p["W_dec"][dead_ids]
    e = mx.stop_gradient(err)
    aux = mx.mean(mx.sum((e - e_hat) ** 2, axis=-1)) / mx.maximum(mx.mean(mx.sum(e * e, axis=-1)), 1e-12)
    return mse + aux_coef * aux, (mse, f)


def _save_checkpoint(path: Path, params: dict, opt, state: dict) -> None:
    from mlx.utils import tree_flatten
    from safetensors.numpy import save as st_save

    tensors = {f"param.{k}": np.array(v) for k, v in params.items()}
    for k, v in tree_flatten(opt.state):
        if isinstance(v, mx.array):
            tensors[f"opt.{k}"] = np.array(v)
    tensors["since_fired"] = np.array(state.pop("since_fired"), dtype=np.int64)
    atomic_write_bytes(path.with_suffix(".safetensors"), st_save(tensors))
    write_json(path.with_suffix(".json"), state)


def _load_checkpoint(path: Path):
    from mlx.utils import tree_unflatten
    from safetensors.numpy import load_file

    t = load_file(str(path.with_suffix(".safetensors")))
    state = read_json(path.with_suffix(".json"))
    params = {k[6:]: mx.array(v) for k, v in t.items() if k.startswith("param.")}
    opt_state = tree_unflatten([(k[4:], mx.array(v)) for k, v in t.items() if k.startswith("opt.")])
    state["since_fired"] = t["since_fired"]
    return params, opt_state, state


def train(store: ActivationStore, cfg: TrainConfig, work: str | Path, hook: str, progress: Progress | None = None,
          log: Callable[[str], None] | None = None) -> tuple[SAE, dict]:
    """Train a TopK or JumpReLU SAE on the store's rows; resumes from `work/checkpoint.*` when it matches cfg."""
    d = store.d
    check_config(cfg)
    work = Path(work)
    ckpt = work / "checkpoint"
    aux_k = min(cfg.aux_k or d // 2, cfg.width)
    per_epoch = store.batches_per_epoch(cfg.batch_size)
    if per_epoch == 0:
        raise SAEError(f"{store.n_rows} activation rows are fewer than one batch of {cfg.batch_size}")
    total = per_epoch * cfg.epochs
    # epochs and checkpoint_every are left out: rerunning with more epochs extends a finished run.
    fingerprint = {"cfg": {k: v for k, v in asdict(cfg).items() if k not in ("epochs", "checkpoint_every")},
                   "rows": store.n_rows, "hook": hook}
    opt = optim.Adam(learning_rate=cfg.learning_rate())
    if ckpt.with_suffix(".json").exists() and read_json(ckpt.with_suffix(".json")).get("fingerprint") == fingerprint:
        params, opt_state, state = _load_checkpoint(ckpt)
        opt.state = opt_state
        step, scale, since = state["step"], state["scale"], state["since_fired"]
        seconds = state["seconds"]
        if log:
            log(f"resuming at step {step}/{total}")
    else:
        sample = store.sample(20000, cfg.seed)
        scale = float(math.sqrt(d / np.mean(np.sum(sample.astype(np.float64) ** 2, axis=1))))
        params = _init_params(d, cfg, sample.mean(0) * scale)
        opt.init(params)
        step, since, seconds = 0, np.zeros(cfg.width, np.int64), 0.0
    var_sample = store.sample(20000, cfg.seed + 1).astype(np.float64) * scale
    var = mx.array(float(np.mean(np.sum((var_sample - var_sample.mean(0)) ** 2, axis=1))))

    jump = cfg.architecture == "jumprelu"
    eps = cfg.bandwidth * math.sqrt(d)
    warm = max(1, round(cfg.l0_warmup * total))
    if jump:
        loss_and_grad = mx.value_and_grad(lambda p, x, coef: jumprelu_loss(p, x, coef, eps, var))
    else:
        loss_and_grad = mx.value_and_grad(lambda p, x, dead: _loss(p, x, cfg.k, aux_k, cfg.aux_coef, dead, var))

    t0 = time.perf_counter()
    history = []
    while step < total:
        epoch, start = divmod(step, per_epoch)
        for batch in store.batches(cfg.batch_size, epoch, cfg.seed, start):
            x = mx.array(batch) * scale
            if jump:
                coef = mx.array(cfg.l0_coef * min(1.0, (step + 1) / warm), dtype=mx.float32)
                (loss, (mse, f)), g = loss_and_grad(params, x, coef)
            else:
                dead = np.flatnonzero(since >= cfg.dead_tokens)
                (loss, (mse, f)), g = loss_and_grad(params, x, mx.array(dead.astype(np.int32)) if dead.size else None)
            fired = mx.any(f > 0, axis=0)
            l0 = mx.mean(mx.sum(f > 0, axis=-1).astype(mx.float32))
            # Keep decoder rows at unit norm: drop the gradient along each row, step, renormalise (Gao et al.).
            W = params["W_dec"]
            g["W_dec"] = g["W_dec"] - mx.sum(g["W_dec"] * W, axis=1, keepdims=True) * W
            params = opt.apply_gradients(g, params)
            params["W_dec"] = params["W_dec"] / mx.linalg.norm(params["W_dec"], axis=1, keepdims=True)
            mx.eval(params, opt.state, loss, mse, fired, l0)
            since = np.where(np.array(fired), 0, since + cfg.batch_size)
            step += 1
            if step % 10 == 0 or step == total:
                history.append({"step": step, "fvu": round(float(mse.item()), 5), "l0": round(float(l0.item()), 2),
                                "dead": int((since >= cfg.dead_tokens).sum())})
            if progress:
                progress("train", step, total)
            if step % cfg.checkpoint_every == 0 or step == total:
                secs = seconds + time.perf_counter() - t0
                if log:
                    log(f"step {step}/{total}: batch FVU {float(mse.item()):.4f}, "
                        f"{int((since >= cfg.dead_tokens).sum())} dead latents, {secs:.0f} s")
                _save_checkpoint(ckpt, params, opt, {"step": step, "scale": scale, "since_fired": since,
                                                     "fingerprint": fingerprint, "seconds": round(secs, 3)})
            if step >= total:
                break
    seconds += time.perf_counter() - t0
    sae = _fold_scale(params, scale, cfg, hook)
    info = {"steps": step, "tokens_seen": step * cfg.batch_size, "scale": scale, "train_seconds": round(seconds, 1),
            "lr": cfg.learning_rate(), "aux_k": aux_k, "history": history,
            "dead_latents_at_end": int((since >= cfg.dead_tokens).sum())}
    return sae, info


def _fold_scale(p: dict, s: float, cfg: TrainConfig, hook: str) -> SAE:
    """Training saw x * s; the saved SAE reads x. Pre-activations (hence features and thresholds) are
    unchanged: (s x - b) W = (x - b/s)(s W), and x_hat = (f W_dec + b_dec) / s."""
    if cfg.architecture == "jumprelu":
        return SAE(p["W_enc"] * s, p["b_enc"], p["W_dec"] / s, p["b_dec"] / s, "jumprelu", hook, None, None,
                   mx.exp(p["log_threshold"]))
    return SAE(p["W_enc"] * s, p["b_enc"], p["W_dec"] / s, p["b_dec"] / s, "topk", hook, None, cfg.k)


# ---------------------------------------------------------------- metrics
def reconstruction_metrics(sae: SAE, rows: np.ndarray, dense_frac: float = 0.1, batch: int = 4096) -> dict:
    """Fraction of variance explained, L0, dead (never active on these rows) and dense (active on more than
    `dense_frac` of rows) fractions of latents, on held-out activation rows."""
    x = rows.astype(np.float64)
    mu = x.mean(0)
    sse = tot = 0.0
    l0 = []
    fires = np.zeros(sae.d_sae, np.int64)
    for s in range(0, len(rows), batch):
        xb = mx.array(rows[s : s + batch].astype(np.float32))
        f = sae.encode(xb)
        r = sae.decode(f)
        mx.eval(f, r)
        fb, rb = np.array(f), np.array(r, dtype=np.float64)
        sse += float(np.sum((x[s : s + batch] - rb) ** 2))
        tot += float(np.sum((x[s : s + batch] - mu) ** 2))
        active = fb > 0
        l0.append(active.sum(1))
        fires += active.sum(0)
    l0 = np.concatenate(l0)
    freq = fires / len(rows)
    return {"fve": round(1 - sse / tot, 5), "fvu": round(sse / tot, 5), "l0_mean": round(float(l0.mean()), 3),
            "dead_frac": round(float((fires == 0).mean()), 5), "dense_frac": round(float((freq > dense_frac).mean()), 5),
            "rows": int(len(rows))}


def ce_metrics(hm: HookedModel, sae: SAE, windows: list[np.ndarray], batch_windows: int = 2) -> dict:
    """Next-token cross-entropy (nats) of the clean model, with the SAE spliced in (no error term), and with
    the hook zero-ablated; CE recovered = (zero - spliced) / (zero - clean). BOS is left untouched."""
    from mlxinterp.core.taps import Ablate

    L = len(windows[0])
    not_bos = np.ones((1, L), bool)
    not_bos[0, 0] = False
    sums = {"clean": 0.0, "spliced": 0.0, "zero_ablated": 0.0}
    n = 0
    for s in range(0, len(windows), batch_windows):
        ids = np.stack(windows[s : s + batch_windows])
        mask = np.repeat(not_bos, len(ids), axis=0)
        variants = {"clean": [], "spliced": sae_taps(sae, keep_error=False, positions=mask),
                    "zero_ablated": [(sae.hook_out or sae.hook, Ablate(positions=mask))]}
        for name, taps in variants.items():
            with hm.hooks(taps):
                logits = hm.model(mx.array(ids))
            lp = logits[:, :-1] - mx.logsumexp(logits[:, :-1], axis=-1, keepdims=True)
            nll = -mx.take_along_axis(lp, mx.array(ids[:, 1:, None].astype(np.int32)), axis=-1)
            sums[name] += float(mx.sum(nll).item())
        n += ids.shape[0] * (L - 1)
    ce = {k: v / n for k, v in sums.items()}
    gap = ce["zero_ablated"] - ce["clean"]
    return {"ce_clean": round(ce["clean"], 5), "ce_spliced": round(ce["spliced"], 5),
            "ce_zero_ablated": round(ce["zero_ablated"], 5), "ce_increase": round(ce["spliced"] - ce["clean"], 5),
            "ce_recovered": round((ce["zero_ablated"] - ce["spliced"]) / gap, 5) if gap > 0 else None,
            "tokens": n}
