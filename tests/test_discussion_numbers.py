"""Every number in a results discussion comes from a result file.

results/discussion/<exp>.md discusses results/default/<exp>/result.json (and any other
result.json it names by path). Each number written in the discussion must be found in those
files: as a value rounded to the digits shown, as a percentage of a value, or (integers) as a
value, a count, a list length or a number inside a key or a string. Numbers quoted from a
source (a paper, a write-up) go inside double quotes, "like 66 %", and are not checked;
so are numbers that are part of a name (270M, Qwen2.5-3B, L15; but "k = 50" is checked) and the years
of citations (Arditi et al. 2024, ICLR 2025).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DISCUSSION = ROOT / "results" / "discussion"
RESULTS = ROOT / "results" / "default"

# a number not glued to letters, '_', '.', '/' or '-' on its left (names like gemma3, Qwen2.5-3B, L15, 4bit);
# a leading minus sign (or Unicode minus) is part of the number
NUMBER = re.compile(r"(?<![\w.])([-\u2212+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)(?![\w])")
QUOTED = re.compile(r'"[^"\n]*"|\u201c[^\u201d\n]*\u201d|`[^`\n]*`')
CITATION = re.compile(r"(et al\.,?|ICLR|NeurIPS|ICML|ACL|EMNLP|COLM|arXiv:?)\s*\(?(19|20)\d\d[a-z]?\)?")
JSON_PATH = re.compile(r"results/default/([A-Za-z0-9_.@+-]+)/result\.json")


def numbers_in_text(text: str) -> list[str]:
    """The numbers a reader sees, outside quotations and code spans."""
    text = QUOTED.sub(" ", text)
    text = CITATION.sub(" ", text)  # "Arditi et al. 2024", "ICLR 2025": years of citations
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets (file names) are not claims
    return [m.replace("\u2212", "-") for m in NUMBER.findall(text)]


def json_values(obj, floats: list[float], ints: set[int]) -> None:
    """Collect every number of a JSON tree: values, list lengths, and numbers inside keys and strings."""
    if isinstance(obj, bool):
        ints.add(int(obj))
    elif isinstance(obj, (int, float)):
        floats.append(float(obj))
        if float(obj).is_integer():
            ints.add(int(obj))
    elif isinstance(obj, str):
        for m in re.findall(r"-?\d+(?:\.\d+)?", obj):
            floats.append(float(m))
            if float(m).is_integer():
                ints.add(int(float(m)))
    elif isinstance(obj, dict):
        ints.add(len(obj))
        for k, v in obj.items():
            json_values(k, floats, ints)
            json_values(v, floats, ints)
    elif isinstance(obj, list):
        ints.add(len(obj))
        for v in obj:
            json_values(v, floats, ints)


def found(token: str, floats: list[float], ints: set[int]) -> bool:
    """True when `token` (as written) is some JSON value rounded to its digits, or that value in %."""
    x = float(token)
    decimals = len(token.split(".")[1]) if "." in token and "e" not in token else 0
    if decimals == 0 and x.is_integer() and int(x) in ints | {-i for i in ints}:
        return True
    tol = 0.5 * 10 ** -decimals + 1e-9
    for v in floats:
        for scaled in (v, 100 * v, -v, -100 * v):
            if abs(scaled - x) <= tol:
                return True
    return False


def discussions() -> list[Path]:
    return sorted(DISCUSSION.glob("*.md"))


@pytest.mark.parametrize("md", discussions(), ids=lambda p: p.stem)
def test_every_number_in_a_discussion_is_in_its_result_files(md: Path):
    text = md.read_text()
    names = {md.stem, *JSON_PATH.findall(text)}
    files = [RESULTS / n / "result.json" for n in sorted(names)]
    present = [f for f in files if f.exists()]
    assert present, f"{md.name}: none of its result files exist: {[str(f) for f in files]}"
    floats: list[float] = []
    ints: set[int] = set()
    for f in present:
        json_values(json.loads(f.read_text()), floats, ints)
    missing = sorted({t for t in numbers_in_text(text) if not found(t, floats, ints)}, key=lambda t: abs(float(t)))
    assert not missing, (f"{md.name}: {len(missing)} numbers are in no result file it names "
                         f"({', '.join(str(p.relative_to(ROOT)) for p in present)}): {missing[:25]}")


def test_number_extraction_and_matching():
    """The checker itself: rounding, percentages, signs, quotations and names."""
    floats, ints = [0.41234, -0.0552, 17.0], {17, 27}
    assert found("0.41", floats, ints) and found("41.2", floats, ints) and found("-0.055", floats, ints)
    assert found("17", floats, ints) and not found("0.42", floats, ints) and not found("18", floats, ints)
    text = ('Gemma 3 270M at L15: 41.2 % [30.1, 52.0], "up to 66 %" in the paper (Arditi et al. 2024), '
            '`n=48`, \u22120.055')
    assert numbers_in_text(text) == ["3", "41.2", "30.1", "52.0", "-0.055"]
