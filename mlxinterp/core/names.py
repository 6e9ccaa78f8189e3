"""Hook names, built in one place.

Names follow TransformerLens (`blocks.{layer}.hook_resid_post`, `blocks.{layer}.attn.hook_z`, ...),
so code and notes read the same in both tools. Build them with these helpers instead of
f-strings, so a typo fails here with the list of what exists rather than deep in a forward:

    from mlxinterp.core import names as H
    H.resid_post(9)                  # 'blocks.9.hook_resid_post'
    H.name(9, "attn.hook_z")         # 'blocks.9.attn.hook_z' (the full suffix or a short alias: "z")
    H.every_layer(18, "resid_post")  # one name per layer

Negative layers are kept as given: the hooked model resolves them against its depth.
"""
from __future__ import annotations

import numbers
import re

from mlxinterp.core.errors import HookNameError, closest

EMBED = "hook_embed"
LN_FINAL = "ln_final.hook_normalized"
LOGITS = "hook_logits"

# Short aliases -> the suffix after `blocks.{layer}.`; the full suffix is accepted too.
ALIASES = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "ln1": "ln1.hook_normalized",
    "ln2": "ln2.hook_normalized",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "z": "attn.hook_z",
    "pattern": "attn.hook_pattern",
    "attn_scores": "attn.hook_attn_scores",
    "attn_raw": "attn.hook_out",
    "mlp_pre": "mlp.hook_pre",
    "mlp_post": "mlp.hook_post",
    "mlp_raw": "mlp.hook_out",
}
_SUFFIX_RE = re.compile(r"^([a-z0-9_]+\.)*hook_[a-z0-9_]+$")
_NAME_RE = re.compile(r"^blocks\.(-?\d+)\.(.+)$")


def suffix(point: str) -> str:
    """The per-block suffix for an alias or a suffix, e.g. 'z' -> 'attn.hook_z'."""
    if not isinstance(point, str):
        raise HookNameError(f"hook point {point!r} is not a string",
                            hint=f"use a suffix such as 'hook_resid_post' or an alias: {', '.join(ALIASES)}")
    full = ALIASES.get(point, point)
    if not _SUFFIX_RE.match(full):
        guess = closest(point, [*ALIASES, *ALIASES.values()])
        raise HookNameError(f"{point!r} is not a per-block hook point",
                            hint=(f"did you mean {guess}? " if guess else "") + f"aliases: {', '.join(ALIASES)}")
    return full


def name(layer: int, point: str) -> str:
    """`blocks.{layer}.{suffix}` for a layer index and a suffix or alias."""
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):  # numpy integers are fine
        raise HookNameError(f"layer {layer!r} is not a whole number")
    return f"blocks.{int(layer)}.{suffix(point)}"


def every_layer(n_layers: int, point: str) -> list[str]:
    """The hook `point` at every layer 0..n_layers-1, in order."""
    return [name(layer, point) for layer in range(n_layers)]


def split(hook: str) -> tuple[int | None, str]:
    """(layer, suffix) of a hook name; layer None for hooks outside the blocks (embed, final norm, logits)."""
    m = _NAME_RE.match(hook)
    return (int(m.group(1)), m.group(2)) if m else (None, hook)


def resid_pre(layer: int) -> str:
    return name(layer, "hook_resid_pre")


def resid_mid(layer: int) -> str:
    return name(layer, "hook_resid_mid")


def resid_post(layer: int) -> str:
    return name(layer, "hook_resid_post")


def attn_out(layer: int) -> str:
    return name(layer, "hook_attn_out")


def mlp_out(layer: int) -> str:
    return name(layer, "hook_mlp_out")


def z(layer: int) -> str:
    return name(layer, "attn.hook_z")


def mlp_post(layer: int) -> str:
    return name(layer, "mlp.hook_post")
