"""docs/ARCHITECTURE.md's worked example (a new objective, end to end) is applied and run, so the recipe cannot drift.

Each ```python block of the page's "Worked example" that follows a `<!-- recipe: file=... after="..." -->` comment
(or `replace="..."`, or `append`) is inserted into a copy of the package at that line; the block after
`<!-- recipe: run -->` then runs on the tiny preset in a fresh process that imports the patched copy.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PAGE = REPO_ROOT / "docs" / "ARCHITECTURE.md"
RECIPE = re.compile(r"<!-- recipe: (?P<where>.*?) -->\n```python\n(?P<code>.*?)```\n", re.DOTALL)


def recipe_blocks(text: str) -> list[tuple[dict[str, str], str]]:
    """`(where, code)` of every recipe block of the page, in order; `where` from the comment's `key=value` words."""
    blocks = []
    for match in RECIPE.finditer(text):
        words = shlex.split(match["where"])
        where = dict(word.split("=", 1) if "=" in word else (word, "") for word in words)
        blocks.append((where, match["code"]))
    return blocks


def apply_block(package_root: Path, where: dict[str, str], code: str) -> None:
    """Insert `code` into the copied file after (or instead of) its anchor line, or at its end."""
    path = package_root / where["file"]
    source = path.read_text()
    if "append" in where:
        path.write_text(source + code)
        return
    anchor = where.get("after", where.get("replace"))
    lines = source.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.rstrip("\n") == anchor]
    assert len(hits) == 1, f"the recipe's anchor {anchor!r} is {len(hits)} times in {where['file']}: the page drifted"
    at = hits[0]
    lines[at : at + 1] = [lines[at], code] if "after" in where else [code]
    path.write_text("".join(lines))


@pytest.mark.slow
def test_the_worked_objective_of_the_architecture_page_trains(tmp_path):
    blocks = recipe_blocks(PAGE.read_text())
    edits = [(where, code) for where, code in blocks if "run" not in where]
    runs = [code for where, code in blocks if "run" in where]
    files = {where["file"] for where, _ in edits}
    assert len(runs) == 1 and len(edits) >= 7, "the worked example lost a step"
    assert {"modeling_opt_tri/configuration_opt_tri.py", "modeling_opt_tri/modeling_opt_tri_phases.py",
            "modeling_opt_tri/modeling_opt_tri_losses.py", "modeling_opt_tri/modeling_opt_tri.py",
            "modeling_opt_tri/modeling_opt_tri_outputs.py"} <= files  # the five steps' files
    from modeling_opt_tri import PRETRAINING_OBJECTIVES

    assert "cross_prediction" not in PRETRAINING_OBJECTIVES  # the example is not part of the library

    shutil.copytree(REPO_ROOT / "modeling_opt_tri", tmp_path / "modeling_opt_tri",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "configuration" / "tiny", tmp_path / "configuration" / "tiny")
    for where, code in edits:
        apply_block(tmp_path, where, code)
    (tmp_path / "try_it.py").write_text(
        "import modeling_opt_tri, pathlib\n"
        f"assert pathlib.Path(modeling_opt_tri.__file__).parent == pathlib.Path({str(tmp_path / 'modeling_opt_tri')!r})\n"
        + runs[0]
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "try_it.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    losses = [float(x) for x in re.findall(r"cross_prediction ([0-9.]+), head gradient norm [0-9.]*[1-9]", run.stdout)]
    assert len(losses) == 8 and losses[-1] < losses[0], run.stdout
