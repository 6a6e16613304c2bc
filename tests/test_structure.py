"""The layers hold: each folder imports only the ones below it, utils/ imports no project folder,
only the checkpoint store knows whether checkpoints are sharded, and a run pays only for the
libraries it uses (a run naming no experiment tracker imports neither MLflow nor W&B)."""

from __future__ import annotations

import ast
import json

import pytest
from helpers import IN_TEMPLATE, OF_THE_PROJECT, ROOT, USER_CODE, run_script, tiny_config, write_config

LAYERS = ["utils", "logger", "dataflow", "base", "trainer", "app"]
"""Bottom to top: a folder may import the folders before it in this list, never after."""
PUBLIC_APP = frozenset({"app.loading"})
"""What of the app user code may import: ``app.loading.load_model`` (a teacher, a frozen part; ``model/distill.py``).
The user's code (``helpers.USER_CODE``) may import the engine (base, trainer, dataflow, utils), and
the app imports it only by name."""


def imported(node: ast.AST) -> list[str]:
    """The absolute module names an ``import``/``from ... import`` statement names (none for other nodes)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []


def imports_of(folder: str, allowed: frozenset[str] = frozenset()) -> dict[str, set[str]]:
    """{project folder imported: the files importing it} for every file under ``folder`` (modules in ``allowed`` aside)."""
    folders = set(LAYERS) | set(USER_CODE)
    found: dict[str, set[str]] = {}
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            for name in (name for name in imported(node) if name not in allowed):
                top = name.split(".")[0]
                if top in folders and top != folder:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_each_layer_imports_only_the_layers_below_it():
    for position, folder in enumerate(LAYERS):
        above = set(LAYERS[position + 1 :]) | set(USER_CODE)
        wrong = {target: files for target, files in imports_of(folder).items() if target in above}
        assert not wrong, f"{folder}/ imports {wrong}"
    assert imports_of("utils") == {}, "utils/ holds leaf helpers: it imports no project folder"
    for folder in USER_CODE:
        assert "app" not in imports_of(folder, PUBLIC_APP), f"{folder}/ imports the app (beyond {sorted(PUBLIC_APP)})"


def test_only_the_checkpoint_store_asks_whether_checkpoints_are_sharded():
    asked = []
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in (".venv", "tests") or relative.parts[:2] == ("utils", "checkpoints"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
            if "sharded" in name.lower():
                asked.append(f"{relative}:{node.lineno} {name}")
    assert not asked, asked


def test_a_run_with_plain_metrics_imports_neither_dcp_nor_torchmetrics(tmp_path):
    config = tiny_config(tmp_path, epochs=1, limit_batches=1)
    config["metrics"] = ["fixtures.metric:accuracy", {"type": "fixtures.metric:Accuracy", "name": "exact"}, {"type": "fixtures.metric:top_k_acc", "args": {"k": 3}}]
    path = write_config(tmp_path, config)
    probe = "import sys, json, train; code = train.main(sys.argv[1:]); print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torchmetrics', 'sklearn', 'scipy', 'mlflow', 'wandb') or m.startswith('torch.distributed.checkpoint')))); sys.exit(code)"
    result = run_script("-c", probe, "-c", str(path), "--run-id", "plain")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def public_classes_without_docstring(folder: str) -> list[str]:
    missing = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and ast.get_docstring(node) is None:
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    return missing


def test_every_public_class_of_the_engine_says_what_it_is_for():
    missing = [entry for folder in LAYERS for entry in public_classes_without_docstring(folder)]
    assert not missing, f"public classes without a class docstring: {missing}"


ENTRY_SCRIPTS = [name for name in ("train.py", "test.py", "predict.py", "sweep.py", "runs.py", "new_project.py") if (ROOT / name).exists()]
"""A project made by new_project.py has all but new_project.py, which stays in the template."""


def calls_in(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            function = node.func
            names.add(function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", ""))
    return names


def test_every_entry_script_ends_through_one_function():
    """utils/ending.py decides exit codes, error lines and signals: a script runs its body through
    ``finish`` and leaves through ``leave``, and reports, exits or catches errors nowhere else."""
    for script in ENTRY_SCRIPTS:
        tree = ast.parse((ROOT / script).read_text())
        main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
        last = main.body[-1]
        assert isinstance(last, ast.Return) and "finish" in calls_in(last), f"{script}: main() must end with return finish(...)"
        guard = tree.body[-1]
        assert isinstance(guard, ast.If) and "leave" in calls_in(guard), f"{script}: its __main__ block must leave(...)"
        assert not calls_in(tree) & {"report", "exit_quietly", "exit_on_signals", "exit"}, f"{script} ends on its own: use utils.ending"


def test_no_checkpoint_file_name_is_spelled_outside_the_store():
    """Callers ask the store by name (``find_checkpoint(folder, "last")``); only utils/checkpoints/
    knows that a ``last`` is ``last.pth`` or a ``last.dcp`` snapshot."""
    import re

    spelled = []
    for folder in LAYERS:
        for path in (ROOT / folder).rglob("*.py"):
            if "checkpoints" in path.relative_to(ROOT).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"(best|last|epoch-\d+)\.(pth|dcp)", node.value):
                    spelled.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not spelled, f"checkpoint file names spelled outside utils/checkpoints/: {spelled}"


EXAMPLE_HELPERS = {"tests/stream_recorder.py": "the streams example's recorder, which leaves with it"}
"""Files beside the engine tests that belong to one example (copier.yml removes them with it)."""


@pytest.mark.skipif(not IN_TEMPLATE, reason="the template checks its own engine tests; tests you add may import your code")
def test_the_engine_tests_import_none_of_the_projects_code():
    """tests/*.py and tests/fixtures test the engine on their own fixtures, never importing ``model/`` or
    ``data_loader/`` (the examples, which a user replaces): a copy keeps them green whatever its code is.
    An import inside a test function after ``pytest.importorskip`` (a row of one example) is allowed;
    tests/conftest.py catches a config name that resolves there while a test runs."""
    engine = [p for p in (ROOT / "tests").glob("*.py") if p.name not in OF_THE_PROJECT]
    engine += list((ROOT / "tests" / "fixtures").rglob("*.py"))
    wrong = []
    for path in engine:
        rel = str(path.relative_to(ROOT))
        if rel in EXAMPLE_HELPERS:
            continue
        for node in ast.parse(path.read_text()).body:  # module level: what runs at import, in every copy
            wrong += [f"{rel}:{node.lineno} imports {name}" for name in imported(node) if name.split(".")[0] in USER_CODE]
    assert not wrong, wrong
