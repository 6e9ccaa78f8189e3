"""The model catalogue: architectures checked against independent numbers, the table, lookups."""
from __future__ import annotations

import json

import pytest

from mlxinterp.suite import catalogue
from mlxinterp.core import memory
from mlxinterp.core.errors import ModelSpecError
from cli_runner import run

# the cross-model plan's table (its own source: the checkpoints it ran): repo -> layers.
SEED_004_LAYERS = {
    "mlx-community/gemma-2-2b-it-4bit": 26, "mlx-community/Llama-3.2-3B-Instruct-4bit": 28,
    "mlx-community/Qwen2.5-7B-Instruct-4bit": 28, "mlx-community/Llama-3.1-8B-Instruct-4bit": 32,
    "mlx-community/gemma-2-9b-it-4bit": 42, "mlx-community/Qwen2.5-14B-Instruct-4bit": 48,
    "mlx-community/gemma-2-27b-it-4bit": 46,
}
MULTIMODAL = {"google/gemma-3-4b-it", "google/gemma-3-12b-it", "google/gemma-3-27b-it"}




def test_seed_004_checkpoints_are_all_there_with_the_seeds_layer_counts():
    for repo, layers in SEED_004_LAYERS.items():
        entry = catalogue.get(repo)
        assert entry.arch.n_layers == layers and entry.arch.in_seed
        assert catalogue.get(repo.replace("4bit", "8bit")).bits == 8
    assert {c.repo for c in catalogue.CHECKPOINTS if c.arch.in_seed and c.bits == 4} == set(SEED_004_LAYERS)
    families = {c.arch.family for c in catalogue.CHECKPOINTS}
    assert {"gemma2", "gemma3", "llama3", "qwen2.5", "qwen3"} == families


@pytest.mark.parametrize("arch", catalogue.ARCHITECTURES, ids=lambda a: a.stem)
def test_parameter_count_from_the_shapes_matches_the_model_card(arch):
    """The architecture numbers and the published count are independent: a typo in either shows here."""
    computed = memory.n_params(arch.config()) / 1e9
    if arch.base in MULTIMODAL:  # the card counts the ~0.4B vision tower mlx-lm does not load
        assert 0.3 < arch.published_params_b - computed < 0.5
    else:
        assert computed == pytest.approx(arch.published_params_b, rel=0.01)
    assert arch.d_model % 64 == 0 and arch.n_heads % arch.n_kv_heads == 0


def test_every_entry_says_where_its_numbers_come_from():
    for row in catalogue.rows(64 * 1024**3):
        assert set(row["source"]) == {"architecture", "published_params_b", "n_params", "memory"}
        assert all(row["source"].values())


@pytest.mark.real
def test_gemma3_270m_entry_is_the_real_default_model(real_hm):
    a, info = catalogue.default_architecture(), real_hm.info
    assert (a.n_layers, a.d_model, a.n_heads, a.n_kv_heads, a.head_dim, a.d_mlp, a.vocab_size) == (
        info.n_layers, info.d_model, info.n_heads, info.n_kv_heads, info.head_dim, info.d_mlp, info.vocab_size)
    # norms are left out of the formula: 18 x (4 x 640 + 2 x 256) + 640 parameters
    assert info.n_params - memory.n_params(a.config()) == 18 * (4 * 640 + 2 * 256) + 640


def test_memory_grows_with_bits_and_context_and_captures():
    c4 = catalogue.get("gemma-2-9b-it-4bit")
    c8 = catalogue.get("gemma-2-9b-it-8bit")
    assert c4.estimate().weights == int(c4.n_params * (0.5 + 4 / 64))  # 4.5 bits per parameter
    assert c8.estimate().weights == int(c8.n_params * (1 + 4 / 64))
    assert c4.estimate(context=2048).kv_cache == 2 * c4.estimate(context=1024).kv_cache
    # 2 (K, V) x 42 layers x 8 kv heads x 256 head_dim x 1024 tokens x 2 bytes
    assert c4.estimate(context=1024).kv_cache == 2 * 42 * 8 * 256 * 1024 * 2
    acts = memory.ActivationPlan(prompts=10, positions=3)
    assert c4.estimate(activations=acts).activations == 10 * 3 * 42 * 3584 * 4
    assert c4.estimate(dtype="float32").weights == c4.n_params * 4


def test_lookup_is_case_insensitive_and_unknown_names_suggest():
    assert catalogue.find("GEMMA-2-2B-IT-4BIT").repo == "mlx-community/gemma-2-2b-it-4bit"
    assert catalogue.find("mlx-community/nope") is None
    with pytest.raises(ModelSpecError, match="did you mean 'gemma-2-9b-it-4bit'"):
        catalogue.get("gemma-2-9b-it-4bits")
    with pytest.raises(ModelSpecError, match="did you mean 'mlx-community/Qwen3-8B-4bit'"):
        catalogue.get("mlx-community/qwen3-8b-4bits")


def test_models_catalogue_json_and_table(capsys):
    code, out, _ = run(["models", "--catalogue", "--memory", "64GB", "--json"], capsys)
    assert code == 0
    cat = json.loads(out)["catalogue"]
    assert cat["memory_limit"] == 64 * 1024**3 and len(cat["rows"]) == 2 * len(catalogue.ARCHITECTURES)
    by = {r["repo"]: r for r in cat["rows"]}
    big = by["mlx-community/gemma-2-27b-it-8bit"]
    assert big["fits_as_stored"] and not big["fits_float32"]  # 4 bytes x 27B > 64 GB
    assert [r["n_params"] for r in cat["rows"]] == sorted(r["n_params"] for r in cat["rows"])
    code, out, err = run(["models", "--catalogue", "--memory", "8GB"], capsys)
    assert code == 0 and "Qwen2.5-14B-Instruct-8bit" in out and "Sources:" in err
    code, _, err = run(["models", "--catalogue", "--memory", "lots"], capsys)
    assert code == 2 and "--memory 'lots' is not a size" in err
