"""`mlxinterp serve`: the JSON API on tiny models (numbers checked against independent computations),
bad requests, path traversal, the token and Host guards, the busy answer, and the CLI's checks."""
from __future__ import annotations

import base64
import json
import re
import threading
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx (the test extra)")
from starlette.testclient import TestClient  # noqa: E402

from mlxinterp.analysis.attention import patterns_for  # noqa: E402
from mlxinterp.analysis.controlvec import LayerVectors, export_llama_cpp  # noqa: E402
from mlxinterp.analysis.directions import diff_of_means, steering_taps  # noqa: E402
from mlxinterp.analysis.patching import logit_diff, patch_sweep  # noqa: E402
from mlxinterp.serve.app import STATIC, ServeConfig, create_app  # noqa: E402
from mlxinterp.serve.engine import reduce_rows  # noqa: E402

BASE = "http://127.0.0.1:8000"
PROMPT = "The Eiffel Tower is located in the city of"
CLEAN, CORRUPT = "The capital of France is located in the city of", "The capital of Italy is located in the city of"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    results, vectors, outside = root / "results", root / "vectors", root / "outside"
    for d in (results / "tiny" / "exp", vectors, outside):
        d.mkdir(parents=True)
    (results / "tiny" / "exp" / "result.json").write_text(json.dumps({"answer": 42}))
    (results / "tiny" / "exp" / "fig.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (results / "report.md").write_text("# report\n")
    (outside / "secret.json").write_text(json.dumps({"secret": "do not serve"}))
    (results / "tiny" / "exp" / "link.json").symlink_to(outside / "secret.json")
    (results / "escape").symlink_to(outside, target_is_directory=True)
    return {"results": results, "vectors": vectors, "outside": outside}


@pytest.fixture(scope="module")
def model(tiny_hooked):
    return tiny_hooked("gemma3_text", None)


@pytest.fixture(scope="module")
def client(model, dirs):
    app = create_app(model, ServeConfig(results_dir=dirs["results"], vectors_dir=dirs["vectors"]))
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as c:
        yield c


def _ndjson(resp) -> list[dict]:
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


def _text(events, side) -> str:
    return "".join(e["text"] for e in events if e.get("event") == "token" and e["side"] == side)


# ------------------------------------------------------------------ page and static assets
def test_page_and_assets_are_served_and_load_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and "mlxinterp explorer" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    for f in STATIC.iterdir():  # offline: no CDN, no remote fonts or scripts
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", f.read_text()), f.name


def test_info(client, model):
    info = client.get("/api/info").json()
    assert info["n_layers"] == model.info.n_layers and info["vocab_size"] == model.info.vocab_size
    assert info["busy"] == 0


# ------------------------------------------------------------------ lens
def _numpy_lens(hm, prompt, mode):
    """Independent reference: every layer's logits through hm.unembed, softmax and sorting in numpy (float64)."""
    ids = hm.tokens(prompt).ids
    _, cache = hm.run_with_cache(ids, names="hook_resid_post")
    h = cache.stack("hook_resid_post")[:, 0]
    logits = np.array(hm.unembed(h, normed=(mode == "normed"))).astype(np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ent = -(p * np.log(np.where(p > 0, p, 1))).sum(-1)
    return logits, p, ent


@pytest.mark.parametrize("arch", ["gemma3_text", "llama"])
@pytest.mark.parametrize("mode", ["normed", "raw"])
def test_lens_grid_matches_numpy(tiny_hooked, dirs, arch, mode):
    hm = tiny_hooked(arch, None)
    with TestClient(create_app(hm, ServeConfig(results_dir=dirs["results"])), base_url=BASE) as c:
        res = c.post("/api/lens", json={"prompt": PROMPT, "mode": mode, "top_k": 4, "target": " Paris"}).json()
    logits, p, ent = _numpy_lens(hm, PROMPT, mode)
    n_layers, L, V = logits.shape
    assert res["n_layers"] == n_layers and len(res["tokens"]) == L and len(res["cells"]) == n_layers
    tid = res["target_id"]
    for l in range(n_layers):
        assert len(res["cells"][l]) == L
        for j in range(L):
            cell, order = res["cells"][l][j], np.argsort(-logits[l, j], kind="stable")[:4]
            assert [t for t, _ in cell["top"]] == [hm.tokenizer.decode([int(i)]) for i in order]
            np.testing.assert_allclose([q for _, q in cell["top"]], p[l, j, order], rtol=1e-3, atol=6e-6)  # sent rounded to 1e-5
            assert cell["entropy"] == pytest.approx(ent[l, j], abs=2e-3)
            assert cell["target_rank"] == int((logits[l, j] > logits[l, j, tid]).sum())
            assert cell["target_prob"] == pytest.approx(p[l, j, tid], rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("V,k", [(262_144 // 64, 5), (1000, 20), (513, 1), (37, 3)])
def test_reduce_rows_matches_brute_force(V, k):
    """Block top-k (blocks of 512, padded when V is not a multiple), chunked exp pass, threads."""
    rng = np.random.default_rng(V)
    logits = (rng.standard_normal((21, V)) * 4).astype(np.float32)
    logits[3, :] = 0.5  # a flat row (ties everywhere)
    out = reduce_rows(logits, k, target=7, threads=2, chunk=4)
    l64 = logits.astype(np.float64)
    p = np.exp(l64 - l64.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    for r in range(len(logits)):
        want = np.sort(logits[r])[::-1][:k]
        np.testing.assert_allclose(logits[r, out["top_ids"][r]], want)  # the k largest values (ties: any of them)
        np.testing.assert_allclose(out["top_probs"][r], p[r, out["top_ids"][r]], rtol=1e-4)
        assert out["entropy"][r] == pytest.approx(-(p[r] * np.log(p[r])).sum(), rel=1e-4, abs=1e-4)
        assert out["target_rank"][r] == (logits[r] > logits[r, 7]).sum()


# ------------------------------------------------------------------ attention
def test_attention_is_the_library_pattern(client, model):
    res = client.post("/api/attention", json={"prompt": PROMPT, "layer": 1}).json()
    want, ids = patterns_for(model, PROMPT, layers=[1])
    assert len(res["tokens"]) == len(ids) and res["n_heads"] == want[1].shape[0]
    np.testing.assert_allclose(np.array(res["pattern"]), want[1], atol=1e-4)


# ------------------------------------------------------------------ steering
def _steer(client, vector, pct, layers=None, max_tokens=6, prompt=PROMPT):
    r = client.post("/api/steer", json={"prompt": prompt, "vector": vector, "layers": layers,
                                        "strength_pct": pct, "max_tokens": max_tokens})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return _ndjson(r)


def test_steering_stream_equals_generate_with_the_planned_taps(client, model):
    contrast = {"positive": ["I love this happy day", "what a great time"], "negative": ["I hate this sad day", "what an awful time"]}
    zero = _steer(client, contrast, 0, layers=[2])
    assert zero[0]["event"] == "plan" and zero[-1]["event"] == "done"
    plain = model.generate(PROMPT, max_tokens=6).text
    assert _text(zero, "steered") == _text(zero, "baseline") == plain
    ev = _steer(client, contrast, 60, layers=[1, 2])
    plan = ev[0]
    # the % of residual norm: weight * |v| = pct/100 * mean |resid_post| over positions 1.. (independently measured)
    _, cache = model.run_with_cache(PROMPT, names=[f"blocks.{l}.hook_resid_post" for l in (1, 2)])
    for l, w, vn in zip(plan["layers"], plan["weights"], plan["vector_norms"]):
        resid = np.linalg.norm(np.array(cache[f"blocks.{l}.hook_resid_post"][0, 1:]), axis=-1).mean()
        assert w * vn == pytest.approx(0.60 * resid, rel=1e-4)
    pos = model.run_with_cache(contrast["positive"], names=["blocks.1.hook_resid_post"])  # noqa: F841 (warms nothing)
    vecs = {l: v for l, v in zip(plan["layers"], _contrast_vectors(model, contrast, plan["layers"]))}
    want = model.generate(PROMPT, max_tokens=6, taps=steering_taps(vecs, 1.0, plan["layers"], plan["weights"])).text
    assert _text(ev, "steered") == want != plain
    assert all(e.get("cached") for e in ev if e.get("side") == "baseline")  # unsteered side remembered


def _contrast_vectors(hm, contrast, layers):
    from mlxinterp.analysis.directions import extract

    dirs = extract(hm, contrast["positive"], contrast["negative"], layers=layers, hook="hook_resid_post")
    return [dirs[l].vector for l in layers]


def test_steering_from_files_and_upload(client, model, dirs):
    rng = np.random.default_rng(0)
    d = diff_of_means(rng.normal(size=(4, 64)) + 1, rng.normal(size=(4, 64)), "blocks.2.hook_resid_post", rng)
    d.save(dirs["vectors"] / "mydir")
    LayerVectors({1: rng.normal(size=64), 2: rng.normal(size=64)}).save(dirs["vectors"] / "perlayer.safetensors")
    export_llama_cpp(LayerVectors({1: rng.normal(size=64)}, "tiny"), dirs["vectors"] / "cv.gguf")
    listed = {v["path"]: v["kind"] for v in client.get("/api/vectors").json()["vectors"]}
    assert listed == {"mydir.safetensors": "direction", "perlayer.safetensors": "per-layer",
                      "cv.gguf": "llama.cpp control vector"}
    for path, layers in (("mydir.safetensors", None), ("perlayer.safetensors", [2]), ("cv.gguf", None)):
        ev = _steer(client, {"path": path}, 50, layers=layers)
        assert ev[0]["layers"] == ([2] if path != "cv.gguf" else [1])
        assert _text(ev, "steered")
    gguf_bytes = (dirs["vectors"] / "cv.gguf").read_bytes()
    up = client.post("/api/vectors", json={"name": "uploaded", "gguf": base64.b64encode(gguf_bytes).decode()})
    assert up.status_code == 200 and up.json()["path"] == "uploads/uploaded.gguf"
    assert (dirs["vectors"] / "uploads" / "uploaded.gguf").read_bytes() == gguf_bytes
    st = (dirs["vectors"] / "mydir.safetensors").read_bytes()
    meta = json.loads((dirs["vectors"] / "mydir.json").read_text())
    up = client.post("/api/vectors", json={"name": "d2", "safetensors": base64.b64encode(st).decode(), "json": meta})
    assert up.json()["path"] == "uploads/d2.safetensors"
    a = _steer(client, {"path": "uploads/d2.safetensors"}, 50)
    b = _steer(client, {"path": "mydir.safetensors"}, 50)
    assert _text(a, "steered") == _text(b, "steered")


def test_closing_the_stream_frees_the_model(client):
    ex = client.app.state.explorer
    body = {"prompt": PROMPT, "vector": {"positive": ["good"], "negative": ["bad"]}, "strength_pct": 30, "max_tokens": 64}
    with client.stream("POST", "/api/steer", json=body) as r:
        first = next(r.iter_lines())
        assert json.loads(first)["event"] == "plan"
    for _ in range(100):
        if ex.worker.pending == 0:
            break
        time.sleep(0.05)
    assert ex.worker.pending == 0


# ------------------------------------------------------------------ patching
def test_patch_grid_is_patch_sweep_and_a_cell_agrees(client, model):
    body = {"clean": CLEAN, "corrupt": CORRUPT, "target": " Paris", "foil": " Rome"}
    res = client.post("/api/patch", json=body).json()
    want = patch_sweep(model, CLEAN, CORRUPT, logit_diff(model, " Paris", " Rome"))
    np.testing.assert_allclose(np.array(res["grid"], float), np.array(want.metric), atol=1e-4)
    assert res["layers"] == want.layers and res["positions"] == want.positions
    L = len(res["positions"])
    cell = client.post("/api/patch/cell", json={**body, "layer": 2, "position": 3}).json()
    # one patched forward with the full unembedding agrees with the batched sweep's cell
    assert cell["patched"]["metric"] == pytest.approx(res["grid"][2][3], abs=1e-3)
    assert cell["clean"]["metric"] == pytest.approx(res["clean"], abs=1e-3)
    assert cell["corrupt"]["metric"] == pytest.approx(res["corrupt"], abs=1e-3)
    assert abs(sum(p for _, p in cell["patched"]["top"])) <= 1.0 + 1e-4 and L > 3
    same = client.post("/api/patch/cell", json={**body, "layer": 0, "position": 0}).json()
    assert same["patched"]["top"] == same["corrupt"]["top"]  # BOS: the clean activation is the corrupt one


def test_patch_atp_estimate_beside_exact(client, model):
    from mlxinterp.analysis.attribution import attribute

    body = {"clean": CLEAN, "corrupt": CORRUPT, "target": " Paris", "foil": " Rome", "estimate": True}
    res = client.post("/api/patch", json=body).json()
    att = attribute(model, CLEAN, CORRUPT, logit_diff(model, " Paris", " Rome"), hooks=("hook_resid_pre",))
    est = np.stack([att.estimates[f"blocks.{l}.hook_resid_pre"] for l in res["layers"]])
    np.testing.assert_allclose(np.array(res["atp"]["grid"]) - res["corrupt"], est, atol=1e-4)
    assert np.all(est[:, 0] == 0)  # BOS: clean and corrupt activations are identical
    exact = np.array(res["grid"]) - res["corrupt"]
    assert res["atp"]["pearson_r"] == pytest.approx(np.corrcoef(est.ravel(), exact.ravel())[0, 1], abs=1e-3)
    assert "atp" not in client.post("/api/patch", json={**body, "estimate": False}).json()


def test_tuned_lens_mode(model, dirs, tmp_path):
    from mlxinterp.analysis.tuned_lens import TunedLens

    n, d = model.info.n_layers, model.info.d_model
    rng = np.random.default_rng(3)
    lens = TunedLens(mx.array(rng.normal(size=(n, d, d)).astype(np.float32) * 0.05),
                     mx.array(rng.normal(size=(n, d)).astype(np.float32) * 0.1))
    path = lens.save(tmp_path / "tuned.safetensors")
    app = create_app(model, ServeConfig(results_dir=dirs["results"], tuned_lens=path))
    with TestClient(app, base_url=BASE) as c:
        assert "tuned" in c.get("/api/info").json()["modes"]
        res = c.post("/api/lens", json={"prompt": PROMPT, "mode": "tuned", "top_k": 3}).json()
    _, cache = model.run_with_cache(PROMPT, names="hook_resid_post")
    h = np.array(cache.stack("hook_resid_post")[:, 0]).astype(np.float64)
    A, b = np.array(lens.A, np.float64), np.array(lens.b, np.float64)
    translated = h + np.einsum("lpd,lde->lpe", h, A) + b[:, None, :]
    logits = np.array(model.unembed(mx.array(translated.astype(np.float32)), normed=True))
    for l in range(n):
        for j in range(len(res["tokens"])):
            want = np.argsort(-logits[l, j], kind="stable")[:3]
            assert [t for t, _ in res["cells"][l][j]["top"]] == [model.tokenizer.decode([int(i)]) for i in want]
    r = TestClient(create_app(model, ServeConfig(results_dir=dirs["results"])), base_url=BASE).post(
        "/api/lens", json={"prompt": PROMPT, "mode": "tuned"})
    assert r.status_code == 400 and "--tuned-lens" in r.json()["error"]


def tiny_sae(model, d_sae: int = 48, seed: int = 5):
    """A random ReLU SAE on block 1's output, saved as SAELens files (what --sae reads)."""
    from mlxinterp.analysis.sae import SAE

    d, rng = model.info.d_model, np.random.default_rng(seed)
    return SAE(mx.array(rng.normal(size=(d, d_sae)).astype(np.float32) * 0.3),
               mx.array(rng.normal(size=d_sae).astype(np.float32) * 0.1),
               mx.array(rng.normal(size=(d_sae, d)).astype(np.float32) * 0.3),
               mx.array(rng.normal(size=d).astype(np.float32) * 0.05), "relu", "blocks.1.hook_resid_post")


def test_sae_features_are_the_encoded_activations(model, dirs, tmp_path):
    sae = tiny_sae(model)
    path = sae.save(tmp_path / "sae")
    app = create_app(model, ServeConfig(results_dir=dirs["results"], sae=path))
    with TestClient(app, base_url=BASE) as c:
        info = c.get("/api/info").json()["sae"]
        assert info == {"hook": "blocks.1.hook_resid_post", "d_sae": 48, "activation": "relu"}
        res = c.post("/api/sae", json={"prompt": PROMPT, "top_k": 4}).json()
        bad = c.post("/api/sae", json={"prompt": PROMPT, "top_k": 999})
    assert bad.status_code == 400 and "top_k" in bad.json()["error"]
    # independent: capture the hook, encode in float64 numpy
    _, cache = model.run_with_cache(PROMPT, names="blocks.1.hook_resid_post")
    x = np.array(cache["blocks.1.hook_resid_post"][0], np.float64)
    W, b, bd = (np.array(a, np.float64) for a in (sae.W_enc, sae.b_enc, sae.b_dec))
    f = np.maximum((x - bd) @ W + b, 0)
    assert len(res["positions"]) == x.shape[0] == len(res["tokens"])
    for j, row in enumerate(res["positions"]):
        want = [i for i in np.argsort(-f[j], kind="stable")[:4] if f[j, i] > 0]
        assert [c["feature"] for c in row] == want
        assert [c["act"] for c in row] == pytest.approx([f[j, i] for i in want], abs=1e-3)
    assert set(res["features"]) == {str(c["feature"]) for row in res["positions"] for c in row}
    no_sae = TestClient(create_app(model, ServeConfig(results_dir=dirs["results"])), base_url=BASE)
    r = no_sae.post("/api/sae", json={"prompt": PROMPT})
    assert r.status_code == 400 and "--sae" in r.json()["error"]
    assert no_sae.get("/api/info").json()["sae"] is None


# ------------------------------------------------------------------ results browser
def test_results_listing_and_files(client):
    res = client.get("/api/results").json()
    assert res["reports"] == ["report.md"]
    exp = res["runs"][0]["experiments"][0]
    assert exp["path"] == "tiny/exp" and "result.json" in exp["files"] and "fig.png" in exp["files"]
    assert "link.json" not in exp["files"]  # a symlink leading outside is not offered
    assert client.get("/api/results/file", params={"path": "tiny/exp/result.json"}).json() == {"answer": 42}
    png = client.get("/api/results/file", params={"path": "tiny/exp/fig.png"})
    assert png.headers["content-type"] == "image/png"


@pytest.mark.parametrize("path", ["../outside/secret.json", "/etc/passwd", "tiny/../../outside/secret.json",
                                  "tiny/exp/link.json", "escape/secret.json", "..\\outside\\secret.json",
                                  "tiny/exp/result.json\x00.png", "~/.ssh/id_rsa", "%2e%2e/outside/secret.json"])
def test_results_path_traversal_is_refused(client, path):
    r = client.get("/api/results/file", params={"path": path})
    assert r.status_code in (403, 404), (path, r.status_code)
    assert "do not serve" not in r.text and "root:" not in r.text


def test_encoded_traversal_in_the_url_is_refused(client, dirs):
    for url in ("/api/results/file?path=%2e%2e%2foutside%2fsecret.json", "/api/results/file?path=..%2F..%2Fetc%2Fpasswd",
                "/static/..%2f..%2fapp.py", "/static/%2e%2e/%2e%2e/app.py", "/static/../app.py"):
        r = client.get(url)
        assert r.status_code in (403, 404), url
        assert "do not serve" not in r.text and "Starlette" not in r.text


def test_vector_paths_and_upload_names_stay_inside(client, dirs):
    for path in ("../outside/secret.json", "/etc/passwd", "uploads/../../outside/secret.json"):
        r = client.post("/api/steer", json={"prompt": PROMPT, "vector": {"path": path}, "strength_pct": 10})
        assert r.status_code == 403, path
    for name in ("../evil", "/tmp/evil", "a/b", ".hidden", "x.gguf", ""):
        r = client.post("/api/vectors", json={"name": name, "gguf": base64.b64encode(b"GGUF").decode()})
        assert r.status_code == 400, name
    assert not (dirs["vectors"].parent / "evil.gguf").exists() and not Path("/tmp/evil.gguf").exists()


# ------------------------------------------------------------------ bad requests
@pytest.mark.parametrize("url,body,needle", [
    ("/api/lens", {}, "prompt must be a non-empty string"),
    ("/api/lens", {"prompt": ""}, "prompt must be a non-empty string"),
    ("/api/lens", {"prompt": "the city of " * 30}, "at most 64"),
    ("/api/lens", {"prompt": "x" * 3000}, "characters; the limit is 2000"),
    ("/api/lens", {"prompt": PROMPT, "mode": "tuned"}, "mode='tuned' is not allowed"),
    ("/api/lens", {"prompt": PROMPT, "top_k": 0}, "top_k=0 is not allowed"),
    ("/api/lens", {"prompt": PROMPT, "top_k": "5"}, "top_k='5' is not allowed"),
    ("/api/attention", {"prompt": PROMPT, "layer": 99}, "layer=99 is not allowed"),
    ("/api/steer", {"prompt": PROMPT, "vector": {"positive": ["a"], "negative": ["b"]}, "max_tokens": 1000}, "max_tokens=1000"),
    ("/api/steer", {"prompt": PROMPT, "vector": {"positive": ["a"], "negative": ["b"]}, "strength_pct": 1e9}, "strength_pct"),
    ("/api/steer", {"prompt": PROMPT, "vector": {"positive": ["a"], "negative": ["b"]}, "layers": [99]}, "layers=[99]"),
    ("/api/steer", {"prompt": PROMPT, "vector": "refusal"}, "vector must be"),
    ("/api/patch", {"clean": CLEAN, "corrupt": "short", "target": " Paris"}, "equal lengths"),
    ("/api/patch", {"clean": CLEAN, "corrupt": CORRUPT, "target": " Paris", "hook": "hook_q"}, "hook='hook_q'"),
    ("/api/patch/cell", {"clean": CLEAN, "corrupt": CORRUPT, "target": " Paris", "layer": 1, "position": 99}, "position=99"),
    ("/api/vectors", {"name": "x", "gguf": "not base64!"}, "not valid base64"),
])
def test_bad_requests_get_a_4xx_json_message(client, url, body, needle):
    r = client.post(url, json=body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert needle in r.json()["error"]
    assert "Traceback" not in r.text


def test_malformed_bodies(client):
    r = client.post("/api/lens", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = client.post("/api/lens", content=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = client.post("/api/lens", content=b"prompt=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415  # a cross-site form post cannot reach the API
    r = client.post("/api/lens", json={"prompt": "x" * (2 << 20)})
    assert r.status_code == 413
    chunks = (b"x" * 65536 for _ in range(40))  # no Content-Length: counted as it arrives
    r = client.post("/api/lens", content=chunks, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert client.delete("/api/lens").status_code == 405
    assert client.get("/api/nothing").status_code == 404


def test_unexpected_errors_are_one_line_not_a_traceback(client, monkeypatch):
    from mlxinterp.serve import engine

    def boom(*a, **k):
        raise RuntimeError("internal detail /home/secret/path")

    monkeypatch.setattr(engine, "attention", boom)
    r = client.post("/api/attention", json={"prompt": PROMPT, "layer": 0})
    assert r.status_code == 500
    assert r.json() == {"error": "internal error (RuntimeError); see the server log"}


# ------------------------------------------------------------------ guards
def test_token_is_checked_on_every_request(model, dirs):
    app = create_app(model, ServeConfig(results_dir=dirs["results"], token="s3cret-token", loopback_only=False))
    with TestClient(app, base_url="http://192.168.1.5:8000") as c:
        for url in ("/", "/api/info", "/static/app.js", "/api/results"):
            assert c.get(url).status_code == 401, url
        assert c.get("/api/info", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert c.get("/api/info", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert c.post("/api/lens", json={"prompt": PROMPT}).status_code == 401
        page = c.get("/?token=s3cret-token")
        assert page.status_code == 200 and "mlxinterp_token" in page.headers["set-cookie"]
        assert "httponly" in page.headers["set-cookie"].lower()
        assert c.get("/api/info").status_code == 200  # the cookie the page set


def test_loopback_server_refuses_other_host_names(model, dirs):
    app = create_app(model, ServeConfig(results_dir=dirs["results"]))
    with TestClient(app, base_url=BASE) as c:
        assert c.get("/api/info").status_code == 200
        assert c.get("/api/info", headers={"Host": "localhost:8000"}).status_code == 200
        assert c.get("/api/info", headers={"Host": "[::1]:8000"}).status_code == 200
        r = c.get("/api/info", headers={"Host": "attacker.example:8000"})  # DNS rebinding
        assert r.status_code == 403 and "localhost" in r.json()["error"]


def test_one_computation_at_a_time_then_busy(model, dirs):
    app = create_app(model, ServeConfig(results_dir=dirs["results"], queue=1))
    ex = app.state.explorer
    gate, started = threading.Event(), threading.Event()
    order: list[str] = []

    def hold():
        started.set()
        gate.wait(30)
        order.append("held")

    with TestClient(app, base_url=BASE) as c:
        t1 = threading.Thread(target=ex.worker.run_sync, args=(hold,))
        t1.start()
        started.wait(10)
        queued: dict = {}
        t2 = threading.Thread(target=lambda: queued.update(r=c.post("/api/lens", json={"prompt": PROMPT})))
        t2.start()
        for _ in range(100):
            if ex.worker.pending == 2:
                break
            time.sleep(0.02)
        busy = c.post("/api/attention", json={"prompt": PROMPT, "layer": 0})
        assert busy.status_code == 503 and busy.json()["busy"] is True and "busy" in busy.json()["error"]
        assert busy.headers["retry-after"] == "2"
        gate.set()
        t1.join(30)
        t2.join(60)
        assert order == ["held"] and queued["r"].status_code == 200
        assert c.post("/api/attention", json={"prompt": PROMPT, "layer": 0}).status_code == 200


# ------------------------------------------------------------------ CLI
@pytest.mark.parametrize("args,needle", [(["--port", "0"], "--port 0"), (["--queue", "99"], "--queue 99"),
                                         (["--token", "short"], "at least 8")])
def test_cli_refuses_bad_options_before_loading(capsys, args, needle):
    from cli_runner import run

    code, _, err = run(["serve", "--model", "/nonexistent/model", *args], capsys)
    assert code == 2 and needle in err


def test_cli_help_lists_serve(capsys):
    from cli_runner import run

    code, out, _ = run(["serve", "--help"], capsys)
    assert code == 0 and "--host" in out and "--token" in out


def test_cli_serves_and_requires_the_printed_token_off_loopback(tiny_dirs, dirs):
    """`mlxinterp serve` for real (uvicorn, a subprocess): bound to 127.0.0.2, which is not one of the
    loopback names the server trusts without a token (so it makes one) but is still only reachable from here."""
    import signal
    import socket
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlxinterp", "serve", "--model", str(tiny_dirs[("llama", None)]), "--host", "127.0.0.2",
           "--port", str(port), "--results", str(dirs["results"]), "--no-warmup"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        url = None
        for line in proc.stderr:
            m = re.search(r"(http://127\.0\.0\.2:\d+/\?token=[\w-]+)", line)
            if m:
                url = m.group(1)
                break
        assert url, "no URL with a token printed"
        token = url.split("token=")[1]
        base = f"http://127.0.0.2:{port}"
        for _ in range(100):  # the URL is printed just before uvicorn binds
            try:
                with urllib.request.urlopen(f"{base}/api/info", timeout=5):
                    pass
            except urllib.error.HTTPError as e:
                assert e.code == 401
                break
            except OSError:
                time.sleep(0.1)
        req = urllib.request.Request(f"{base}/api/info", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.loads(r.read())["arch"] == "llama"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)

