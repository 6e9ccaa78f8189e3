"""mlxinterp: look inside mlx-lm models.

    import mlxinterp as mi
    from mlxinterp.core import taps as T

    hm = mi.load("default")                       # Gemma 3 270M, imported from its PyPI package
    logits, cache = hm.run_with_cache("The Eiffel Tower is located in the city of")
    with hm.hooks({"blocks.6.hook_resid_post": T.Add(vector, scale=4.0)}):
        print(hm.generate("I think", max_tokens=20))

Heavy modules (mlx, mlx-lm) load on first use, so `mlxinterp --help` stays fast.
"""
from __future__ import annotations

from importlib import import_module

from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.platform import warn_if_slow_blas

__version__ = "0.1.0"

warn_if_slow_blas()  # Linux: MLX's bundled BLAS is ~16x slower than an installed OpenBLAS

_LAZY = {
    "load": "mlxinterp.core.hooks",
    "HookedModel": "mlxinterp.core.hooks",
    "ActivationCache": "mlxinterp.core.hooks",
    "load_model": "mlxinterp.core.loading",
    "LoadedModel": "mlxinterp.core.loading",
    "ModelInfo": "mlxinterp.core.loading",
    "logit_lens": "mlxinterp.analysis.lens",
    "Direction": "mlxinterp.analysis.directions",
    "run_all": "mlxinterp.suite",
    "taps": "mlxinterp.core.taps",
}

__all__ = ["MlxInterpError", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'mlxinterp' has no attribute {name!r}")
    mod = import_module(_LAZY[name])
    return mod if name == "taps" else getattr(mod, name)
