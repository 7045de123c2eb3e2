"""The source notebooks read as analyses: no function definitions (plumbing lives in the library),
a short synthesis chapter, a papermill parameters cell and no stored outputs."""
from __future__ import annotations

import json
import re

import papermill
import pytest

from conftest import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
#: Most lines of code (non-blank, non-comment lines of code cells) the synthesis chapter may have.
MAX_SYNTHESIS_LINES = 120


def _code_cells(path):
    return [cell for cell in json.loads(path.read_text(encoding="utf-8"))["cells"] if cell["cell_type"] == "code"]


def code_lines(path) -> int:
    return sum(1 for cell in _code_cells(path) for line in "".join(cell["source"]).splitlines()
               if line.strip() and not line.strip().startswith("#"))


def test_the_six_chapters_are_there():
    assert [p.stem for p in NOTEBOOKS] == ["00_organism", "01_brain_alignment", "02_internal_states",
                                          "03_downstream_tasks", "04_phases", "05_validation"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_function_definitions(path):
    defined = [line for cell in _code_cells(path) for line in "".join(cell["source"]).splitlines()
               if re.match(r"\s*(async\s+)?def\s|\s*class\s", line)]
    assert not defined, f"{path.name} defines {defined}: move them into the library"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_and_no_stored_outputs(path):
    cells = _code_cells(path)
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: one cell tagged 'parameters' expected, found {len(tagged)}"
    stored = [c.get("id") for c in cells if c.get("outputs") or c.get("execution_count") is not None]
    assert not stored, f"{path.name}: stored outputs in cells {stored}"


def test_synthesis_chapter_is_short():
    lines = code_lines(REPO_ROOT / "notebooks" / "04_phases.ipynb")
    assert lines < MAX_SYNTHESIS_LINES, f"04_phases has {lines} lines of code (limit {MAX_SYNTHESIS_LINES})"


def test_code_line_count_ignores_blanks_and_comments(tmp_path):
    path = tmp_path / "x.ipynb"
    path.write_text(json.dumps({"cells": [
        {"cell_type": "code", "source": ["# a comment\n", "\n", "x = 1\n", "    # indented comment\n", "y = 2"]},
        {"cell_type": "markdown", "source": ["text = 3"]}]}))
    assert code_lines(path) == 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_is_annotated_so_types_are_checked(path):
    cell = next(c for c in _code_cells(path) if "parameters" in c["metadata"].get("tags", []))
    assigned = re.findall(r"(?m)^(\w+)\s*[:=]", "".join(cell["source"]))
    declared = papermill.inspect_notebook(str(path))
    # papermill's parser skips an assignment whose annotation it cannot read (e.g. `str | int`): none may be lost
    assert sorted(declared) == sorted(assigned)
    untyped = [name for name, info in declared.items() if info["inferred_type_name"] == "None"]
    assert not untyped, f"{path.name}: parameters without a type annotation: {untyped}"
