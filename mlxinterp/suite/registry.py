"""The experiment registry: `@experiment(name, Config)`, selection, configs and `--set` overrides.

An experiment is a config dataclass plus a function (model, config, ctx) ->
JSON-able dict. Study modules under `mlxinterp.studies` register themselves
when imported (`register_builtin`).

An experiment that reads another experiment's result declares it:
`uses=["twohop"]` (required: `run_all` adds it to the run and runs it first;
`ctx.result_of("twohop")` is an error when it is missing) or
`reuses=["refusal"]` (optional: run first when selected, `ctx.result_of`
returns None when absent, and the study computes what it needs itself).
`select` orders the chosen experiments so those they use run first.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import pkgutil
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from mlxinterp.core.errors import MlxInterpError, ResultsError, closest
from mlxinterp.suite import ranges

if TYPE_CHECKING:
    from mlxinterp.suite.context import Context

BUILTIN_PACKAGE = "mlxinterp.studies"
# '@' and '+' appear in model slugs of variants (default@4bit-g64, ...+mixed-1a2b3c4d; specs.slugify)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]*$")

ExperimentFn = Callable[[Any, Any, "Context"], dict]


# ------------------------------------------------------------------ registry


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A registered experiment: its name, config dataclass, function and one-line doc."""

    name: str
    config_cls: type
    fn: ExperimentFn
    doc: str
    uses: tuple[str, ...] = ()  # experiments whose results it needs (same model, same run output dir)
    reuses: tuple[str, ...] = ()  # experiments whose results it reuses when present (else computes them)
    cost: Callable[[Any, Any], Any] | None = None  # (config, loaded model) -> suite.cost.Cost, before it runs
    quick: tuple[tuple[str, Any], ...] = ()  # field overrides of the quick (smoke-test) profile
    whole_model: str = ""  # why it cannot run with the model's layers split across ranks ("": it can)

    def reads(self) -> tuple[str, ...]:
        """Every experiment this one reads with ctx.result_of, required ones first."""
        return self.uses + self.reuses


_REGISTRY: dict[str, Experiment] = {}
_IMPORT_ERRORS: dict[str, str] = {}


