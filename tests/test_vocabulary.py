"""No tier-name literal outside the class registry (issue 12): the code names nodes by what the
experiment declares and classes through ``services.tier.classes``.

Allowed: the class registry (``services/tier/classes.py``), the teaching simulator's tables
keyed by class (``services/tier/simulator.py``); the class defaults files
(``services/<class>/tier.yaml``) and the example experiments are not code. Docstrings and
comments are prose and are not checked.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "models", "services", "netem", "orchestrator", "docker")
ALLOWED = {"services/tier/classes.py", "services/tier/simulator.py"}
# "mcu", "EDGE", "edge/fp32", "@cloud/llm", "edge-1": a tier name as a value, a route or a node
TIER_LITERAL = re.compile(r"^@?(mcu|edge|cloud)(/|-\d|=|$)", re.IGNORECASE)


def tier_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant in ``source`` that is a tier name, docstrings
    excluded."""
    tree = ast.parse(source)
    docstrings = {
        id(body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and (body := node.body) and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in docstrings and TIER_LITERAL.match(node.value.strip())
    ]


def test_the_scanner_finds_what_it_is_meant_to() -> None:
    found = tier_literals('"""mcu docs"""\nA = "EDGE/fp32"\nB = {"mcu": 1}\nC = "edged"\n'
                          'D = f"{x}/edge"\nE = "@cloud/llm"\nF = "edge=http://edge:8000"\n')
    assert sorted(text for _, text in found) == [
        "@cloud/llm", "EDGE/fp32", "edge=http://edge:8000", "mcu"]


def test_no_tier_name_literal_outside_the_class_registry() -> None:
    hits = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel in ALLOWED:
                continue
            hits += [f"{rel}:{line}: {text!r}" for line, text in tier_literals(path.read_text())]
    assert not hits, "tier names outside services/tier/classes.py:\n" + "\n".join(hits)
