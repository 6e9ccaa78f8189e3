"""`mlxinterp serve` in a real browser: headless Chromium (Debian's package) driven by Selenium drives each
view on a tiny model: the page loads, a prompt runs, the lens grid has layers x positions cells, hovering
shows a token, the steering slider changes the text, the patching heatmap renders and a cell opens, the SAE
features view (an SAE built in the test) lists each position's features.

Skipped with the reason when chromium / chromedriver / selenium are missing
(`apt-get install chromium chromium-driver`; scripts/run.sh does it in CI).

Screenshots for the docs (default model):
    python tests/test_serve_browser.py --screenshots docs/img
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("MLXINTERP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = os.environ.get("MLXINTERP_CHROMEDRIVER") or shutil.which("chromedriver")
PROMPT = "The Eiffel Tower is located in the city of"


def _missing() -> str | None:
    if not CHROMIUM or not DRIVER:
        return "needs chromium and chromedriver (apt-get install chromium chromium-driver)"
    for mod, extra in (("selenium", "test"), ("uvicorn", "serve"), ("starlette", "serve")):
        try:
            __import__(mod)
        except ImportError:
            return f"needs {mod} (pip install -e '.[{extra}]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving the explorer on a free loopback port, in a thread of this process."""

    def __init__(self, hm, **config):
        import uvicorn

        from mlxinterp.serve.app import ServeConfig, create_app

        self.app = create_app(hm, ServeConfig(**config))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            time.sleep(0.05)
        raise RuntimeError("uvicorn did not start")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def make_driver(width: int = 1400, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # not the OpenBLAS LD_PRELOAD the tests run under: Chromium's renderer dies with it ("Unable to receive
    # message from renderer")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return webdriver.Chrome(service=Service(DRIVER, env=env), options=opts)


def wait(driver, cond, timeout: float = 120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: cond(d))


def run_and_wait(driver, button_id: str, status_id: str, timeout: float = 180) -> str:
    """Click a view's Run button and wait for its status line to say done (or an error to show)."""
    driver.execute_script(f"document.getElementById('{status_id}').textContent = '';")
    driver.find_element("id", button_id).click()
    wait(driver, lambda d: "done" in d.find_element("id", status_id).text or d.find_element("id", "error").is_displayed(),
         timeout)
    err = driver.find_element("id", "error")
    assert not err.is_displayed(), err.text
    return driver.find_element("id", status_id).text


def show(driver, view: str) -> None:
    driver.find_element("css selector", f"#tabs button[data-view='{view}']").click()
    wait(driver, lambda d: d.find_element("id", f"view-{view}").is_displayed(), 10)


def set_value(driver, element_id: str, value) -> None:
    driver.execute_script("const e = document.getElementById(arguments[0]); e.value = arguments[1];", element_id, value)


def steer_at(driver, pct: int, timeout: float = 120) -> tuple[str, str]:
    """Move the strength slider (an input event, as a drag fires) and wait for both texts to finish."""
    driver.execute_script("""const s = document.getElementById('steer-status'); s.textContent = '';
        const r = document.getElementById('steer-strength'); r.value = arguments[0];
        r.dispatchEvent(new Event('input', {bubbles: true}));""", pct)
    wait(driver, lambda d: "done" in d.find_element("id", "steer-status").text
         or d.find_element("id", "error").is_displayed(), timeout)
    err = driver.find_element("id", "error")
    assert not err.is_displayed(), err.text
    return (driver.find_element("id", "steer-steered").text, driver.find_element("id", "steer-baseline").text)


# ------------------------------------------------------------------ tests
pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = tmp_path_factory.mktemp("browser-results")
    exp = root / "tiny" / "exp"
    exp.mkdir(parents=True)
    (exp / "result.json").write_text(json.dumps({"experiment": "exp", "effect": 0.5}))
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(exp / "exp.png")
    plt.close(fig)
    return root


@pytest.fixture(scope="module")
def model(tiny_hooked):
    return tiny_hooked("gemma3_text", None)


@pytest.fixture(scope="module")
def sae(model, tmp_path_factory):
    """A random ReLU SAE on block 1's output, built here and saved as SAELens files (what --sae reads)."""
    import mlx.core as mx
    import numpy as np

    from mlxinterp.analysis.sae import SAE

    d, rng = model.info.d_model, np.random.default_rng(5)
    sae = SAE(mx.array(rng.normal(size=(d, 48)).astype(np.float32) * 0.3),
              mx.array(rng.normal(size=48).astype(np.float32) * 0.1),
              mx.array(rng.normal(size=(48, d)).astype(np.float32) * 0.3),
              mx.array(rng.normal(size=d).astype(np.float32) * 0.05), "relu", "blocks.1.hook_resid_post")
    return sae, sae.save(tmp_path_factory.mktemp("sae") / "sae")


@pytest.fixture(scope="module")
def live(model, results_dir, sae):
    with LiveServer(model, results_dir=results_dir, vectors_dir=results_dir, sae=sae[1]) as srv:
        yield srv


@pytest.fixture(scope="module")
def driver(live):
    d = make_driver()
    d.get(live.url)
    wait(d, lambda d: d.execute_script("return document.body.dataset.ready") == "1", 60)
    yield d
    d.quit()


def test_page_loads_with_the_model(driver, model):
    assert driver.title == "mlxinterp explorer"
    assert f"{model.info.n_layers} layers" in driver.find_element("id", "model-info").text


def test_lens_grid_and_hover(driver, model):
    from mlxinterp.serve.engine import Limits, lens_grid

    show(driver, "lens")
    set_value(driver, "lens-prompt", PROMPT)
    run_and_wait(driver, "lens-run", "lens-status")
    L = len(model.tokens(PROMPT).ids[0].tolist())
    cells = driver.find_elements("css selector", "#lens-grid td.cell")
    assert len(cells) == model.info.n_layers * L
    assert len(driver.find_elements("css selector", "#lens-grid th.col")) == L
    from selenium.webdriver import ActionChains

    target = driver.find_element("css selector", "#lens-grid td.cell[data-layer='2'][data-pos='3']")
    ActionChains(driver).move_to_element(target).perform()
    wait(driver, lambda d: "layer 2, position 3" in d.find_element("id", "lens-hover").text, 10)
    want = lens_grid(model, PROMPT, Limits(), target=" Paris")["cells"][2][3]
    hover = driver.find_element("id", "lens-hover").text
    shown = lambda t: t.replace("\n", "\u21b5").replace(" ", "\u00b7")  # noqa: E731 (the page's showTok)
    assert shown(want["top"][0][0]) in hover and f"rank {want['target_rank']}" in hover


def test_attention_grid_and_hover(driver, model):
    from selenium.webdriver import ActionChains

    show(driver, "attention")
    set_value(driver, "attn-prompt", PROMPT)
    run_and_wait(driver, "attn-run", "attn-status")
    L = len(model.tokens(PROMPT).ids[0].tolist())
    assert len(driver.find_elements("css selector", "#attn-grid td.cell")) == L * L
    assert len(driver.find_elements("css selector", "#attn-head option")) == model.info.n_heads
    cell = driver.find_element("css selector", "#attn-grid td.cell[data-q='4'][data-k='1']")
    ActionChains(driver).move_to_element(cell).perform()
    wait(driver, lambda d: "query 4" in d.find_element("id", "attn-hover").text, 10)
    assert "key 1" in driver.find_element("id", "attn-hover").text


def test_steering_slider_changes_the_text(driver):
    show(driver, "steer")
    set_value(driver, "steer-layers", "1-2")
    set_value(driver, "steer-max", "8")
    steered0, base0 = steer_at(driver, 0)
    assert steered0 == base0 and steered0.startswith("I think that")
    steered1, base1 = steer_at(driver, 90)
    assert base1 == base0 and steered1 != steered0
    steered2, _ = steer_at(driver, -90)
    assert steered2 != steered1
    assert "layers 1,2" in driver.find_element("id", "steer-plan").text


def test_patching_heatmap_and_cell(driver, model):
    show(driver, "patch")
    clean, corrupt = "The capital of France is located in the city of", "The capital of Italy is located in the city of"
    set_value(driver, "patch-clean", clean)
    set_value(driver, "patch-corrupt", corrupt)
    run_and_wait(driver, "patch-run", "patch-status")
    L = len(model.tokens(clean).ids[0].tolist())
    cells = driver.find_elements("css selector", "#patch-grid td.cell")
    assert len(cells) == model.info.n_layers * L
    colours = [c.value_of_css_property("background-color") for c in cells]
    assert len(set(colours)) > 3  # a heatmap, not a blank table
    driver.execute_script("const s = document.getElementById('patch-show'); s.value = 'atp';"
                          "s.dispatchEvent(new Event('change'));")
    atp = [c.value_of_css_property("background-color") for c in
           driver.find_elements("css selector", "#patch-grid td.cell")]
    assert len(atp) == len(colours) and atp != colours  # the AtP estimate, coloured the same way
    assert "AtP estimate vs exact: r =" in driver.find_element("id", "patch-cell").text
    driver.find_element("css selector", "#patch-grid td.cell[data-layer='1'][data-pos='3']").click()
    wait(driver, lambda d: "patched:" in d.find_element("id", "patch-cell").text, 60)
    assert "layer 1, position 3" in driver.find_element("id", "patch-cell").text


def test_sae_features_view_and_hover(driver, model, sae):
    from selenium.webdriver import ActionChains

    from mlxinterp.serve.engine import Limits, sae_features

    show(driver, "sae")
    set_value(driver, "sae-prompt", PROMPT)
    set_value(driver, "sae-k", "3")
    run_and_wait(driver, "sae-run", "sae-status")
    want = sae_features(model, sae[0], PROMPT, Limits(), top_k=3)
    rows = driver.find_elements("css selector", "#sae-grid tr")
    assert len(rows) == 1 + len(want["tokens"])  # header + one row per position
    chips = driver.find_elements("css selector", "#sae-grid span.feature")
    assert len(chips) == sum(len(r) for r in want["positions"]) > 0
    first = next(j for j, r in enumerate(want["positions"]) if r)
    chip = driver.find_element("css selector", f"#sae-grid span.feature[data-pos='{first}']")
    assert chip.text.startswith(f"{want['positions'][first][0]['feature']} (")
    ActionChains(driver).move_to_element(chip).perform()
    wait(driver, lambda d: f"feature {want['positions'][first][0]['feature']} at position {first}"
         in d.find_element("id", "sae-hover").text, 10)
    assert "promotes:" in driver.find_element("id", "sae-hover").text


def test_results_browser_shows_figures(driver):
    show(driver, "results")
    wait(driver, lambda d: d.find_elements("css selector", "#results-list a"), 20)
    driver.find_element("xpath", "//ul[@id='results-list']//a[text()='exp']").click()
    wait(driver, lambda d: d.execute_script(
        "const i = document.querySelector('#results-detail img'); return i && i.complete && i.naturalWidth > 0;"), 20)
    wait(driver, lambda d: '"effect": 0.5' in d.find_element("id", "results-detail").text, 20)


def test_no_errors_in_the_browser_console(driver):
    """CSP violations, failed loads and script errors all land in the console log."""
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


# ------------------------------------------------------------------ screenshots for the docs
def screenshots(out: Path, model: str = "default", results: Path = Path("results")) -> list[Path]:
    """One PNG per view on `model`, into `out` (docs/img)."""
    from mlxinterp.core.hooks import load

    hm = load(model)
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with LiveServer(hm, results_dir=results, vectors_dir=results) as srv:
        d = make_driver(1500, 900)
        try:
            d.get(srv.url)
            wait(d, lambda d: d.execute_script("return document.body.dataset.ready") == "1", 60)
            set_value(d, "lens-prompt", "The Eiffel Tower is located in the city of Paris, which is the capital of")
            run_and_wait(d, "lens-run", "lens-status", 600)
            from selenium.webdriver import ActionChains

            cells = d.find_elements("css selector", f"#lens-grid td.cell[data-layer='{hm.info.n_layers - 3}']")
            ActionChains(d).move_to_element(cells[len(cells) // 2]).perform()
            saved.append(_shot(d, out / "serve-lens.png"))
            show(d, "attention")
            set_value(d, "attn-layer", "5")
            run_and_wait(d, "attn-run", "attn-status", 600)
            ActionChains(d).move_to_element(d.find_elements("css selector", "#attn-grid tr:last-child td.cell")[3]).perform()
            saved.append(_shot(d, out / "serve-attention.png"))
            show(d, "steer")
            set_value(d, "steer-layers", "6")
            steer_at(d, 0, 600)
            steer_at(d, 30, 600)
            saved.append(_shot(d, out / "serve-steering.png"))
            show(d, "patch")
            run_and_wait(d, "patch-run", "patch-status", 900)
            d.find_element("css selector", "#patch-grid td.cell[data-layer='8'][data-pos='3']").click()
            wait(d, lambda d: "patched:" in d.find_element("id", "patch-cell").text, 120)
            saved.append(_shot(d, out / "serve-patching.png"))
            show(d, "results")
            wait(d, lambda d: d.find_elements("css selector", "#results-list a"), 30)
            d.find_element("xpath", "//ul[@id='results-list']//a[text()='twohop']").click()
            wait(d, lambda d: d.execute_script(
                "const i = document.querySelector('#results-detail img'); return i && i.complete && i.naturalWidth > 0;"), 30)
            saved.append(_shot(d, out / "serve-results.png"))
        finally:
            d.quit()
    return saved


def _shot(driver, path: Path) -> Path:
    driver.save_screenshot(str(path))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="screenshots of each explorer view")
    ap.add_argument("--screenshots", type=Path, required=True, help="output directory, e.g. docs/img")
    ap.add_argument("--model", default="default")
    ap.add_argument("--results", type=Path, default=Path("results"))
    args = ap.parse_args()
    reason = _missing()
    if reason:
        sys.exit(f"cannot take screenshots: {reason}")
    screenshots(args.screenshots, args.model, args.results)
