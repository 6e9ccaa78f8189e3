"""Schema checks for mlxinterp/data/twohop/queries.json."""
from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

DIR = Path(__file__).resolve().parents[1] / "mlxinterp" / "data" / "twohop"
PATH = DIR / "queries.json"
FIELDS = ["id", "family", "difficulty", "prompt", "bridge", "answer", "answer_aliases",
          "bridge_aliases", "hop1_prompt", "hop2_prompt"]
PROMPTS = ["prompt", "hop1_prompt", "hop2_prompt"]


@pytest.fixture(scope="module")
def data() -> dict:
    return json.loads(PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def items(data) -> list[dict]:
    return data["items"]


def test_top_level(data):
    assert data["version"] == 1
    assert data["created"] == "2026-11-23"
    assert isinstance(data["provenance"], str) and data["provenance"].strip()
    assert isinstance(data["families"], dict)
    assert all(isinstance(v, str) and v.strip() for v in data["families"].values())
    assert isinstance(data["items"], list)


def test_counts(data, items):
    assert len(items) >= 150
    per_family = Counter(it["family"] for it in items)
    assert set(per_family) == set(data["families"])
    assert len(per_family) >= 6
    assert min(per_family.values()) >= 15, per_family
    for fam in per_family:  # both difficulty levels in every family
        assert {it["difficulty"] for it in items if it["family"] == fam} == {"easy", "hard"}, fam


def test_fields_present_and_nonempty(items):
    for it in items:
        assert sorted(it) == sorted(FIELDS), it.get("id")
        for k in FIELDS:
            v = it[k]
            if k.endswith("_aliases"):
                assert isinstance(v, list) and v, (it["id"], k)
                assert all(isinstance(a, str) and a.strip() == a and a for a in v), (it["id"], k)
                assert len(set(v)) == len(v), (it["id"], k)
            else:
                assert isinstance(v, str) and v.strip() and v.strip() == v, (it["id"], k)


def test_unique_ids_and_prompts(items):
    ids = [it["id"] for it in items]
    prompts = [it["prompt"] for it in items]
    assert len(set(ids)) == len(ids), [k for k, c in Counter(ids).items() if c > 1]
    assert len(set(prompts)) == len(prompts), [k for k, c in Counter(prompts).items() if c > 1]


def test_id_format_and_difficulty(items):
    for it in items:
        assert re.fullmatch(rf"{re.escape(it['family'])}_\d{{3}}", it["id"]), it["id"]
        assert it["difficulty"] in ("easy", "hard"), it["id"]


def test_prompts_end_without_space(items):
    for it in items:
        for k in PROMPTS:
            assert not it[k][-1].isspace(), (it["id"], k)
            assert "  " not in it[k], (it["id"], k)


def test_aliases_and_bridge_mentions(items):
    for it in items:
        assert it["answer"] in it["answer_aliases"], it["id"]
        assert it["bridge"] in it["bridge_aliases"], it["id"]
        assert it["bridge"] in it["hop2_prompt"], it["id"]
        assert it["answer"] != it["bridge"], it["id"]


def test_no_leak_into_two_hop_prompt(items):
    """The two-hop prompt names neither the bridge nor the answer (else it is one hop)."""
    for it in items:
        low = it["prompt"].lower()
        for a in it["answer_aliases"]:
            assert not re.search(rf"\b{re.escape(a.lower())}\b", low), (it["id"], a)
        for b in it["bridge_aliases"]:
            assert not re.search(rf"\b{re.escape(b.lower())}\b", low), (it["id"], b)


def test_json_matches_build_script(data):
    """queries.json is exactly what build_queries.py produces (no hand edits drift)."""
    spec = importlib.util.spec_from_file_location("twohop_build", DIR / "build_queries.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.build() == data
