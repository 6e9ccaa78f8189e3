"""report.md and report.html, rebuilt from whatever result.json files exist.

The report is a view, never a source of truth: it is regenerated after every
run (and after an interruption) from `<out>/<model>/<experiment>/result.json`,
so it can always be rebuilt with `write_report(out)`. One section per
experiment, models side by side, headline numbers first, then figures; every
figure links to the JSON it came from. The HTML is standalone (figures are
embedded as base64 data URIs) so it can be mailed or attached as one file; it
is rendered from the same Markdown with markdown-it (already a rich dependency).

Layout: contents; one section per model (what it is: spec, shape, dtype, weights
hash, versions; links to its experiments); one section per experiment (key
numbers with their CIs first, models side by side; then result.json and config;
then figures, each a link to its JSON). Nothing run-dependent (timings, dates)
goes in, so a resumed run's report is byte-identical to an uninterrupted one's.
Headings get GitHub-style anchors in the HTML too, so the same links work in both.

Discussion: `<out>/discussion/<experiment>.md`, when present, is written by
people (what the numbers mean, caveats, what the model cannot show); the suite
never writes or deletes it, and the report shows it under the experiment's
numbers. Numbers quoted there must come from the result.json beside it.
"""
from __future__ import annotations

import base64
import html as _html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from markdown_it import MarkdownIt

from mlxinterp.core import io
from mlxinterp.core.errors import ResultsError
from mlxinterp.core.interval import format_interval, is_interval
from mlxinterp.suite.quantcheck import read_checks

