"""The library's layers hold: import-linter's contract passes, can fail, and imports sit at module tops."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "lib" / "triphase"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
#: Dependencies a module may import inside a function: optional extras, imported only when used, and the
#: heavy ones (seconds to import) that listing, checks and cached re-runs never need.
OPTIONAL_DEPENDENCIES = {"lm_eval", "openneuro", "nltk", "distributed", "dask_jobqueue"}
HEAVY_DEPENDENCIES = {"torch", "transformers", "tokenizers"}
#: cli.py defers its subcommands' imports (torch, papermill) so that `triphase --help` stays instant.
DEFERRING_MODULES = {"cli.py"}


def lint_imports(cwd: Path, pythonpath: Path | None = None, contract: str | None = None):
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    command = [str(LINT_IMPORTS), "--no-cache"] + (["--contract", contract] if contract else [])
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


def test_layer_contract_is_kept():
    result = lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, line, contract", [
    # an upward import: models may not import runs
    ("models/hub.py", "import triphase.runs.config", "layers"),
    # siblings of one layer are independent
    ("brain/statistics.py", "import triphase.tasks.scoring", "layers"),
    # a cycle inside a package: integrity already imports hub
    ("models/hub.py", "import triphase.models.integrity", "acyclic"),
])
def test_contract_breaks_on_a_planted_violation(tmp_path, module, line, contract):
    shutil.copytree(PACKAGE, tmp_path / "lib" / "triphase", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "lib" / "triphase" / module
    source = target.read_text()
    anchor = "from __future__ import annotations\n"
    assert lint_imports(tmp_path, pythonpath=tmp_path / "lib", contract=contract).returncode == 0
    target.write_text(source.replace(anchor, anchor + line + "  # planted\n", 1))
    result = lint_imports(tmp_path, pythonpath=tmp_path / "lib", contract=contract)
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout[-2000:]


def _deferred_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module, has a reason comment) of every import inside a function body."""
    source = path.read_text()
    lines = source.splitlines()
    found = []
    functions = [n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inside = {id(node): node for f in functions for node in ast.walk(f)}
    for node in inside.values():
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            # the reason: a comment on the import's line or on the line above its block of imports
            above = node.lineno - 2
            while above >= 0 and lines[above].strip().startswith(("import ", "from ")):
                above -= 1
            has_reason = "#" in lines[node.lineno - 1] or (above >= 0 and "#" in lines[above])
            found.append((node.lineno, module or "", has_reason))
    return found


def test_imports_sit_at_module_tops():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for lineno, module, has_reason in _deferred_imports(path):
            allowed = module.split(".")[0] in OPTIONAL_DEPENDENCIES | HEAVY_DEPENDENCIES or rel in DEFERRING_MODULES \
                or (rel == "__init__.py" and module == "triphase")
            if not (allowed and has_reason):
                offenders.append(f"{rel}:{lineno} imports {module} inside a function"
                                 + ("" if allowed else " (neither optional nor heavy)")
                                 + ("" if has_reason else " without a reason comment"))
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("module, absent", [
    ("triphase", ("torch", "transformers", "papermill")),
    # the configuration, the preflight and the series registry: `triphase check` and `triphase models`
    ("triphase.runs.preflight", ("torch", "transformers")),
    # the synthesis chapter only reads tables; the sweeps' cached re-runs load no weights
    ("triphase.phases.synthesis", ("torch", "transformers")),
    ("triphase.brain.sweep", ("torch", "transformers")),
])
def test_light_paths_do_not_import_torch(module, absent):
    code = f"import sys, {module}; print(sorted(m for m in {absent!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
