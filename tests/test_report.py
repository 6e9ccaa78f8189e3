"""report.md / report.html: standalone, a section per model and per experiment, key numbers first,
every figure a link to its JSON, anchors that resolve, deterministic bytes."""
from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from mlxinterp.core import io
from mlxinterp.suite.report import anchor, write_report


class _Page(HTMLParser):
    """Headings (level, id, text), links, images and their enclosing link, table rows in order."""

    def __init__(self):
        super().__init__()
        self.headings, self.links, self.images, self.rows = [], [], [], []
        self._href, self._heading, self._row = None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("h1", "h2", "h3"):
            self._heading = [tag, a.get("id"), ""]
        elif tag == "a":
            self._href = a.get("href")
            self.links.append(self._href)
        elif tag == "img":
            self.images.append((a.get("src", ""), self._href))
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3") and self._heading:
            self.headings.append(tuple(self._heading))
            self._heading = None
        elif tag == "a":
            self._href = None
        elif tag == "tr" and self._row is not None:
            self.rows.append((self.headings[-1][2] if self.headings else "", [c.strip() for c in self._row]))
            self._row = None

    def handle_data(self, data):
        if self._heading:
            self._heading[2] += data
        if self._row:
            self._row[-1] += data


def _figure(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    io.save_figure(path, fig)
    plt.close(fig)


def _record(slug: str, exp: str, summary: dict, figures: list[str]) -> dict:
    return {"status": "complete", "experiment": exp, "config": {"n": 8, "seed": 0}, "seed": 0, "figures": figures,
            "git_commit": "0123456789abcdef", "versions": {"mlx": "0.0", "mlxinterp": "0.1.0"},
            "model": {"spec": slug, "slug": slug, "arch": "gemma3_text", "n_layers": 18, "d_model": 640, "n_heads": 4,
                      "n_kv_heads": 1, "vocab_size": 262144, "n_params": 268_098_176, "dtype": "float32",
                      "quantization": None, "weights_hash": "ab" * 32},
            "timings": {"seconds": 12.5}, "result": {"summary": summary, "details": list(range(100))}}


@pytest.fixture
def results(tmp_path) -> Path:
    out = tmp_path / "results"
    for slug in ("default", "org--small"):
        for exp, summary in (("validation", {"steering pass": True, "refusal score change [95% CI]": "+0.079 [+0.022, +0.136]"}),
                             ("patching", {"clean - corrupt": 18.98, "peak layer": 12})):
            io.write_json(out / slug / exp / "result.json", _record(slug, exp, summary, [f"{exp}.png"]))
            _figure(out / slug / exp / f"{exp}.png")
    (out / "default" / "broken").mkdir()
    (out / "default" / "broken" / "result.json").write_text("{ torn")
    return out


def test_html_is_standalone_with_sections_key_numbers_first_and_figure_links(results):
    docs = {"validation": "Five sanity checks.", "patching": "Where the answer is computed."}
    md_path, html_path = write_report(results, docs)
    page = _Page()
    page.feed(html_path.read_text())
    # standalone: every image embedded, nothing fetched from disk or network
    assert len(page.images) == 4 and all(src.startswith("data:image/png;base64,") for src, _ in page.images)
    assert "<script" not in html_path.read_text() and "<link" not in html_path.read_text()
    # every figure links to the result.json it came from, which exists
    for _, href in page.images:
        assert href and href.endswith("/result.json") and (results / href).is_file()
    # a section per model and per experiment, in the docs' order; anchors resolve
    h = [(lvl, text) for lvl, _, text in page.headings]
    assert ("h3", "Model: default") in h and ("h3", "Model: org--small") in h
    assert [t for lvl, t in h if lvl == "h2"][:3] == ["Models", "validation", "patching"]
    ids = {i for _, i, _ in page.headings if i}
    internal = [l for l in page.links if l and l.startswith("#")]
    assert internal and all(l[1:] in ids for l in internal)
    assert {"model-default", "validation", "patching"} <= ids
    # key numbers (with CIs) first in each experiment's table, models side by side, then result/config
    rows = [r for sec, r in page.rows if sec == "validation"]
    assert rows[0] == ["", "default", "org--small"]
    assert sorted(rows[1:3]) == [["refusal score change [95% CI]", "+0.079 [+0.022, +0.136]", "+0.079 [+0.022, +0.136]"],
                                 ["steering pass", "True", "True"]]  # (result.json sorts keys)
    assert [r[0] for r in rows[3:5]] == ["result", "config"]
    # the model section says what the model is
    model_rows = dict((r[0], r[1]) for sec, r in page.rows if sec == "Model: default" and len(r) == 2)
    assert model_rows["shape"].startswith("18 layers, d_model 640") and model_rows["weights hash"] == "ab" * 8
    # broken results are listed, not fatal
    assert "default/broken/result.json" in md_path.read_text()


def test_report_bytes_do_not_depend_on_timings(results):
    md1 = write_report(results)[0].read_bytes()
    rec = io.read_json(results / "default" / "validation" / "result.json")
    rec["timings"] = {"seconds": 999.0}
    io.write_json(results / "default" / "validation" / "result.json", rec)
    assert write_report(results)[0].read_bytes() == md1


def test_anchor_matches_github():
    assert anchor("Model: org--small") == "model-org--small"
    assert anchor("subspace_patching") == "subspace_patching"
    assert anchor("Unreadable or incomplete results") == "unreadable-or-incomplete-results"


def test_empty_results_dir(tmp_path):
    md, html = write_report(tmp_path)
    assert "No finished results yet." in md.read_text() and "<h1" in html.read_text()


def test_discussion_files_appear_under_their_experiment(results):
    (results / "discussion").mkdir()
    (results / "discussion" / "patching.md").write_text("A 270M model *cannot* show this.\n")
    md = write_report(results)[0].read_text()
    sec = md.split("## patching")[1]
    assert "### Discussion\n\nA 270M model *cannot* show this." in sec
    assert sec.index("### Discussion") < sec.index("### Figures")
    assert "### Discussion" not in md.split("## patching")[0]  # validation has none


def test_html_heading_ids_are_unique(results):
    (results / "discussion").mkdir()
    for exp in ("validation", "patching"):
        (results / "discussion" / f"{exp}.md").write_text("Words.\n")
    page = _Page()
    page.feed(write_report(results)[1].read_text())
    ids = [i for _, i, _ in page.headings if i]
    assert len(ids) == len(set(ids)) and {"discussion", "discussion-1", "figures", "figures-1"} <= set(ids)


def test_an_interval_with_a_warning_is_marked_and_the_note_says_why(tmp_path):
    """docs/statistics.md: a t-interval at n < 20 carries a warning; the report must not show it as a plain CI."""
    from mlxinterp.analysis.stats import mean_ci

    small, large = mean_ci([0.1, 0.4, 0.2, 0.5, 0.3]), mean_ci([0.1 * (i % 7) for i in range(40)])
    assert small.warning and not large.warning
    out = tmp_path / "results"
    io.write_json(out / "default" / "steering" / "result.json",
                  _record("default", "steering", {"lift": small, "baseline": large}, []))
    md = (write_report(out)[0]).read_text()
    lift_row = next(line for line in md.splitlines() if line.startswith("| lift |"))
    base_row = next(line for line in md.splitlines() if line.startswith("| baseline |"))
    assert lift_row.rstrip(" |").endswith("†") and "†" not in base_row
    assert f"† lift (default): {small.warning}" in md
    page = _Page()
    page.feed(write_report(out)[1].read_text())
    assert any(cells[:1] == ["lift"] and cells[1].endswith("†") for _, cells in page.rows)
