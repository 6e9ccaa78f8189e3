"""The suite driver: resume after real kills, refuse mismatched or locked results, clear errors.

Models here are stand-ins (an object with `.info`): the driver only needs a
model's identity, and stand-ins keep the kill/resume matrix fast. A tiny real
model is exercised by the experiments' own tests.
"""
from __future__ import annotations

import dataclasses
import io as stdio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from mlxinterp.core import io
from mlxinterp import suite
from mlxinterp.suite import provenance
from mlxinterp.suite import registry as reg
from mlxinterp.core.errors import ResultsError
from mlxinterp.core.platform import openblas_interposed

# Whole suite runs and processes of their own: in the second pytest process, beside the in-process tests
# (tests/background.py), which would otherwise run alone on one core for their last minutes.
pytestmark = pytest.mark.offload

SCRIPT = textwrap.dedent('''
    import dataclasses, os, signal, sys, time
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlxinterp import suite
    from mlxinterp.suite import registry as reg

    reg._builtin_modules = lambda: []
    KILL, CALLS = os.environ.get("KILL", ""), os.environ["CALLS"]
    _write = os.write

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def write(fd, data):  # kill mid-write: half the bytes reach the file, then SIGKILL
        data = bytes(data)
        if KILL.startswith("write:") and KILL[6:].encode() in data:
            _write(fd, data[: len(data) // 2])
            die()
        return _write(fd, data)

    os.write = write

    @dataclasses.dataclass
    class Cfg:
        n: int = 3
        seed: int = 0

    def item(tag, ctx=None):
        def fn(x):
            where = f"{tag}:{x['i']}"
            if KILL == "item:" + where:
                die()
            if KILL == "sigint:" + where:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            with open(CALLS, "a") as f:
                f.write(where + "\\n")
            extra = ctx.rng_for("item", x["i"]).random() if ctx else 0.0
            return {"sq": x["v"] ** 2, "t": (x["i"], x["v"] / 3), "r": extra}
        return fn

    @suite.experiment("alpha", Cfg)
    def alpha(model, cfg, ctx):
        """Two maps and a figure."""
        xs = [{"i": i, "v": float(v)} for i, v in enumerate(ctx.rng.normal(size=cfg.n))]
        a = ctx.map("first", xs, item(f"{model.info.slug}.alpha.first"))
        b = ctx.map("second", xs, item(f"{model.info.slug}.alpha.second"))
        fig, ax = plt.subplots()
        ax.plot([r["sq"] for r in a])
        ctx.save_figure("curve", fig)
        return {"summary": {"total": sum(r["sq"] for r in a + b)}, "first": a, "second": b}

    @suite.experiment("beta", Cfg)
    def beta(model, cfg, ctx):
        """One map with per-item randomness."""
        xs = [{"i": i, "v": i / 7} for i in range(cfg.n)]
        return {"only": ctx.map("only", xs, item(f"{model.info.slug}.beta.only", ctx))}

    class Info:
        def __init__(self, spec):
            self.spec, self.slug, self.weights_hash = spec, spec, "hash-" + spec
        def to_dict(self):
            return {"spec": self.spec, "slug": self.slug, "weights_hash": self.weights_hash}

    class Model:
        def __init__(self, spec):
            self.info = Info(spec)

    try:
        suite.run_all(["m1", "m2"], out=sys.argv[1], n=6, load_fn=Model, resume_hint="RESUME-CMD")
    except KeyboardInterrupt:
        sys.exit(130)
''')


