"""The regression example (configs/diabetes.json): it trains and reports R2. It leaves with the example."""

from __future__ import annotations

import json

import pytest
from helpers import example_or_skip, metric_rows, run_here

example_or_skip("diabetes", "model:Regressor")  # what it uses of the files a user rewrites first


@pytest.mark.slow
def test_the_regression_example_trains_and_reports_r2(tmp_path):
    from sklearn.metrics import mean_absolute_error, r2_score

    from data_loader.diabetes import diabetes_dataset

    result = run_here("train.py", "-c", "configs/diabetes.json", "--run-id", "r", f"trainer.save_dir={tmp_path}", "trainer.epochs=15")
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "diabetes_regression" / "r"
    rows = metric_rows(run_dir)
    assert {"mae", "r2", "val_mae", "val_r2"} <= set(rows[0])
    predictions = tmp_path / "p.npz"
    predicted = run_here("predict.py", "-r", str(run_dir / "checkpoints" / "best.pth"), "--out", str(predictions))
    assert predicted.returncode == 0, predicted.stderr
    tested = run_here("test.py", "-r", str(run_dir / "checkpoints" / "best.pth"), "--out", str(tmp_path / "t.json"))
    assert tested.returncode == 0, tested.stderr
    reported = json.loads((tmp_path / "t.json").read_text())
    import numpy as np

    values = np.load(predictions)["prediction"]
    target = diabetes_dataset(training=False).tensors[1].numpy()
    assert reported["r2"] == pytest.approx(r2_score(target, values), abs=1e-5) and reported["r2"] > 0.3
    assert reported["mae"] == pytest.approx(mean_absolute_error(target, values), abs=1e-5)
