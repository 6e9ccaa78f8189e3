"""`mlxinterp attribute`: attribution patching between a clean and a corrupted prompt, optionally self-checked."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import typer
from rich.table import Table

from mlxinterp.cli.common import DTYPE_OPT, MODEL_OPT, console, load_model, out, print_json
from mlxinterp.core.errors import MlxInterpError

_METHODS = ("atp", "atp*", "ig")


def attribute(
    model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT,
    clean: str = typer.Option(..., "--clean", help="the clean prompt (the behaviour you want to explain)"),
    corrupt: str = typer.Option(..., "--corrupt", help="the corrupted prompt, same number of tokens"),
    metric: Tuple[str, str] = typer.Option(..., "--metric", help='target and foil tokens: metric = logit(target) - logit(foil), e.g. --metric " Paris" " Rome"'),
    method: str = typer.Option("atp", "--method", help="atp | atp* (adds GradDrop scores) | ig (integrated gradients)"),
    steps: int = typer.Option(8, "--steps", help="integrated-gradient points (method ig)"),
    hooks: str = typer.Option("hook_resid_pre,hook_attn_out,hook_mlp_out,attn.hook_z", "--hooks",
                              help="comma-separated per-layer hook suffixes (or full hook names)"),
    check: int = typer.Option(0, "--check", help="verify the top K estimates and K random cells by exact patching (0: off)"),
    top: int = typer.Option(20, "--top", help="rows of the table (largest |estimate| first)"),
    figure: Optional[Path] = typer.Option(None, "--figure", help="with --check: write the estimate-vs-exact scatter PNG here"),
    as_json: bool = typer.Option(False, "--json", help="print every estimate as JSON"),
) -> None:
    """Attribution patching: the effect of patching each clean activation into the corrupted run, estimated
    from one forward + backward, per (hook, layer, position[, head]).

    Example: [bold]mlxinterp attribute --clean "The Eiffel Tower is in the city of" --corrupt "The Colosseum is in the city of" --metric " Paris" " Rome" --check 10[/bold]
    """
    from mlxinterp.analysis import attribution as A
    from mlxinterp.analysis.patching import logit_diff

    if method not in _METHODS:
        raise MlxInterpError(f"--method {method!r} is not allowed; use one of {', '.join(_METHODS)}")
    if check < 0 or top < 0 or steps < 1:
        raise MlxInterpError(f"--check {check}, --top {top}, --steps {steps}: --check and --top must be >= 0, --steps >= 1")
    if figure is not None and not check:
        raise MlxInterpError("--figure needs --check K (the scatter shows checked cells)")
    names = [h.strip() for h in hooks.split(",") if h.strip()]
    if not names:
        raise MlxInterpError("--hooks is empty; e.g. --hooks hook_resid_pre,attn.hook_z")
    hm = load_model(model, dtype)
    m = logit_diff(hm, metric[0], metric[1])
    with console.status(f"attributing ({method}) ..."):
        att = A.attribute(hm, clean, corrupt, m, hooks=names, method=method, steps=steps)
    if check:
        with console.status(f"checking {2 * check} cells by exact patching ..."):
            att.check = A.check(hm, att, m, k=check)
        if figure is not None:
            from mlxinterp.core.io import save_figure

            save_figure(figure, A.plot_check(att.check))
            console.print(f"scatter: {figure}", highlight=False)
    if as_json:
        print_json({"model": hm.info.spec, **att.to_dict()})
        return
    _print(att, top)


def _print(att, top: int) -> None:
    rows = sorted(att.rows(), key=lambda r: -abs(r["estimate"]))[:top]
    table = Table("hook", "layer", "position", "token", "head", "estimate")
    for r in rows:
        table.add_row(r["hook"], str(r["layer"]), str(r["position"]), repr(att.tokens[r["position"]]),
                      str(r.get("head", "")), f"{r['estimate']:+.4f}")
    out.print(table)
    console.print(f"metric: clean {att.clean_metric:.3f}, corrupt {att.corrupt_metric:.3f} "
                  f"(patching everything would move it by {att.clean_metric - att.corrupt_metric:+.3f})", highlight=False)
    if att.check:
        c = att.check
        rho = "n/a" if c["spearman"] is None else f"{c['spearman']:.3f}"
        console.print(f"check: Spearman {rho}, sign agreement {c['sign_agreement']:.2f}, {c['n_checked']} cells "
                      f"patched exactly, unchecked effects <= {c['max_missed_bound']:.3f} (empirical bound)",
                      highlight=False)


def circuit(
    model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT,
    clean: str = typer.Option(..., "--clean", help="the clean prompt"),
    corrupt: str = typer.Option(..., "--corrupt", help="the corrupted prompt, same number of tokens"),
    metric: Tuple[str, str] = typer.Option(..., "--metric", help='target and foil tokens, e.g. --metric " Paris" " Rome"'),
    steps: int = typer.Option(8, "--steps", help="EAP-IG points on the corrupt -> clean input line (0: plain EAP)"),
    target: float = typer.Option(0.8, "--target", help="the circuit is the fewest top edges recovering this fraction"),
    figure: Optional[Path] = typer.Option(None, "--figure", help="write the faithfulness curve and circuit PNG here"),
    as_json: bool = typer.Option(False, "--json", help="print the circuit, curve and edges as JSON"),
) -> None:
    """Edge attribution patching with integrated gradients (EAP-IG) over heads and MLPs: every edge scored,
    the faithfulness curve measured by exact edge patching, and the smallest circuit reaching --target.

    Example: [bold]mlxinterp circuit --clean "The Eiffel Tower is located in the city of" --corrupt "The Colosseum is located in the city of" --metric " Paris" " Rome" --figure circuit.png[/bold]
    """
    from mlxinterp.analysis import circuits as C
    from mlxinterp.analysis.patching import logit_diff

    if steps < 0 or not 0 < target <= 1:
        raise MlxInterpError(f"--steps {steps}, --target {target}: --steps must be >= 0 and --target in (0, 1]")
    hm = load_model(model, dtype)
    m = logit_diff(hm, metric[0], metric[1])
    with console.status("EAP-IG ...") as st:
        c = C.find_circuit(hm, clean, corrupt, m, steps=steps or None, target=target,
                           progress=lambda msg: st.update(msg))
    if figure is not None:
        from mlxinterp.core.io import save_figure

        save_figure(figure, C.plot_circuit(c, hm.info.n_layers))
        console.print(f"figure: {figure}", highlight=False)
    if as_json:
        print_json({"model": hm.info.spec, "method": "eap-ig" if steps else "eap", **c.to_dict()})
        return
    table = Table("edges kept", "metric", "recovered")
    for n, mv, r in zip(c.curve_edges, c.curve_metric, c.recovered):
        table.add_row(str(n), f"{mv:.3f}", f"{r:.3f}")
    out.print(table)
    edges = Table("sender", "receiver", "score")
    for e in c.edges():
        edges.add_row(e["sender"], e["receiver"], f"{e['score']:+.4f}")
    out.print(edges)
    console.print(f"circuit: {c.n_edges} of {len(c.ranked)} edges recover >= {target:.0%} "
                  f"(clean {c.clean_metric:.3f}, corrupt {c.corrupt_metric:.3f})", highlight=False)