def check_name(name: str, what: str) -> str:
    """Names become directory and file names, so keep them portable."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise MlxInterpError(f"invalid {what} {name!r}",
                             hint="use letters, digits, '_', '-', '.', '@' or '+', starting with a letter or digit")
    return name


def experiment(name: str, config_cls: type, uses: Sequence[str] = (), reuses: Sequence[str] = (),
               cost: Callable[[Any, Any], Any] | None = None,
               quick: dict[str, Any] | None = None, whole_model: str = "") -> Callable[[ExperimentFn], ExperimentFn]:
    """Register `fn(model, config, ctx) -> dict` as experiment `name`.

    `config_cls` must be a dataclass whose fields all have defaults; `run_all`
    fills its `n` and `seed` fields (when present) from its own arguments.
    `uses` names experiments whose result this one needs (`ctx.result_of`);
    `run_all` adds them to a run that lacks them and runs them first.
    `reuses` names experiments whose result it takes when present (run first
    when selected, never added). Names are checked when the run selects them.
    `cost(config, model) -> mlxinterp.suite.cost.Cost` counts what the
    experiment computes, for `run-suite --list --cost` and the estimate printed
    before a run (suite/cost.py).
    Defaults are the full-size experiment (all the data, the N the design
    needs); `quick` holds the field overrides of the quick profile, small sizes
    for smoke tests and a first look (`run-suite --quick`, `run_all(quick=True)`).
    `whole_model` says why the experiment needs the whole model in each process (e.g. gradients
    through every layer); `run-suite --shard layers` then refuses it before loading (core/pipeline.py).
    """
    check_name(name, "experiment name")
    if not (dataclasses.is_dataclass(config_cls) and isinstance(config_cls, type)):
        raise MlxInterpError(f"experiment {name!r}: config must be a dataclass class, "
                             f"not {config_cls!r}")
    uses, reuses = _dependency_names(name, uses, "uses"), _dependency_names(name, reuses, "reuses")
    if cost is not None and not callable(cost):
        raise MlxInterpError(f"experiment {name!r}: cost={cost!r:.60} is not callable",
                             hint="pass a function (config, model) -> mlxinterp.suite.cost.Cost")
    quick_items = _quick_fields(name, config_cls, quick)

    def register(fn: ExperimentFn) -> ExperimentFn:
        old = _REGISTRY.get(name)
        if old is not None and _origin(old.fn) != _origin(fn):
            raise MlxInterpError(f"experiment {name!r} is registered twice: "
                                 f"{_origin(old.fn)} and {_origin(fn)}")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = Experiment(name, config_cls, fn, doc[0].strip() if doc else "", uses, reuses, cost,
                                     quick_items, whole_model)
        return fn

    return register


def _quick_fields(name: str, config_cls: type, quick: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """The quick profile as (field, value) pairs, each naming a field of the config (checked at import)."""
    if quick is None:
        return ()
    if not isinstance(quick, dict):
        raise MlxInterpError(f"experiment {name!r}: quick={quick!r:.60} must be a dict of config fields")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(quick) - fields)
    if unknown:
        raise MlxInterpError(f"experiment {name!r}: quick names unknown config fields {unknown}",
                             hint=f"fields: {', '.join(sorted(fields))}")
    return tuple(quick.items())


def _dependency_names(name: str, names: Sequence[str], what: str) -> tuple[str, ...]:
    """A study's `uses`/`reuses` as a tuple of valid names (a bare string is one name, not its letters)."""
    items = (names,) if isinstance(names, str) else tuple(names)
    for dep in items:
        check_name(dep, f"experiment {name!r}: {what} entry")
        if dep == name:
            raise MlxInterpError(f"experiment {name!r} lists itself in {what}")
    return items


def get(name: str) -> Experiment | None:
    """The registered experiment `name`, or None."""
    return _REGISTRY.get(name)


def _origin(fn: Callable) -> str:
    """Where a function was defined; the same origin may re-register (module reload)."""
    return f"{fn.__module__}.{fn.__qualname__}"


def register_builtin(modules: Iterable[str] | None = None) -> list[str]:
    """Import the study modules so their @experiment decorators run; return those imported.

    By default every submodule of `mlxinterp.studies` (none is fine). A module
    that fails to import is skipped with a warning rather than breaking the
    other experiments or `--list`; its error is shown if its experiment is asked for.
    """
    names = list(modules) if modules is not None else _builtin_modules()
    imported = []
    for mod in names:
        try:
            importlib.import_module(mod)
        except Exception as exc:  # a broken study must not take the others down
            _IMPORT_ERRORS[mod] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"mlxinterp: could not import study module {mod}: {exc}", stacklevel=2)
            continue
        _IMPORT_ERRORS.pop(mod, None)
        imported.append(mod)
    return imported