MAX_FALLBACK_NUMBERS = 12
WARNING_MARK = "†"  # after an interval that carries a warning (e.g. "n < 20: t-interval"); the note says which
DISCUSSION_DIR = "discussion"
_CSS = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:1em 0;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}th{background:#f4f4f4;text-align:left}
td{font-variant-numeric:tabular-nums}td:first-child{font-weight:500}tr:nth-child(even) td{background:#fafafa}
td img{height:auto;display:block}code{background:#f4f4f4;padding:0 .2em}
a{color:#0550ae}"""
_HEADING = re.compile(r"<h([23])>(.*?)</h\1>")


@dataclass
class Found:
    """The result files under an output dir, grouped by experiment then model slug."""

    by_exp: dict[str, dict[str, dict]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)


def collect(out: Path) -> Found:
    """Read every `<slug>/<experiment>/result.json`; note (not fail on) the broken ones."""
    found = Found()
    for path in sorted(out.glob("*/*/result.json")):
        rel = path.relative_to(out).as_posix()
        try:
            record = io.read_json(path)
        except ResultsError:
            found.unreadable.append(rel)
            continue
        if not isinstance(record, dict) or record.get("status") != "complete":
            found.unreadable.append(rel)
            continue
        slug, exp = path.parent.parent.name, path.parent.name
        found.by_exp.setdefault(exp, {})[slug] = record
    return found


def key_numbers(result: dict) -> dict[str, object]:
    """Headline values by label: `result["summary"]` when the experiment gives one (intervals rendered as
    text, keys shown by their `result["labels"]`), else top-level scalars. An interval weaker than the
    policy wants (its `warning`, docs/statistics.md) is marked with WARNING_MARK; `interval_warnings` says why."""
    summary = result.get("summary")
    if isinstance(summary, dict):
        labels = result.get("labels") or {}
        shown = {k: _interval_text(v) if is_interval(v) else v for k, v in summary.items()}
        return {labels.get(k, k): v for k, v in shown.items() if _is_scalar(v)}
    scalars = {k: v for k, v in result.items() if _is_scalar(v)}
    return dict(list(scalars.items())[:MAX_FALLBACK_NUMBERS])


def interval_warnings(result: dict) -> dict[str, str]:
    """Label -> warning of each headline interval that carries one (shown under the key numbers)."""
    summary = result.get("summary")
    if not isinstance(summary, dict):
        return {}
    labels = result.get("labels") or {}
    return {labels.get(k, k): str(v["warning"]) for k, v in summary.items() if is_interval(v) and v.get("warning")}


def _interval_text(v) -> str:
    text = format_interval(v, ".4g", counts=True)
    return f"{text} {WARNING_MARK}" if v.get("warning") else text


def _is_scalar(v: object) -> bool:
    return v is None or isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 80)


def _fmt(v: object) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return _cell(str(v))


def _cell(text: str) -> str:
    """Table cells cannot hold pipes or newlines."""
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _link(rel: str) -> str:
    return quote(rel)


class _Images:
    """Image references: a relative path for Markdown; for standalone HTML a short placeholder that
    `embed_into` replaces with the figure's data URI after rendering (markdown-it checks a link destination
    character by character in Python: a few hundred kB of base64 per figure took seconds per report)."""

    def __init__(self, out: Path, embed: bool):
        self.out, self.embed = out, embed
        self.placeholders: dict[str, str] = {}

    def src(self, rel: str) -> str:
        if not self.embed:
            return _link(rel)
        key = f"mlxinterp-figure-{len(self.placeholders)}"
        self.placeholders[key] = rel
        return key

    def embed_into(self, html: str) -> str:
        """`html` with each placeholder's src="..." replaced by the PNG as a data URI."""
        def data_uri(m: re.Match) -> str:
            data = (self.out / self.placeholders[m[1]]).read_bytes()
            return 'src="data:image/png;base64,' + base64.b64encode(data).decode("ascii") + '"'
        return re.sub(r'src="(mlxinterp-figure-\d+)"', data_uri, html)


def _section(name: str, doc: str, models: dict[str, dict], slugs: list[str], images: _Images) -> list[str]:
    """One experiment: key numbers table, provenance rows, then figures side by side."""
    lines = [f"## {name}", ""]
    if doc:
        lines += [doc, ""]
    metrics: dict[str, None] = {}
    for slug in slugs:
        if slug in models:
            metrics.update(dict.fromkeys(key_numbers(models[slug].get("result") or {})))
    rows = [[_cell(m)] + [_fmt(key_numbers(models[s].get("result") or {}).get(m)) if s in models else "" for s in slugs]
            for m in metrics]
    rows.append(["result"] + [f"[result.json]({_link(f'{s}/{name}/result.json')})" if s in models else "not run"
                              for s in slugs])
    rows.append(["config"] + [_cell(_config_text(models[s])) if s in models else "" for s in slugs])
    lines += _table([""] + [_cell(s) for s in slugs], rows) + [""]
    lines += _warning_notes(models, slugs)
    lines += _quant_checks(images.out, name)
    lines += _discussion(images.out / DISCUSSION_DIR / f"{name}.md")
    lines += _figures(name, models, slugs, images)
    return lines


def _warning_notes(models: dict[str, dict], slugs: list[str]) -> list[str]:
    """One line per marked interval: which number, which model, and why its interval is weaker."""
    notes = [f"{WARNING_MARK} {_cell(label)} ({_cell(s)}): {_cell(warning)}  "
             for s in slugs if s in models
             for label, warning in interval_warnings(models[s].get("result") or {}).items()]
    return notes + [""] if notes else []


def _quant_checks(out: Path, name: str) -> list[str]:
    """`--quant-check` verdicts per primary metric (suite/quantcheck.py), one table per checked model."""
    lines = []
    for slug, rec in read_checks(out, name).items():
        rows = [[_cell(m), _value_text(v["stored"]), _value_text(v["quantized"]), v["verdict"]]
                for m, v in rec.get("metrics", {}).items()]
        lines += [f"### Quantization check: {_cell(slug)} vs {_cell(rec.get('quantized', '?'))}", "",
                  "Rules (fixed in advance): " + "; ".join(f"{k}: {r}" for k, r in rec.get("rules", {}).items()), ""]
        lines += _table(["primary metric", "stored", rec.get("variant", "quantized"), "verdict"], rows) + [""]
    return lines


def _value_text(v: object) -> str:
    return _cell(format_interval(v, ".4g")) if isinstance(v, dict) else _fmt(v)


def _discussion(path: Path) -> list[str]:
    """The people-written discussion of one experiment, if there is one (never generated)."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8").strip()
    return ["### Discussion", "", text, ""] if text else []


def _config_text(record: dict) -> str:
    cfg = record.get("config") or {}
    return ", ".join(f"{k}={v}" for k, v in cfg.items())


def _figures(name: str, models: dict[str, dict], slugs: list[str], images: _Images) -> list[str]:
    figs: dict[str, None] = {}
    for s in slugs:
        if s in models:
            figs.update(dict.fromkeys(models[s].get("figures") or []))
    rows = []
    for fig in figs:
        cells = [_cell(Path(fig).stem)]
        for s in slugs:
            rel = f"{s}/{name}/{fig}"
            ok = s in models and fig in (models[s].get("figures") or []) and (images.out / rel).exists()
            cells.append(f"[![{_cell(s)} {_cell(Path(fig).stem)}]({images.src(rel)})]"
                         f"({_link(f'{s}/{name}/result.json')})" if ok else "")
        rows.append(cells)
    if not rows:
        return []
    return ["### Figures", ""] + _table([""] + [_cell(s) for s in slugs], rows) + [""]


def anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _model_heading(slug: str) -> str:
    return f"Model: {slug}"


def _contents(order: list[str], slugs: list[str]) -> list[str]:
    models = ", ".join(f"[{_cell(s)}](#{anchor(_model_heading(s))})" for s in slugs)
    exps = ", ".join(f"[{_cell(e)}](#{anchor(e)})" for e in order)
    return [f"Models: {models}  ", f"Experiments: {exps}", ""]


def _model_sections(found: Found, order: list[str], slugs: list[str]) -> list[str]:
    """One section per model: what it is (from the first record that names it) and its experiments."""
    lines = ["## Models", ""]
    for slug in slugs:
        recs = [(e, found.by_exp[e][slug]) for e in order if slug in found.by_exp[e]]
        rec = recs[0][1]
        m, v = rec.get("model") or {}, rec.get("versions") or {}
        shape = (f"{m.get('n_layers')} layers, d_model {m.get('d_model')}, {m.get('n_heads')} heads "
                 f"({m.get('n_kv_heads')} KV), vocab {m.get('vocab_size')}") if m.get("n_layers") else "—"
        quant = m.get("quantization")
        rows = [["spec", f"`{_cell(str(m.get('spec', '')))}`"], ["architecture", _cell(str(m.get("arch", "—")))],
                ["shape", shape],
                ["parameters", f"{m['n_params'] / 1e6:.0f} M" if isinstance(m.get("n_params"), (int, float)) else "—"],
                ["compute dtype", _cell(str(m.get("dtype", "—")) + (f", quantized {quant}" if quant else ""))],
                ["weights hash", f"`{str(m.get('weights_hash', ''))[:16]}`"],
                ["versions", _cell(", ".join(f"{k} {val}" for k, val in sorted(v.items()) if val))],
                ["git commit", f"`{str(rec.get('git_commit') or '—')[:12]}`"],
                ["experiments", ", ".join(f"[{_cell(e)}](#{anchor(e)}) ([json]({_link(f'{slug}/{e}/result.json')}))"
                                          for e, _ in recs)]]
        lines += [f"### {_model_heading(_cell(slug))}", ""] + _table(["field", "value"], rows) + [""]
    return lines


def render_markdown(out: Path, docs: dict[str, str] | None = None, images: _Images | None = None) -> str:
    """The whole report as Markdown, figures as relative links (or `images`' placeholders, for the HTML)."""
    found, docs = collect(out), docs or {}
    order = [e for e in docs if e in found.by_exp] + sorted(e for e in found.by_exp if e not in docs)
    slugs = sorted({s for models in found.by_exp.values() for s in models})
    lines = ["# mlxinterp results", ""]
    if not order:
        lines += ["No finished results yet.", ""]
    else:
        lines += _contents(order, slugs) + _model_sections(found, order, slugs)
    images = images or _Images(out, embed=False)
    for exp in order:
        lines += _section(exp, docs.get(exp, ""), found.by_exp[exp], slugs, images)
    if found.unreadable:
        lines += ["## Unreadable or incomplete results", ""] + [f"- `{r}`" for r in found.unreadable] + [""]
    return "\n".join(lines)


def render_html(out: Path, docs: dict[str, str] | None = None) -> str:
    """Standalone HTML: the Markdown report with figures embedded, rendered by markdown-it."""
    images = _Images(out, embed=True)
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(render_markdown(out, docs, images))
    seen: dict[str, int] = {}

    def with_id(m: re.Match) -> str:  # GitHub's rule: a repeated anchor gets -1, -2, ...
        a = anchor(_html.unescape(re.sub("<[^>]+>", "", m[2])))
        n, seen[a] = seen.get(a, 0), seen.get(a, 0) + 1
        return f'<h{m[1]} id="{a}{f"-{n}" if n else ""}">{m[2]}</h{m[1]}>'

    body = images.embed_into(_HEADING.sub(with_id, body))
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>mlxinterp results</title>'
            f"<style>{_CSS}{_figure_width(out)}</style></head>\n<body>\n{body}</body></html>\n")


def _figure_width(out: Path) -> str:
    """Figures share the page width between the models shown side by side."""
    n = max(1, len({s for models in collect(out).by_exp.values() for s in models}))
    return f"td img{{max-width:min({1250 // n}px,{85 // n}vw)}}"


def write_report(out: str | os.PathLike, docs: dict[str, str] | None = None) -> tuple[Path, Path]:
    """Write `<out>/report.md` and `<out>/report.html` atomically; return their paths."""
    out = Path(out)
    md = io.atomic_write_text(out / "report.md", render_markdown(out, docs) + "\n")
    html = io.atomic_write_text(out / "report.html", render_html(out, docs))
    return md, html
