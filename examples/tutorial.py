"""The tutorial, docs/tutorial.md, as one script: `python examples/tutorial.py` writes into ./tutorial/.

Each `# %%` cell is one code block of docs/tutorial.md, in order (tests/test_docs.py checks that
they are identical and runs this script). Edit the Markdown, then regenerate this file with
`python tests/test_docs.py`.
"""
# %% 1. Load the model
from pathlib import Path

from mlxinterp.core.platform import ensure_fast_blas

ensure_fast_blas()

import mlxinterp as mi

hm = mi.load("default")
out = Path("tutorial")
out.mkdir(exist_ok=True)
print(hm.info.arch, hm.info.n_layers, "layers, d_model", hm.info.d_model)

# %% 2. Logit lens: when does the model know the answer?
from mlxinterp.analysis.lens import logit_lens, plot_lens

prompt = "The Eiffel Tower is located in the city of"
lens = logit_lens(hm, prompt, targets=[" Paris"], grid=True)
for layer in lens.layers:
    top = layer.top_tokens[0]
    print(f"layer {layer.layer:2d}  rank of ' Paris' {layer.target_rank:6d}   top {top['token']!r} ({top['prob']:.2f})")
print("figure:", plot_lens(lens, out / "lens.png"))

# %% 3. A steering vector from two prompt sets
from mlxinterp.analysis import directions

happy = ["The party was wonderful.", "I got the job I wanted.", "We won the final match.",
         "My friends surprised me with a gift.", "The sun is shining and the birds sing.",
         "She said yes when I proposed.", "The holiday was perfect.", "My exam results were excellent."]
sad = ["The party was a disaster.", "I lost the job I wanted.", "We lost the final match.",
       "My friends forgot my birthday.", "The rain has not stopped for weeks.",
       "She left without saying goodbye.", "The holiday was ruined.", "My exam results were terrible."]
dirs = directions.extract(hm, [s + " I feel" for s in happy], [s + " I feel" for s in sad], layers=[6, 10])
for layer, d in dirs.items():
    print(f"layer {layer}: norm {d.norm:.1f} = {d.relative_norm:.1%} of the residual, split-half cosine {d.split_half_cosine:.2f}")
direction = dirs[10]
direction.save(out / "happy_L10")

# %% 4. Steered generation, measured
from mlxinterp.analysis.patching import forward_last, logit_diff

probe = hm.tokens("Today I went to the office. I feel")
happy_minus_sad = logit_diff(hm, " happy", " sad")
for pct in (-8, 0, 8):
    taps = directions.steering_taps(direction.vector, pct / 100 / direction.relative_norm, [10])
    value = float(happy_minus_sad(forward_last(hm, probe, taps)[:, 0])[0])
    print(f"steer {pct:+3d}% of residual norm: logit(' happy') - logit(' sad') = {value:+.2f}")

for pct in (0, 8, -8):
    taps = directions.steering_taps(direction.vector, pct / 100 / direction.relative_norm, [10])
    text = hm.generate("Today I went to the office and", max_tokens=20, taps=taps).text
    print(f"{pct:+3d}%: Today I went to the office and{text}")

# %% 5. Activation patching: where is "Paris" computed?
from mlxinterp.analysis.patching import patch_sweep, plot_sweep

sweep = patch_sweep(hm, "The Eiffel Tower is located in the city of", "The Colosseum is located in the city of",
                    logit_diff(hm, " Paris", " Rome"))
print(f"clean {sweep.clean:+.2f}, corrupt {sweep.corrupt:+.2f}; "
      f"{len(sweep.layers) * len(sweep.positions)} patches in {sweep.seconds:.1f} s")
print("figure:", plot_sweep(sweep, out / "patching.png"))

# %% 6. One suite experiment and its report
from mlxinterp.core import io

summary = mi.run_all(["default"], only="validation", out=out / "results", load_fn=lambda spec: hm, quick=True)
record = io.read_json(out / "results" / "default" / "validation" / "result.json")
for key, value in record["result"]["summary"].items():
    print(f"{key:55s} {value}")
print("report:", summary["report"]["html"])

# %% 7. Take the steering vector to llama.cpp
from mlxinterp.analysis.controlvec import LayerVectors, export_llama_cpp, import_llama_cpp

vectors = LayerVectors.from_directions(direction, model_hint="gemma3")
gguf_path = export_llama_cpp(vectors, out / "happy.gguf", scale=0.08 / direction.relative_norm)
print(gguf_path, "layers", import_llama_cpp(gguf_path).layers)
