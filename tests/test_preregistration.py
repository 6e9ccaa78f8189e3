"""Pre-registered checks (mlxinterp.suite.preregistration): the shipped file loads, its hash is stable and
recorded, checks give PASS/FAIL on the right side of their threshold, and a malformed file is refused
with an error naming the entry."""
from __future__ import annotations

import hashlib

import pytest

from mlxinterp.analysis.stats import proportion_ci
from mlxinterp.core.errors import PreregistrationError
from mlxinterp.core.interval import Interval
from mlxinterp.suite import preregistration, provenance

GOOD = '''
version = 2

[primary.demo]
metric = "effect"
hypothesis = "the effect is positive"
unit = "prompt"

[checks.demo.positive]
metric = "effect"
op = ">"
threshold = 0.0
bound = "low"
why = "the interval must exclude 0"

[checks.demo.small_kl]
metric = "kl"
op = "<="
threshold = 0.5
why = "bound defaults to the estimate"
'''


def write(tmp_path, text: str):
    path = tmp_path / "prereg.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_file_loads_and_its_hash_is_what_runs_record():
    prereg = preregistration.load()
    assert prereg.version >= 1 and prereg.path == preregistration.PATH
    assert prereg.sha256 == hashlib.sha256(preregistration.PATH.read_bytes()).hexdigest() == preregistration.sha256()
    assert provenance.preregistration_sha256() == prereg.sha256 == preregistration.load().sha256  # stable
    for experiment, checks in prereg.checks.items():  # every entry is well-formed (load validated it)
        assert all(c.experiment == experiment and c.op in preregistration.OPS for c in checks.values())


def test_any_edit_changes_the_hash(tmp_path):
    path = write(tmp_path, GOOD)
    before = preregistration.load(path).sha256
    path.write_text(GOOD + "# a comment\n", encoding="utf-8")
    assert preregistration.load(path).sha256 != before


def test_checks_pass_and_fail_on_either_side_of_the_threshold(tmp_path):
    prereg = preregistration.load(write(tmp_path, GOOD))
    assert prereg.version == 2 and prereg.primary("demo")["unit"] == "prompt"
    above = Interval(0.30, 0.01, 0.60, 30, "t-interval")
    straddles = Interval(0.30, -0.01, 0.60, 30, "t-interval")
    assert prereg.check("demo", "positive", above) == {"verdict": "PASS", "value": 0.01, "op": ">", "threshold": 0.0,
                                                      "bound": "low", "metric": "effect"}
    assert prereg.check("demo", "positive", straddles)["verdict"] == "FAIL"  # the estimate alone would pass
    assert prereg.check("demo", "positive", straddles.to_dict())["value"] == -0.01  # stored form reads the same
    assert prereg.check("demo", "positive", Interval(0.0, 0.0, 0.0, 30, "x"))["verdict"] == "FAIL"  # '>' is strict
    assert prereg.check("demo", "small_kl", 0.5)["verdict"] == "PASS"
    assert prereg.check("demo", "small_kl", 0.5000001)["verdict"] == "FAIL"
    assert prereg.check("demo", "small_kl", proportion_ci(1, 4))["value"] == 0.25


def test_a_missing_value_fails_rather_than_passes(tmp_path):
    prereg = preregistration.load(write(tmp_path, GOOD))
    for value in (None, float("nan"), Interval(None, None, None, 0, "x"), Interval(0.5, None, None, 1, "x")):
        out = prereg.check("demo", "positive" if isinstance(value, Interval) else "small_kl", value)
        assert out["verdict"] == "FAIL" and out["value"] is None


def test_a_bound_check_refuses_a_bare_number(tmp_path):
    prereg = preregistration.load(write(tmp_path, GOOD))
    with pytest.raises(PreregistrationError, match="'low' bound; got the plain number 0.3"):
        prereg.check("demo", "positive", 0.3)
    with pytest.raises(PreregistrationError, match="needs an interval or a number"):
        prereg.check("demo", "small_kl", "0.3")


def test_unknown_experiments_and_checks_name_what_exists(tmp_path):
    prereg = preregistration.load(write(tmp_path, GOOD))
    with pytest.raises(PreregistrationError, match="no check 'postive'") as e:
        prereg.check("demo", "postive", 1.0)
    assert "did you mean 'positive'" in str(e.value)
    with pytest.raises(PreregistrationError, match="no check 'positive' is pre-registered for experiment 'other'"):
        prereg.check("other", "positive", 1.0)
    with pytest.raises(PreregistrationError, match="no primary metric .* 'other'"):
        prereg.primary("other")
    assert prereg.checks_for("other") == {} and set(prereg.checks_for("demo")) == {"positive", "small_kl"}


@pytest.mark.parametrize("old,new,message", [
    ('op = ">"', 'op = "=>"', r"\[checks.demo.positive\] op '=>' is not allowed"),
    ('bound = "low"', 'bound = "lower"', r"\[checks.demo.positive\] bound 'lower' is not allowed"),
    ('threshold = 0.0\nbound', 'bound', r"\[checks.demo.positive\] is missing threshold"),
    ('threshold = 0.0', 'threshold = "0"', r"\[checks.demo.positive\] threshold must be a finite number"),
    ('threshold = 0.0', 'treshold = 0.0', r"\[checks.demo.positive\] is missing threshold\n.*'treshold' for 'threshold'"),
    ('threshold = 0.5', 'threshold = 0.5\ntresh = 1', r"\[checks.demo.small_kl\] has unknown key 'tresh'"),
    ('why = "the interval must exclude 0"', 'why = ""', r"\[checks.demo.positive\] why must be a non-empty"),
    ('unit = "prompt"', '', r"\[primary.demo\] is missing unit"),
    ('version = 2', 'version = "2"', "'version' must be a positive integer"),
    ('version = 2', 'version = 2\n[extra]\na = 1', r"unknown top-level key\(s\) \['extra'\]"),
    ('metric = "kl"', 'metric = "kl"\nop = ">"', "not valid TOML"),
])
def test_a_malformed_file_is_refused_naming_the_entry(tmp_path, old, new, message):
    assert old in GOOD
    with pytest.raises(PreregistrationError, match=message):
        preregistration.load(write(tmp_path, GOOD.replace(old, new, 1)))


def test_a_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(PreregistrationError, match="cannot read the pre-registration file"):
        preregistration.load(tmp_path / "absent.toml")
