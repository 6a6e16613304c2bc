"""Issue 40, shipping a model: the export takes raw inputs and returns final predictions (the serving
transforms inside), as .pt2 and .onnx, loads without this project, and is checked against the
checkpoint's model; the numbers here are recomputed independently of app/export.py. The runs are
the engine tests' own regression (``tests/fixtures/regression.py``: raw diabetes measurements, a
scaler as serving transforms), never the project's diabetes example."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import FOLDER
from fixtures.regression import TinyRegressor, raw_features_and_target
from fixtures.regression import held_out as held_out_split
from helpers import ROOT, run_here, save_crafted

from app.export import ATOL, RTOL, export
from base.serving import ServedModel
from utils.errors import UserError

DOCS = ROOT / "docs" / "export.md"
REGRESSION = FOLDER / "regression.json"
"""The fixture experiment; its runs land in ``<save_dir>/tiny_regression/<run id>``."""


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory) -> Path:
    """The fixture regression trained for an epoch, exporting both formats when it finishes."""
    save_dir = tmp_path_factory.mktemp("export")
    result = run_here(
        "train.py", "-c", REGRESSION, "--run-id", "r", f"trainer.save_dir={save_dir}", "trainer.epochs=1",
        "trainer.tensorboard=false", "trainer.export=[pt2, onnx]",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return save_dir / "tiny_regression" / "r"


def raw_test_features() -> np.ndarray:
    """The 88 test patients' raw measurements (the file as read, not through the loader)."""
    features, target = raw_features_and_target()
    return features[held_out_split(len(target), training=False)].numpy()


def snippets() -> dict[str, str]:
    """The loading snippets of docs/export.md, by format."""
    text = DOCS.read_text()
    found = dict(re.findall(r"<!-- snippet: (\w+) -->\n```python\n(.*?)```", text, re.S))
    assert set(found) == {"pt2", "onnx"}, found.keys()
    return found


def eager_in_original_units(run_dir: Path, features: np.ndarray) -> np.ndarray:
    """The checkpoint's model by hand: standardise with the saved scaler, the MLP, un-standardise."""
    checkpoint = torch.load(run_dir / "checkpoints" / "best.pth", weights_only=True)
    scaler = checkpoint["serving"]
    model = TinyRegressor(**checkpoint["config"]["arch"]["args"]).eval()
    model.load_state_dict(checkpoint["model"])
    with torch.no_grad():
        scaled = (torch.from_numpy(features) - scaler["feature_mean"]) / scaler["feature_std"]
        return (model(scaled) * scaler["target_std"] + scaler["target_mean"]).numpy()


def test_both_exports_load_without_the_project_and_return_predict_py_in_original_units(regression_run, tmp_path):
    """The done-when: a bare ``python -I`` in a folder without the project runs the docs' snippets on
    raw measurements at two batch sizes; they give predict.py's predictions in the target's units."""
    features = raw_test_features()
    np.savetxt(tmp_path / "all.csv", features, delimiter=",")
    np.savetxt(tmp_path / "five.csv", features[:5], delimiter=",")
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.pt2", "model.onnx", "all.csv", "five.csv"):
        source = regression_run / name if name.startswith("model") else tmp_path / name
        (bare / name).write_bytes(source.read_bytes())
    harness = [
        "import importlib.util, numpy",
        "assert not any(importlib.util.find_spec(name) for name in ('app', 'base', 'data_loader', 'model')), 'the project is importable'",
    ]
    for fmt, code in snippets().items():
        for rows in ("all", "five"):
            harness += [f"exec({code.replace('raw.csv', f'{rows}.csv')!r})", f"numpy.save('{fmt}-{rows}.npy', predictions)"]
    (bare / "harness.py").write_text("\n".join(harness) + "\n")
    ran = subprocess.run(
        [sys.executable, "-I", "harness.py"], cwd=bare, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=120
    )
    assert ran.returncode == 0, ran.stderr[-3000:]

    predicted = tmp_path / "p.npz"
    result = run_here("predict.py", "-r", regression_run / "checkpoints" / "best.pth", "--out", predicted)
    assert result.returncode == 0, result.stderr
    scaler = torch.load(regression_run / "checkpoints" / "best.pth", weights_only=True)["serving"]
    expected = np.load(predicted)["prediction"] * scaler["target_std"].item() + scaler["target_mean"].item()
    assert 50 < expected.mean() < 300  # the target's own units, not standardised ones
    for fmt in ("pt2", "onnx"):
        for rows, count in (("all", 88), ("five", 5)):
            got = np.load(bare / f"{fmt}-{rows}.npy")
            assert got.shape == (count,), (fmt, rows)
            assert np.all(np.abs(got - expected[:count]) <= ATOL + RTOL * np.abs(expected[:count])), (fmt, rows)


def test_the_recorded_differences_are_what_a_recomputation_shows(regression_run):
    """Each check.json's largest differences equal the ones found here by hand on the same batches
    (the test split in batches of 32, then its first patient alone)."""
    import onnxruntime

    features = raw_test_features()
    batches = [*np.array_split(features, range(32, len(features), 32)), features[:1]]
    session = onnxruntime.InferenceSession(str(regression_run / "model.onnx"), providers=["CPUExecutionProvider"])
    program = torch.export.load(str(regression_run / "model.pt2")).module()
    runs = {
        "onnx": lambda x: session.run(["prediction"], {"input": x})[0],
        "pt2": lambda x: program(torch.from_numpy(x)).detach().numpy(),
    }
    for fmt, run in runs.items():
        record = json.loads((regression_run / f"model.{fmt}.check.json").read_text())
        assert record["passed"] and record["batch_sizes"] == [1, 24, 32] and record["samples"] == 89
        assert record["inputs"] == ["input"] and record["outputs"] == ["prediction"]
        worst_abs = worst_rel = 0.0
        for batch in batches:
            want = eager_in_original_units(regression_run, batch).astype(np.float64)
            diff = np.abs(run(batch).astype(np.float64) - want)
            worst_abs, worst_rel = max(worst_abs, diff.max()), max(worst_rel, (diff / np.abs(want)).max())
        assert record["max_abs_diff"] == pytest.approx(worst_abs, abs=1e-9), fmt
        assert record["max_rel_diff"] == pytest.approx(worst_rel, abs=1e-11), fmt
    assert json.loads((regression_run / "model.onnx.check.json").read_text())["opset"] == 18


