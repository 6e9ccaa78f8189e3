"""Experiments that read other experiments' results: declared with `uses` / `reuses`, ordered and checked by
the suite, read through `ctx.result_of` and `ctx.results_across_models` only."""
from __future__ import annotations

import dataclasses
import io as stdio
import json

import pytest
from rich.console import Console
from rich.progress import Progress

from mlxinterp import suite
from mlxinterp.core.errors import MlxInterpError, ResultsError
from mlxinterp.suite import registry as reg


@dataclasses.dataclass
class Cfg:
    n: int = 2
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Info:
    spec: str
    weights_hash: str = "h1"
    n_params: int = 1

    @property
    def slug(self) -> str:
        return self.spec.replace("/", "--")

    def to_dict(self) -> dict:
        return {"spec": self.spec, "slug": self.slug, "weights_hash": self.weights_hash, "n_params": self.n_params}


class FakeModel:
    def __init__(self, spec: str):
        self.info = Info(spec, n_params=len(spec))


@pytest.fixture
def registry(monkeypatch):
    """A private registry: `base` computes a number; `needs` uses it; `maybe` reuses it; `compare` reads
    `base` across models. `order` records what ran, in order."""
    monkeypatch.setattr(reg, "_REGISTRY", {})
    monkeypatch.setattr(reg, "_IMPORT_ERRORS", {})
    monkeypatch.setattr(reg, "_builtin_modules", lambda: [])
    order: list[str] = []

    @suite.experiment("needs", Cfg, uses=["base"])  # registered before what it uses, on purpose
    def needs(model, cfg, ctx):
        order.append("needs")
        return {"twice": 2 * ctx.result_of("base")["value"]}

    @suite.experiment("maybe", Cfg, reuses=["base"])
    def maybe(model, cfg, ctx):
        order.append("maybe")
        got = ctx.result_of("base")
        return {"source": "reused" if got else "computed", "value": got["value"] if got else 21}

    @suite.experiment("base", Cfg)
    def base(model, cfg, ctx):
        order.append("base")
        return {"value": 21}

    @suite.experiment("sneaky", Cfg)
    def sneaky(model, cfg, ctx):
        return ctx.result_of("base")  # not declared

    @suite.experiment("compare", Cfg)
    def compare(model, cfg, ctx):
        return {"others": [info["slug"] for info, _ in ctx.results_across_models("base")],
                "self": [info["slug"] for info, _ in ctx.results_across_models("compare")]}

    return order


def _run(tmp_path, **kw):
    console = Console(file=stdio.StringIO(), width=200)
    summary = suite.run_all(kw.pop("models", ["org/m"]), out=tmp_path, console=console, load_fn=FakeModel, **kw)
    return summary, console.file.getvalue()


def _result(tmp_path, exp, slug="org--m"):
    return json.loads((tmp_path / slug / exp / "result.json").read_text())["result"]


def test_a_used_experiment_is_added_and_runs_first(registry, tmp_path):
    summary, text = _run(tmp_path, only="needs")
    assert registry == ["base", "needs"]
    assert [r["experiment"] for r in summary["runs"]] == ["base", "needs"]
    assert "also running base" in text
    assert _result(tmp_path, "needs") == {"twice": 42}


def test_order_follows_declarations_and_is_stable_otherwise(registry):
    suite.register_builtin()
    assert [e.name for e in suite.select(["maybe", "needs", "base"])] == ["base", "needs", "maybe"]
    assert [e.name for e in suite.select(["maybe", "compare"])] == ["maybe", "compare"]  # reuses adds nothing


def test_a_reused_experiment_is_optional(registry, tmp_path):
    _run(tmp_path / "alone", only="maybe")
    assert registry == ["maybe"]
    assert _result(tmp_path / "alone", "maybe") == {"source": "computed", "value": 21}
    _run(tmp_path / "both", only="maybe,base")
    assert _result(tmp_path / "both", "maybe") == {"source": "reused", "value": 21}


def test_a_skipped_required_experiment_without_a_result_is_one_clear_error(registry, tmp_path):
    with pytest.raises(ResultsError, match="needs needs the base result for this model: no .*base/result.json"):
        _run(tmp_path, only="needs", skip="base")
    _run(tmp_path, only="base")
    _run(tmp_path, only="needs", skip="base")  # finished earlier in this output dir: fine
    assert _result(tmp_path, "needs") == {"twice": 42}


def test_an_undeclared_read_is_refused(registry, tmp_path):
    _run(tmp_path, only="base")
    with pytest.raises(ResultsError, match="reads 'base' without declaring it"):
        _run(tmp_path, only="sneaky")


def test_results_of_another_seed_are_not_used(registry, tmp_path):
    _run(tmp_path, only="base", seed=1)
    _run(tmp_path, only="maybe", seed=0)
    assert _result(tmp_path, "maybe")["source"] == "computed"


def test_results_across_models_see_other_models_only(registry, tmp_path):
    _run(tmp_path, only="base,compare", models=["org/a"])
    assert _result(tmp_path, "compare", "org--a") == {"others": ["org--a"], "self": []}
    _run(tmp_path, only="base,compare", models=["org/bb"])
    got = _result(tmp_path, "compare", "org--bb")
    assert got["others"] == ["org--a", "org--bb"] and got["self"] == ["org--a"]


def test_declaration_mistakes_are_caught(registry, tmp_path):
    with pytest.raises(MlxInterpError, match="lists itself"):
        suite.experiment("loop", Cfg, uses=["loop"])
    suite.experiment("x", Cfg, uses=["y"])(lambda m, c, ctx: {})
    suite.experiment("y", Cfg, reuses=["x"])(lambda m, c, ctx: {})
    with pytest.raises(ResultsError, match="cycle: .*x -> y.*y -> x"):
        suite.select(["x", "y"])
    suite.experiment("z", Cfg, uses=["nowhere"])(lambda m, c, ctx: {})
    with pytest.raises(ResultsError, match="unknown experiment 'nowhere'"):
        suite.select(["z"])


def test_a_context_outside_a_run_reads_nothing_undeclared(registry, tmp_path):
    with Progress() as progress:
        ctx = suite.Context("base", tmp_path / "m" / "base", 0, progress)
        with pytest.raises(ResultsError, match="without declaring"):
            ctx.result_of("needs")
        assert suite.Context("maybe", tmp_path / "m" / "maybe", 0, progress).result_of("base") is None