def _run(script: Path, out: Path, calls: Path, kill: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL": kill, "CALLS": str(calls)}
    # SIGINT as in a terminal: a shell's background job (e.g. CI under `cmd &`) inherits it ignored (BUGFIX.md)
    return subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _results(out: Path) -> dict[str, dict]:
    """Every result.json without its timings, plus figure bytes: what must match exactly."""
    found = {}
    for path in sorted(out.glob("*/*/*")):
        if path.name == "result.json":
            record = json.loads(path.read_text())
            record.pop("timings")
            found[str(path.relative_to(out))] = record
        else:
            found[str(path.relative_to(out))] = path.read_bytes()
    return found


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("script") / "run.py"
    path.write_text(SCRIPT)
    return path


@pytest.fixture(scope="module")
def reference(script, tmp_path_factory) -> tuple[Path, list[str]]:
    """An uninterrupted run to compare against."""
    base = tmp_path_factory.mktemp("reference")
    proc = _run(script, base / "out", base / "calls")
    assert proc.returncode == 0, proc.stderr
    return base / "out", _calls(base / "calls")


# Kills in sequence, then the items a resume may legitimately compute again
# (those whose fn finished but whose checkpoint line was torn by the kill).
KILLS = {
    "mid-item": (["item:m1.alpha.first:3"], set()),
    "mid-checkpoint-line": (['write:"i": 3,'], {"m1.alpha.first:3"}),
    "mid-figure": (["write:IHDR"], set()),
    "mid-result-json": (["write:format_version"], set()),
    "three-kills": (["item:m1.alpha.first:2", "item:m1.alpha.second:4", "item:m2.alpha.first:0"], set()),
}


@pytest.mark.parametrize("case", list(KILLS))
def test_resume_after_sigkill_equals_uninterrupted_run(case, script, reference, tmp_path):
    kills, may_repeat = KILLS[case]
    ref_out, ref_calls = reference
    out, calls = tmp_path / "out", tmp_path / "calls"
    for kill in kills:
        proc = _run(script, out, calls, kill)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    before = _calls(calls)
    proc = _run(script, out, calls)
    assert proc.returncode == 0, proc.stderr
    after = _calls(calls)[len(before):]
    assert set(before) & set(after) <= may_repeat  # finished items were reloaded, not recomputed
    assert sorted(set(before) | set(after)) == sorted(ref_calls)
    assert _results(out) == _results(ref_out)
    assert (out / "report.md").read_text() == (ref_out / "report.md").read_text()
    assert not list(out.rglob(".partial")) and not list(out.rglob(".tmp-*"))


def test_sigint_stops_cleanly_and_prints_how_to_resume(script, reference, tmp_path):
    out, calls = tmp_path / "out", tmp_path / "calls"
    proc = _run(script, out, calls, "sigint:m1.beta.only:2")
    assert proc.returncode == 130, proc.stderr
    assert "Interrupted" in proc.stderr and "RESUME-CMD" in proc.stderr
    assert (out / "m1" / "alpha" / "result.json").exists()  # finished work kept
    assert (out / "report.md").exists()
    before = _calls(calls)
    assert _run(script, out, calls).returncode == 0
    assert not set(before) & set(_calls(calls)[len(before):])
    assert _results(out) == _results(reference[0])


# ------------------------------------------------------------- in-process tests


@dataclasses.dataclass
class Cfg:
    n: int = 4
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Info:
    spec: str
    weights_hash: str = "h1"

    @property
    def slug(self) -> str:
        return self.spec.replace("/", "--")

    def to_dict(self) -> dict:
        return {"spec": self.spec, "slug": self.slug, "weights_hash": self.weights_hash}


class FakeModel:
    def __init__(self, spec: str, weights_hash: str = "h1"):
        self.info = Info(spec, weights_hash)


@pytest.fixture
def registry(monkeypatch):
    """A private registry with one experiment; `calls` counts computed items."""
    monkeypatch.setattr(reg, "_REGISTRY", {})
    monkeypatch.setattr(reg, "_IMPORT_ERRORS", {})
    monkeypatch.setattr(reg, "_builtin_modules", lambda: [])
    calls: list[int] = []

    @suite.experiment("validation", Cfg)
    def validation(model, cfg, ctx):
        """Check that things are valid."""
        calls.append(-1)
        vals = ctx.map("items", list(range(cfg.n)), lambda i: calls.append(i) or i * 0.5)
        return {"summary": {"sum": sum(vals)}, "vals": vals, "draw": float(ctx.rng.random())}

    return calls


def _quiet() -> tuple[Console, stdio.StringIO]:
    buf = stdio.StringIO()
    return Console(file=buf, width=200), buf


def _run_all(tmp_path, **kw):
    console, buf = _quiet()
    kw.setdefault("load_fn", FakeModel)
    summary = suite.run_all(kw.pop("models", ["org/m"]), out=tmp_path / "out", console=console, **kw)
    return summary, buf.getvalue()


def test_registry_lists_names_and_docs_and_fills_n_and_seed(registry):
    assert suite.list_experiments() == [("validation", "Check that things are valid.")]
    cfg = reg.make_config(suite.select("validation")[0], n=9, seed=3)
    assert cfg == Cfg(n=9, seed=3)


def test_register_builtin_tolerates_a_broken_module(registry, tmp_path, monkeypatch):
    (tmp_path / "broken_study.py").write_text("raise RuntimeError('half written')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning, match="broken_study"):
        assert suite.register_builtin(["broken_study"]) == []
    assert "half written" in str(reg._unknown("other"))


def test_builtin_discovery_without_a_studies_package(monkeypatch):
    monkeypatch.setattr(reg, "BUILTIN_PACKAGE", "mlxinterp.no_such_studies")
    assert reg._builtin_modules() == []


def test_layout_loads_once_and_skips_finished_work(registry, tmp_path):
    loads = []
    summary, _ = _run_all(tmp_path, models=["org/a", "b"], load_fn=lambda s: loads.append(s) or FakeModel(s))
    out = tmp_path / "out"
    assert loads == ["org/a", "b"]
    assert [r["status"] for r in summary["runs"]] == ["computed", "computed"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        ".lock", "b/validation/result.json", "org--a/validation/result.json", "report.html", "report.md", "suite.log"]
    record = json.loads((out / "org--a/validation/result.json").read_text())
    assert record["status"] == "complete" and record["config"] == {"n": 4, "seed": 0}
    assert record["model"]["weights_hash"] == "h1" and record["format_version"] == provenance.FORMAT_VERSION
    # the BLAS kernel family is recorded too when OpenBLAS is preloaded (it changes float32 digits)
    blas = {"openblas_coretype"} if openblas_interposed() else set()
    assert set(record["versions"]) == {"python", "mlx", "mlx_lm", "numpy", "mlxinterp"} | blas
    assert "git_commit" in record and "seconds" in record["timings"]
    assert record["preregistration_sha256"] == provenance.preregistration_sha256() and len(record["preregistration_sha256"]) == 64
    n_calls = len(registry)
    summary, _ = _run_all(tmp_path, models=["org/a", "b"])
    assert [r["status"] for r in summary["runs"]] == ["skipped", "skipped"] and len(registry) == n_calls


def test_rng_is_deterministic_per_seed_and_experiment(registry, tmp_path):
    _run_all(tmp_path)
    first = io.read_json(tmp_path / "out/org--m/validation/result.json")["result"]["draw"]
    _run_all(tmp_path, resume=False)
    assert io.read_json(tmp_path / "out/org--m/validation/result.json")["result"]["draw"] == first
    _run_all(tmp_path, resume=False, seed=1)
    assert io.read_json(tmp_path / "out/org--m/validation/result.json")["result"]["draw"] != first


def test_corrupted_result_is_recomputed_and_said_so(registry, tmp_path):
    _run_all(tmp_path)
    path = tmp_path / "out/org--m/validation/result.json"
    good = io.read_json(path)
    path.write_text('{"status": "compl')
    summary, log = _run_all(tmp_path)
    assert summary["runs"][0]["status"] == "computed"
    assert "corrupted" in log and "recomputing validation" in log
    fresh = io.read_json(path)
    assert {k: v for k, v in fresh.items() if k != "timings"} == {k: v for k, v in good.items() if k != "timings"}


def test_different_model_hash_on_resume_is_refused(registry, tmp_path):
    _run_all(tmp_path)
    with pytest.raises(ResultsError) as err:
        _run_all(tmp_path, load_fn=lambda s: FakeModel(s, "h2"))
    msg = str(err.value)
    assert "model weights hash h1 (now h2)" in msg and "--no-resume" in msg and "--out" in msg
    _run_all(tmp_path, load_fn=lambda s: FakeModel(s, "h2"), resume=False)
    assert io.read_json(tmp_path / "out/org--m/validation/result.json")["model"]["weights_hash"] == "h2"


def test_no_resume_recomputes_everything(registry, tmp_path):
    _run_all(tmp_path)
    n_calls = len(registry)
    summary, _ = _run_all(tmp_path, resume=False)
    assert summary["runs"][0]["status"] == "computed" and len(registry) == 2 * n_calls


def test_interrupt_in_process_keeps_items_and_prints_default_command(registry, tmp_path, monkeypatch):
    def interrupted(model, cfg, ctx):
        ctx.map("items", list(range(4)), lambda i: (_ for _ in ()).throw(KeyboardInterrupt) if i == 2 else i)

    monkeypatch.setitem(reg._REGISTRY, "validation", dataclasses.replace(reg._REGISTRY["validation"], fn=interrupted))
    console, buf = _quiet()
    with pytest.raises(KeyboardInterrupt):
        suite.run_all(["org/m"], out=tmp_path / "out", n=4, load_fn=FakeModel, console=console)
    assert f"mlxinterp run-suite --model org/m --n 4 --seed 0 --out {tmp_path / 'out'}" in buf.getvalue()
    records, _ = io.read_jsonl(tmp_path / "out/org--m/validation/.partial/items.jsonl")
    assert [r["i"] for r in records] == [0, 1]


def test_report_sections_side_by_side_with_embedded_figures(registry, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    @suite.experiment("plots", Cfg)
    def plots(model, cfg, ctx):
        """Draw something."""
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3])
        ctx.save_figure("line", fig)
        return {"summary": {"slope": 1.0, "label": "a|b"}}

    summary, _ = _run_all(tmp_path, models=["org/a", "b"])
    md = Path(summary["report"]["md"]).read_text()
    html = Path(summary["report"]["html"]).read_text()
    assert md.index("## validation") < md.index("## plots")
    assert "| sum | 3 | 3 |" in md and "a\\|b" in md
    assert "[![org--a line](org--a/plots/line.png)](org--a/plots/result.json)" in md
    assert html.count('<img src="data:image/png;base64,') == 2
    assert '<a href="b/plots/result.json"><img' in html and "line.png" not in html


def test_set_overrides_reach_the_config_and_are_checked(registry, tmp_path):
    """`--set` values land in the config (and its fingerprint); bad ones are refused before any work."""
    assert suite.parse_overrides(["validation.n=7", "seed=2"], ["validation"]) == {"validation": {"n": 7, "seed": 2}}
    summary, _ = _run_all(tmp_path, sets=["validation.n=7"])
    record = io.read_json(tmp_path / "out/org--m/validation/result.json")
    assert record["config"]["n"] == 7 and len(record["result"]["vals"]) == 7
    with pytest.raises(ResultsError, match=r"config\.n 7 \(now 4\)"):  # a different config is not resumed into
        _run_all(tmp_path)
    for bad, match in [("validation.nn=3", r"(?s)no config field 'nn'.*did you mean 'n'"),
                       ("validation.n=three", r"validation\.n takes int \(default 4\), not str 'three'"),
                       ("validation.n=True", r"takes int .* not bool"),
                       ("nosuch.n=3", r"unknown experiment 'nosuch'"),
                       ("n", r"is not key=value")]:
        with pytest.raises(ResultsError, match=match):
            _run_all(tmp_path / "bad", sets=[bad])
        assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_set_coerces_lists_to_tuples_and_ints_to_floats(monkeypatch):
    @dataclasses.dataclass
    class C:
        layers: tuple = (0.5,)
        lam: float = 0.1
        name: str = "en"

    monkeypatch.setattr(reg, "_REGISTRY", {})
    suite.experiment("x", C)(lambda m, c, ctx: {})
    got = suite.parse_overrides(["layers=[0.25, 0.75]", "lam=1", "name=zh"], ["x"])["x"]
    assert got == {"layers": (0.25, 0.75), "lam": 1.0, "name": "zh"} and isinstance(got["lam"], float)
    assert "lam=0.1" in suite.config_fields("x")


def test_every_experiment_script_names_a_registered_experiment():
    """experiments/*.py are thin: each calls _cli.main with registered experiment names."""
    import ast as pyast

    suite.register_builtin()
    scripts = sorted((Path(__file__).parent.parent / "experiments").glob("[!_]*.py"))
    assert len(scripts) >= 15
    for script in scripts:
        tree = pyast.parse(script.read_text())
        calls = [n for n in pyast.walk(tree) if isinstance(n, pyast.Call) and getattr(n.func, "id", "") == "main"]
        assert len(calls) == 1, script.name
        arg = calls[0].args[0]
        names = ([arg.value] if isinstance(arg, pyast.Constant) else
                 [e.value for n in pyast.walk(tree) if isinstance(n, pyast.Tuple) for e in n.elts
                  if isinstance(e, pyast.Constant) and isinstance(e.value, str)])
        assert names and all(n in reg._REGISTRY for n in names), (script.name, names)


def test_provenance_records_the_blas_kernel_choice(monkeypatch):
    """OpenBLAS picks kernels per processor unless OPENBLAS_CORETYPE pins them; float32 results then differ
    in the 7th digit, so a result must say which kernels made it."""
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert provenance.versions()["openblas_coretype"] == "Haswell"
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert provenance.versions()["openblas_coretype"].startswith("auto")
    monkeypatch.setenv("LD_PRELOAD", "")
    assert "openblas_coretype" not in provenance.versions()


def test_quick_profile_applies_before_sets_and_is_checked():
    """`quick=` overrides come first, --set wins over them, and unknown fields are refused at registration."""
    import dataclasses as dc

    from mlxinterp.core.errors import MlxInterpError
    from mlxinterp.suite import registry as reg

    @dc.dataclass
    class QuickCfg:
        n: int = 100
        steps: int = 50

    reg.experiment("quick_probe_exp", QuickCfg, quick={"n": 3, "steps": 2})(lambda hm, cfg, ctx: {})
    try:
        assert reg.parse_overrides([], ["quick_probe_exp"]) == {}
        assert reg.parse_overrides([], ["quick_probe_exp"], quick=True) == {"quick_probe_exp": {"n": 3, "steps": 2}}
        got = reg.parse_overrides(["quick_probe_exp.steps=7"], ["quick_probe_exp"], quick=True)
        assert got == {"quick_probe_exp": {"n": 3, "steps": 7}}
        assert "--quick: n=3, steps=2" in reg.config_fields("quick_probe_exp")
        full = reg.make_config(reg.get("quick_probe_exp"), None, 0, None)
        assert (full.n, full.steps) == (100, 50)
    finally:
        reg._REGISTRY.pop("quick_probe_exp", None)
    with pytest.raises(MlxInterpError, match="unknown config fields"):
        reg.experiment("quick_bad_exp", QuickCfg, quick={"nn": 3})


def test_resume_with_everything_finished_does_not_load_the_model(registry, tmp_path, tiny_dirs, monkeypatch):
    """The default loader is skipped when every selected result is current (files alone decide it); a
    missing result loads again."""
    from mlxinterp.suite import runner

    loads = []
    real = runner._default_load
    monkeypatch.setattr(runner, "_default_load", lambda s: loads.append(s) or real(s))
    spec = str(tiny_dirs[("llama", None)])
    first, _ = _run_all(tmp_path, models=[spec], load_fn=None)
    assert loads == [spec] and [r["status"] for r in first["runs"]] == ["computed"]
    again, log = _run_all(tmp_path, models=[spec], load_fn=None)
    assert loads == [spec] and [r["status"] for r in again["runs"]] == ["skipped"]
    assert again["runs"][0]["path"] == first["runs"][0]["path"] and "was not loaded" in log
    Path(first["runs"][0]["path"]).unlink()  # one result missing: the model is needed again
    redo, _ = _run_all(tmp_path, models=[spec], load_fn=None)
    assert loads == [spec, spec] and [r["status"] for r in redo["runs"]] == ["computed"]


def test_run_suite_json_summary(tmp_path, tiny_dirs, capsys):
    """`run-suite --json` prints the summary (runs with statuses and paths, report, comparison) on stdout."""
    from cli_runner import run

    spec = str(tiny_dirs[("llama", None)])
    argv = ["run-suite", "--model", spec, "--only", "validation", "--quick", "--out", str(tmp_path / "o"), "--json"]
    code, out, _ = run(argv, capsys)
    assert code == 0, out
    first = json.loads(out)
    assert [(r["experiment"], r["status"]) for r in first["runs"]] == [("validation", "computed")]
    assert Path(first["runs"][0]["path"]).is_file() and Path(first["report"]["md"]).is_file()
    assert first["comparison"] is None
    code, out, _ = run([*argv, "--reference", str(tmp_path / "o")], capsys)
    again = json.loads(out)
    assert code == 0 and [r["status"] for r in again["runs"]] == ["skipped"]
    assert again["comparison"] is not None
