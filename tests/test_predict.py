"""predict.py: one row per sample in data set order, the same weights and numbers as test.py, the
same bytes from one process or two, four formats, unlabelled files, bounded memory."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from helpers import build_trainer, run_here, run_script, tiny_config

from app.prediction_files import read_predictions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("predict")
    trainer, run_dir = build_trainer(tmp_path, tiny_config(tmp_path, epochs=2))
    trainer.train()
    checkpoint = run_dir / "checkpoints" / "best.pth"
    files = {}
    for suffix in (".jsonl", ".csv", ".npz", ".pt"):
        files[suffix] = tmp_path / f"predictions{suffix}"
        result = run_here("predict.py", "-r", str(checkpoint), "--out", str(files[suffix]))
        assert result.returncode == 0, result.stderr
    assert "samples/s" in result.stdout  # the throughput is logged
    return tmp_path, checkpoint, files


def test_359_rows_in_index_order_whose_accuracy_equals_test_py(digits):
    tmp_path, checkpoint, files = digits
    rows = read_predictions(files[".jsonl"])
    assert [row["index"] for row in rows] == list(range(359))
    assert set(rows[0]) == {"index", "target", "prediction", "output"}
    assert all(len(row["output"]) == 10 and abs(sum(row["output"]) - 1) < 1e-5 for row in rows)  # log-probabilities became probabilities
    tested = run_here("test.py", "-r", str(checkpoint), "--out", str(tmp_path / "test.json"))
    assert tested.returncode == 0, tested.stderr
    accuracy = sum(row["prediction"] == row["target"] for row in rows) / len(rows)
    assert accuracy == json.loads((tmp_path / "test.json").read_text())["accuracy"]


def test_two_processes_write_the_same_bytes_as_one(digits):
    tmp_path, checkpoint, files = digits
    for suffix in (".jsonl", ".npz"):
        two = tmp_path / f"two{suffix}"
        command = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "predict.py", "-r", str(checkpoint), "--out", str(two)]
        result = run_script(*command)
        assert result.returncode == 0, result.stderr
        assert two.read_bytes() == files[suffix].read_bytes(), suffix
    assert not list(tmp_path.glob(".*part*")) and not list(tmp_path.glob(".*tmp*"))


def test_the_formats_agree(digits):
    _, _, files = digits
    rows = read_predictions(files[".jsonl"])
    table = read_predictions(files[".csv"])
    arrays, tensors = read_predictions(files[".npz"]), read_predictions(files[".pt"])
    assert [int(r["index"]) for r in table] == [r["index"] for r in rows]
    assert [int(r["prediction"]) for r in table] == [r["prediction"] for r in rows]
    assert [[float(r[f"output_{i}"]) for i in range(10)] for r in table] == [r["output"] for r in rows]
    outputs = np.array([r["output"] for r in rows], dtype=np.float32)
    assert np.array_equal(arrays["output"], outputs) and torch.equal(tensors["output"], torch.from_numpy(outputs))
    assert arrays["prediction"].tolist() == tensors["prediction"].tolist() == [r["prediction"] for r in rows]
    assert arrays["target"].dtype == np.int64 and arrays["index"].tolist() == list(range(359))


def test_an_existing_file_needs_force_and_bad_outputs_are_one_line_errors(digits, tmp_path):
    _, checkpoint, files = digits
    before = files[".csv"].read_bytes()
    for out, expected in (
        (files[".csv"], "exists; pass --force"),
        (tmp_path, "is a folder; name a file"),
        (tmp_path / "p.parquet", "no known extension; use one of .jsonl, .csv, .npz, .pt"),
        (tmp_path / "missing" / "p.csv", "does not exist; create it first"),
    ):
        result = run_here("predict.py", "-r", str(checkpoint), "--out", str(out))
        assert result.returncode == 2 and result.stderr.startswith("error: --out: ") and expected in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1
    assert files[".csv"].read_bytes() == before
    forced = run_here("predict.py", "-r", str(checkpoint), "--out", str(files[".csv"]), "--force", "--split", "val")
    assert forced.returncode == 0, forced.stderr
    assert len(read_predictions(files[".csv"])) == 216  # the validation split


def test_ten_times_more_samples_need_less_than_a_fifth_more_memory(tmp_path):
    """Rows are written as they come: peak memory barely grows with the number of predictions."""
    config = tiny_config(tmp_path, epochs=1, limit_batches=1, monitor="min loss")
    config["arch"] = {"type": "fixtures.model:MLP", "args": {"in_features": 64, "hidden": 64, "num_classes": 100}}
    config["data_loader"] = {"type": "benchmarks.overhead:SyntheticDataLoader", "args": {"shape": [64], "num_classes": 100, "num_samples": 2000}}
    config["metrics"] = []
    trainer, run_dir = build_trainer(tmp_path, config)
    trainer.train()
    checkpoint = run_dir / "checkpoints" / "last.pth"
    probe = "import resource, sys, predict; code = predict.main(sys.argv[1:]); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"
    peaks = {}
    for samples in (2000, 20000):
        out = tmp_path / f"{samples}.jsonl"
        args = ["-r", str(checkpoint), "--split", "train", "--out", str(out), f"data_loader.args.num_samples={samples}", "--trust-checkpoint"]
        result = run_script("-c", probe, *args)
        assert result.returncode == 0, result.stderr
        peaks[samples] = int(result.stdout.strip().splitlines()[-1])
        assert len(out.read_text().splitlines()) == samples
    print(f"peak RSS: {peaks[2000] / 1024:.0f} MiB for 2,000 rows, {peaks[20000] / 1024:.0f} MiB for 20,000 rows", file=sys.stderr)
    assert peaks[20000] < 1.2 * peaks[2000]