def test_test_py_prints_the_difference_it_writes_beside_the_file(regression_run, tmp_path):
    target = tmp_path / "served.pt2"
    result = run_here("test.py", "-r", regression_run / "checkpoints" / "best.pth", "--out", tmp_path / "m.json", "--export", target)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "served.pt2.check.json").read_text())
    line = next(line for line in result.stdout.splitlines() if line.startswith(f"exported {target}"))
    assert f"{record['max_abs_diff']:.3g} absolute, {record['max_rel_diff']:.3g} relative" in line, line
    assert target.is_file() and (tmp_path / "m.json").is_file()


class Noisy(torch.nn.Module):
    """A forward that draws random numbers: its export can never match the eager model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


def test_an_export_beyond_the_tolerance_is_refused_and_leaves_nothing(tmp_path):
    published = []
    with pytest.raises(UserError, match=r"differs from the checkpoint's model beyond the tolerance .*nothing was written") as caught:
        export(ServedModel(Noisy()).eval(), [torch.zeros(4, 3)], tmp_path / "noisy.pt2", published.append)
    assert "\n" not in str(caught.value) and not published and list(tmp_path.iterdir()) == []


def test_dict_inputs_and_nested_outputs_are_named_in_the_onnx_export(tmp_path):
    import onnxruntime
    from export_models import TwoHeads

    served = ServedModel(TwoHeads()).eval()
    batches = [{"image": torch.randn(4, 3), "extra": torch.randn(4, 4)}, {"image": torch.randn(3, 3), "extra": torch.randn(3, 4)}]
    record = export(served, batches, tmp_path / "heads.onnx", lambda tmp: tmp.replace(tmp_path / "heads.onnx"))
    assert record["inputs"] == ["image", "extra"] and record["outputs"] == ["score", "parts_0", "parts_1"] and record["passed"]
    session = onnxruntime.InferenceSession(str(tmp_path / "heads.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "extra"] and session.get_inputs()[0].shape[0] == "batch"
    image, extra = torch.randn(6, 3), torch.randn(6, 4)
    score, first, _ = session.run(["score", "parts_0", "parts_1"], {"image": image.numpy(), "extra": extra.numpy()})
    with torch.no_grad():
        want = served({"image": image, "extra": extra})
    assert np.allclose(score, want["score"].numpy(), atol=1e-5) and np.allclose(first, want["parts"][0].numpy(), atol=1e-5)


def test_an_onnx_export_without_the_extra_is_one_line_naming_the_install(regression_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # what Python does for a module that cannot be imported
    result = run_here(
        "test.py", "-r", regression_run / "checkpoints" / "best.pth", "--out", tmp_path / "m.json", "--export", tmp_path / "m.onnx"
    )
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --export: an .onnx export needs onnxscript, not installed here; install the onnx extra: "
        "pip install -e '.[onnx]' (onnx, onnxscript, onnxruntime)"
    ], result.stderr
    trained = run_here("train.py", "-c", REGRESSION, f"trainer.save_dir={tmp_path}", "trainer.export=[onnx]")
    assert trained.returncode == 2 and "trainer.export" in trained.stderr and "pip install -e '.[onnx]'" in trained.stderr, trained.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_cross_validation_ships_its_fold_ensemble_as_one_module(tmp_path):
    """trainer.export in a CV: one file, the mean of the folds' models in the target's units, in the
    CV run directory (none in the folds'); folds that fitted other serving states cannot be one
    module, and ``test.py -r CV_RUN_DIR --export`` says so in one line."""
    result = run_here(
        "train.py", "-c", REGRESSION, "--folds", "2", "--run-id", "cv", f"trainer.save_dir={tmp_path}", "trainer.epochs=1",
        "trainer.export=[pt2]",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    cv_dir = tmp_path / "tiny_regression" / "cv"
    assert sorted(path.relative_to(cv_dir).as_posix() for path in cv_dir.rglob("model.*")) == ["model.pt2", "model.pt2.check.json"]
    features = raw_test_features()
    want = np.mean([eager_in_original_units(cv_dir / f"fold-{fold}", features) for fold in range(2)], axis=0)
    got = torch.export.load(str(cv_dir / "model.pt2")).module()(torch.from_numpy(features)).detach().numpy()
    assert np.all(np.abs(got - want) <= ATOL + RTOL * np.abs(want))

    best = cv_dir / "fold-1" / "checkpoints" / "best.pth"
    state = torch.load(best, weights_only=True)
    state["serving"]["target_mean"] = state["serving"]["target_mean"] + 1
    save_crafted(state, best)
    result = run_here("test.py", "-r", cv_dir, "--export", tmp_path / "other.pt2", "--out", tmp_path / "n.json")
    assert result.returncode == 2 and "fold 1's differs from fold 0's" in result.stderr and "--fold I" in result.stderr, result.stderr
    assert not (tmp_path / "other.pt2").exists() and not (tmp_path / "n.json").exists()
