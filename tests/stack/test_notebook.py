"""The README's notebook snippet, verbatim, in a real Jupyter kernel against a running stack.

A notebook's kernel already runs an event loop, where ``asyncio.run`` refuses to start (the
first version left an empty records.csv there). The snippet is read from README.md, so the
README cannot drift from what works.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from stack_testutil import REPO, quick_experiment, require_models

from orchestrator.experiment import load_experiment
from orchestrator.stack import manager

pytestmark = pytest.mark.slow


def readme_notebook_snippet() -> str:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    snippet = [b for b in blocks if "run_on_running_stack" in b]
    assert snippet, "README.md has no python block using run_on_running_stack"
    return snippet[0]


def test_readme_snippet_runs_in_a_jupyter_kernel(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    require_models()
    state_dir = tmp_path / "state"
    exp = load_experiment(quick_experiment(tmp_path, n=8))
    manager.up(exp, state_dir, prometheus="off")
    try:
        setup = (f"import os\nos.chdir({str(REPO)!r})\n"
                 f"os.environ['EDGEBED_STATE_DIR'] = {str(state_dir)!r}\n")
        check = ("import json\n"
                 "print(json.dumps({'n': len(res.records), 'ok': int((res.records.outcome == "
                 "'ok').sum()), 'policies': list(res.summary.policy), 'dir': str(res.run_dir)}))")
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(setup),
                    nbformat.v4.new_code_cell(readme_notebook_snippet()),
                    nbformat.v4.new_code_cell(check)]
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        manager.down(state_dir)
    out = [o for o in nb.cells[2].outputs if o.get("name") == "stdout"]
    assert out, nb.cells[1].outputs
    result = json.loads(out[0]["text"].strip().splitlines()[-1])
    n_policies = len(result["policies"])
    assert n_policies == 6 and result["n"] == 10 * n_policies, result
    assert result["ok"] >= 0.9 * result["n"], result
    run_dir = Path(result["dir"])
    if not run_dir.is_absolute():
        run_dir = REPO / run_dir
    assert (run_dir / "records.csv").read_text().count("\n") == result["n"] + 1
    info = json.loads((run_dir / "run.json").read_text())
    assert info["state"] == "finished"
    if run_dir.resolve().is_relative_to(REPO / "runs"):
        shutil.rmtree(run_dir)