def _builtin_modules() -> list[str]:
    """Submodules of the studies package, in name order; [] while it does not exist."""
    try:
        pkg = importlib.import_module(BUILTIN_PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name and BUILTIN_PACKAGE.startswith(exc.name):
            return []
        raise
    paths = getattr(pkg, "__path__", None) or []
    return [f"{BUILTIN_PACKAGE}.{m.name}" for m in sorted(pkgutil.iter_modules(paths), key=lambda m: m.name)
            if not m.name.startswith("_")]


def list_experiments() -> list[tuple[str, str]]:
    """(name, one-line doc) of every registered experiment, for `run-suite --list`."""
    register_builtin()
    return [(e.name, e.doc) for e in _REGISTRY.values()]


def config_fields(name: str) -> str:
    """`field=default` for every config field of experiment `name` (what `--set` can change), then its quick profile."""
    if name not in _REGISTRY:
        raise _unknown(name)
    exp = _REGISTRY[name]
    text = ", ".join(f"{f.name}={f.default!r}" if f.default is not dataclasses.MISSING else f"{f.name}=<factory>"
                     for f in dataclasses.fields(exp.config_cls))
    if exp.quick:
        text += "; --quick: " + ", ".join(f"{k}={v!r}" for k, v in exp.quick)
    return text


def select(only: str | Sequence[str] | None = None,
           skip: str | Sequence[str] | None = None) -> list[Experiment]:
    """The experiments to run, those they use first, else in registration order; unknown names are an error.

    A required dependency (`uses`) missing from `only` is added, unless `skip`
    names it: then its finished result must already be in the output dir
    (`ctx.result_of` says so when it is not).
    """
    wanted, unwanted = split_names(only), split_names(skip) or []
    for name in (wanted or []) + unwanted:
        if name not in _REGISTRY:
            raise _unknown(name)
    chosen = [e.name for e in _REGISTRY.values()
              if (wanted is None or e.name in wanted) and e.name not in unwanted]
    if not chosen:
        raise ResultsError("no experiments selected", hint=f"available: {', '.join(_REGISTRY) or 'none'}")
    todo = list(chosen)
    while todo:  # add required dependencies, transitively
        for dep in _REGISTRY[todo.pop()].uses:
            if dep not in _REGISTRY:
                raise _unknown(dep)
            if dep not in chosen and dep not in unwanted:
                chosen.append(dep)
                todo.append(dep)
    return [_REGISTRY[n] for n in dependency_order(chosen)]


def dependency_order(names: Sequence[str]) -> list[str]:
    """`names` ordered so every experiment comes after those it uses or reuses among them.

    Stable: otherwise registration order. A cycle of declarations is an error
    naming it.
    """
    rank = {n: i for i, n in enumerate(_REGISTRY)}
    pending = sorted(set(names), key=lambda n: rank.get(n, len(rank)))
    done: list[str] = []
    while pending:
        ready = next((n for n in pending
                      if all(d in done or d not in pending for d in _REGISTRY[n].reads())), None)
        if ready is None:
            raise ResultsError("experiments use each other in a cycle: "
                               + ", ".join(f"{n} -> {'/'.join(d for d in _REGISTRY[n].reads() if d in pending)}"
                                           for n in pending),
                               hint="an experiment may only read results of experiments that do not read it")
        done.append(ready)
        pending.remove(ready)
    return done


def split_names(value: str | Sequence[str] | None) -> list[str] | None:
    """Accept 'a,b', ['a', 'b'] or ['a,b'] (how CLI options arrive)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    return [n.strip() for item in items for n in item.split(",") if n.strip()]


def _unknown(name: str) -> ResultsError:
    available = ", ".join(_REGISTRY) or "none registered"
    hints = []
    if (guess := closest(name, _REGISTRY)):
        hints.append(f"did you mean {guess}?")
    hints.append(f"available: {available} (`mlxinterp run-suite --list` describes them)")
    if _IMPORT_ERRORS:
        hints.append("modules that failed to import: "
                     + "; ".join(f"{m} ({e})" for m, e in _IMPORT_ERRORS.items()))
    return ResultsError(f"unknown experiment {name!r}", hint=" ".join(hints))


def make_config(exp: Experiment, n: int | None = None, seed: int = 0,
                overrides: dict[str, Any] | None = None) -> Any:
    """The experiment's config: defaults, then `overrides` (field -> value), then `n` and `seed`.

    `n` (when given) and `seed` are filled in where the config has those fields;
    an explicit override of `n` wins over the suite-wide `n`.
    """
    fields = {f.name for f in dataclasses.fields(exp.config_cls)}
    kwargs: dict[str, Any] = {}
    if "seed" in fields:
        kwargs["seed"] = seed
    if "n" in fields and n is not None:
        kwargs["n"] = n
    kwargs.update(overrides or {})
    try:
        config = exp.config_cls(**kwargs)
    except TypeError as exc:
        raise MlxInterpError(f"experiment {exp.name!r}: cannot build its config: {exc}",
                             hint="give every config field a default") from exc
    ranges.check_config(exp.name, config)
    return config


def parse_overrides(sets: Sequence[str], names: Sequence[str], quick: bool = False) -> dict[str, dict[str, Any]]:
    """`--set` strings -> {experiment: {field: value}}, checked against the experiments' configs.

    With `quick`, each named experiment's quick profile comes first and the
    `--set`s apply on top of it.

    `exp.field=value` sets one experiment's field; `field=value` sets it in every
    selected experiment (`names`) whose config has it. Values are Python literals
    (numbers, True/False, strings, tuples or lists; unparseable text is a string); a list given for a
    tuple field becomes a tuple, an int for a float field a float, and anything
    else of the wrong type is refused here rather than deep inside a study.
    """
    out: dict[str, dict[str, Any]] = {}
    if quick:
        for t in names:
            if _REGISTRY[t].quick:
                out[t] = dict(_REGISTRY[t].quick)
    for text in sets:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ResultsError(f"--set {text!r} is not key=value", hint="e.g. --set ard_mmd.steps=1000 or --set n=48")
        value = _literal(raw)
        exp_name, dot, field = key.rpartition(".")
        targets = [exp_name] if dot else list(names)
        if dot and exp_name not in _REGISTRY:
            raise _unknown(exp_name)
        hits = [t for t in targets if field in {f.name for f in dataclasses.fields(_REGISTRY[t].config_cls)}]
        if not hits:
            allowed = sorted({f.name for t in targets for f in dataclasses.fields(_REGISTRY[t].config_cls)})
            guess = closest(field, allowed)
            raise ResultsError(f"--set {text!r}: no config field {field!r} in {', '.join(targets) or 'the selection'}",
                               hint=(f"did you mean {guess}? " if guess else "") + f"fields: {', '.join(allowed)}")
        for t in hits:
            out.setdefault(t, {})[field] = _coerce(text, _REGISTRY[t], field, value)
            ranges.check_value(t, _field(_REGISTRY[t], field), out[t][field], prefix=f"--set {text!r}: ")
    return out


def _literal(raw: str) -> Any:
    """A Python literal, or the bare text itself (so `--set exp.lang=zh` needs no shell-proof quotes)."""
    try:
        return ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):  # also absurdly nested text
        return raw.strip()


def _coerce(text: str, exp: Experiment, field: str, value: Any) -> Any:
    """`value` converted to the type of the field's default, or a ResultsError naming both."""
    default = _field(exp, field)
    ref = default.default if default.default is not dataclasses.MISSING else default.default_factory()
    if value is None and not ranges.allows_none(default):
        raise ResultsError(f"--set {text!r}: {exp.name}.{field} cannot be None; it takes {type(ref).__name__} "
                           f"(default {ref!r})")
    if ref is None or value is None:
        return value
    if isinstance(ref, bool) or isinstance(value, bool):  # bool is an int subclass: match it exactly
        if isinstance(ref, bool) and isinstance(value, bool):
            return value
    elif isinstance(value, type(ref)):
        return value
    elif isinstance(ref, tuple) and isinstance(value, list):
        return tuple(value)
    elif isinstance(ref, float) and isinstance(value, int) and abs(value) < 2**1023:
        return float(value)
    raise ResultsError(f"--set {text!r}: {exp.name}.{field} takes {type(ref).__name__} "
                       f"(default {ref!r}), not {type(value).__name__} {value!r}")




def _field(exp: Experiment, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(exp.config_cls) if f.name == name)


def docs() -> dict[str, str]:
    """One-line doc of every registered experiment (the report shows it under the name)."""
    return {e.name: e.doc for e in _REGISTRY.values()}
