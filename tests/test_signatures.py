"""Calls that take many arguments name them: past their first one or two parameters these
functions take keywords only, so a call cannot pass two settings in each other's place.
Read from the source (no imports: the sweep module would import Ray)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# (file, function): how many parameters may be passed by position
KEYWORDS_AFTER = {
    ("harness/protocol/evaluate.py", "summarise"): 2,  # spec, method
    ("harness/cli/trial.py", "fresh_tree"): 2,  # dataset, method
    ("harness/sweep/experiment.py", "variant_trainable"): 1,  # variant
}


@pytest.mark.parametrize("where,name", KEYWORDS_AFTER)
def test_long_signatures_take_keywords(where, name):
    tree = ast.parse((REPO / where).read_text())
    (fn,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name]
    positional = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    assert len(positional) == KEYWORDS_AFTER[where, name], positional
    assert len(fn.args.kwonlyargs) >= 3 and fn.args.vararg is None
