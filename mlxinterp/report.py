"""report.md and report.html, rebuilt from whatever result.json files exist.

The report is a view, never a source of truth: it is regenerated after every
run (and after an interruption) from `<out>/<model>/<experiment>/result.json`,
so it can always be rebuilt with `write_report(out)`. One section per
experiment, models side by side, headline numbers first, then figures; every
figure links to the JSON it came from. The HTML is standalone (figures are
embedded as base64 data URIs) so it can be mailed or attached as one file; it
is rendered from the same Markdown with markdown-it (already a rich dependency).
"""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from markdown_it import MarkdownIt

from mlxinterp import io
from mlxinterp.errors import ResultsError

MAX_FALLBACK_NUMBERS = 12
_CSS = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}
th{background:#f4f4f4}td img{max-width:600px;height:auto}code{background:#f4f4f4;padding:0 .2em}"""


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
    """Headline scalars: `result["summary"]` when the experiment gives one, else top-level scalars."""
    summary = result.get("summary")
    if isinstance(summary, dict):
        return {k: v for k, v in summary.items() if _is_scalar(v)}
    scalars = {k: v for k, v in result.items() if _is_scalar(v)}
    return dict(list(scalars.items())[:MAX_FALLBACK_NUMBERS])


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
    """Image references: a relative path for Markdown, a data URI for standalone HTML."""

    def __init__(self, out: Path, embed: bool):
        self.out, self.embed = out, embed

    def src(self, rel: str) -> str:
        if not self.embed:
            return _link(rel)
        data = (self.out / rel).read_bytes()
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


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
    lines += _figures(name, models, slugs, images)
    return lines


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


def _models_table(found: Found, slugs: list[str]) -> list[str]:
    """Which model each column is: spec and weights hash, from the first record that names it."""
    info: dict[str, dict] = {}
    for models in found.by_exp.values():
        for slug, rec in models.items():
            info.setdefault(slug, rec.get("model") or {})
    rows = [[_cell(s), f"`{_cell(str(info[s].get('spec', '')))}`", f"`{str(info[s].get('weights_hash', ''))[:16]}`"]
            for s in slugs]
    return _table(["model", "spec", "weights hash"], rows) + [""]


def render_markdown(out: Path, docs: dict[str, str] | None = None, embed: bool = False) -> str:
    """The whole report as Markdown; `embed` inlines figures (for the HTML version)."""
    found, docs = collect(out), docs or {}
    order = [e for e in docs if e in found.by_exp] + sorted(e for e in found.by_exp if e not in docs)
    slugs = sorted({s for models in found.by_exp.values() for s in models})
    lines = ["# mlxinterp results", ""]
    if not order:
        lines += ["No finished results yet.", ""]
    else:
        lines += _models_table(found, slugs)
    images = _Images(out, embed)
    for exp in order:
        lines += _section(exp, docs.get(exp, ""), found.by_exp[exp], slugs, images)
    if found.unreadable:
        lines += ["## Unreadable or incomplete results", ""] + [f"- `{r}`" for r in found.unreadable] + [""]
    return "\n".join(lines)


def render_html(out: Path, docs: dict[str, str] | None = None) -> str:
    """Standalone HTML: the Markdown report with figures embedded, rendered by markdown-it."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(render_markdown(out, docs, embed=True))
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>mlxinterp results</title>'
            f"<style>{_CSS}</style></head>\n<body>\n{body}</body></html>\n")


def write_report(out: str | os.PathLike, docs: dict[str, str] | None = None) -> tuple[Path, Path]:
    """Write `<out>/report.md` and `<out>/report.html` atomically; return their paths."""
    out = Path(out)
    md = io.atomic_write_text(out / "report.md", render_markdown(out, docs) + "\n")
    html = io.atomic_write_text(out / "report.html", render_html(out, docs))
    return md, html
