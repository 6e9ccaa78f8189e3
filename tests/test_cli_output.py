"""What a person sees when the output is not a terminal: whole lines, and no special tokens in shown text."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_piped_output_is_not_wrapped_or_truncated(tiny_dirs, tmp_path):
    """Through a pipe, rich would wrap at 80 columns and cut cells with '…'; a long path must survive whole."""
    deep = tmp_path / ("a-rather-long-directory-name-" * 4) / "tiny-model"
    deep.parent.mkdir(parents=True)
    deep.symlink_to(tiny_dirs[("llama", None)], target_is_directory=True)
    exe = Path(sys.executable).with_name("mlxinterp")
    r = subprocess.run([str(exe), "info", "--model", str(deep)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    assert str(deep) in r.stdout and "…" not in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) > 80


@pytest.mark.real
def test_shown_text_hides_special_and_control_tokens(real_hm):
    from mlxinterp.cli.common import shown_text
    from mlxinterp.core.hooks import Generation

    ids = real_hm.tokenizer.encode(" Paris<start_of_image> is<end_of_turn><eos>", add_special_tokens=False)
    text = real_hm.tokenizer.decode(ids)
    assert "<start_of_image>" in text  # not flagged special by the GGUF tokenizer, yet markup for the model
    shown = shown_text(real_hm, Generation(text, ids, []))
    assert shown == " Paris is"
    assert shown_text(real_hm, Generation(" <table> stays", [], [])) == " <table> stays"  # HTML-like tokens are text
