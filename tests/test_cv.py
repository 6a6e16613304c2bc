"""K-fold cross-validation (``train.py --folds K``), the fold ensemble in ``test.py`` and
``predict.py``, and the runs table (``runs.py``).

One uninterrupted 3-fold CV of the digits is shared by the module (in-process); one CV is killed
with SIGKILL at a random training batch of its second fold (a real process) and resumed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import signal
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import TESTS_ENV, changes, entry_point, run_script, save_crafted, tiny_config, tree, write_config

import predict
import runs
import train
from app.run_dir import RunDirClaim
from base import BaseDataLoader
from dataflow.splits import kfold
from logger.logger import close_log_files
from utils.errors import UserError

FOLDS = 3
EPOCHS, BATCHES = 2, 4
PASSES_PER_FOLD = 1 + EPOCHS * BATCHES  # the pre-flight batch, then the training batches
evaluate = entry_point("test.py")


def cv_config(tmp: Path) -> Path:
    config = tiny_config(tmp, epochs=EPOCHS, limit_batches=BATCHES, save_every_n_steps=3)
    config["arch"]["type"] = "fault_injection:SignalingDigitsCNN"  # TinyCNN unless told to signal
    return write_config(tmp, config)


def quiet(main, argv: list) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        code = main([str(arg) for arg in argv])
    close_log_files()
    return code


@pytest.fixture(scope="module")
def cv_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cv")
    assert quiet(train.main, ["-c", cv_config(tmp), "--folds", FOLDS, "--run-id", "cv", "--trust-checkpoint"]) == 0
    return tmp / "saved" / "tiny" / "cv"


def digits_targets() -> list[int]:
    from fixtures.data import tiny_dataset as digits_dataset

    return digits_dataset(training=True).tensors[1].tolist()


def test_the_folds_partition_the_training_pool_with_each_class_in_proportion(cv_dir):
    splits = [json.loads((cv_dir / f"fold-{fold}" / "split.json").read_text()) for fold in range(FOLDS)]
    targets = digits_targets()
    pool = splits[0]["pool"]
    assert pool == len(targets) and all(split["folds"] == FOLDS and split["fold"] == fold for fold, split in enumerate(splits))
    validation = [set(split["validation"]) for split in splits]
    assert sum(map(len, validation)) == pool and set().union(*validation) == set(range(pool))  # disjoint, and cover the pool
    whole = Counter(targets)
    for chosen in validation:
        counts = Counter(targets[index] for index in chosen)
        for label, total in whole.items():
            assert abs(counts[label] - total / FOLDS) < 1, (label, counts[label], total)
    from fixtures.data import tiny_dataset as digits_dataset

    assert len(digits_dataset(training=False)) == 359  # the test split is its own data set: it never enters a fold


class Labelled(torch.utils.data.Dataset):
    def __init__(self, targets: list):
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return torch.tensor([float(index)]), self.targets[index]


class GroupedLoader(BaseDataLoader):
    def __init__(self, dataset, folds: int = 0, fold: int = 0, fold_groups: str | None = None, split_seed: int = 0):
        self.samples = len(dataset)
        super().__init__(dataset, 4, folds=folds, fold=fold, fold_groups=fold_groups, split_seed=split_seed, validation_split=0.0)

    def patient(self) -> list:
        return [index // 7 for index in range(self.samples)]  # seven samples per patient


@pytest.mark.parametrize("folds", [2, 3, 5, 7])
def test_folds_of_other_data_sets(folds, rng):
    size = rng.randrange(folds * 7, 150)  # at least one patient of seven per fold
    names = [rng.choice(["cat", "dog", "dog", "emu"]) for _ in range(size)]  # labels by name, unbalanced
    values = [rng.random() for _ in range(size)]  # a regression: no classes
    for targets in (names, values):
        dealt = kfold(size, folds, seed=rng.randrange(100), targets=targets)
        assert sorted(i for fold in dealt for i in fold) == list(range(size))
        assert max(map(len, dealt)) - min(map(len, dealt)) <= 1
        if targets is names:
            for label, total in Counter(names).items():
                assert all(abs(sum(names[i] == label for i in fold) - total / folds) < 1 for fold in dealt)
    dataset = Labelled(names)
    seen: set[int] = set()
    for fold in range(folds):
        loader = GroupedLoader(dataset, folds, fold, "patient", split_seed=3)
        valid = loader.split["validation"]
        assert not seen & set(valid) and {index // 7 for index in valid}.isdisjoint({index // 7 for index in loader.dataset.indices})
        seen |= set(valid)
    assert seen == set(range(size))
    with pytest.raises(UserError, match="data_loader.args.fold: must be from 0 to"):
        GroupedLoader(dataset, folds, folds)


def test_a_cv_killed_in_its_second_fold_resumes_to_the_same_summary(cv_dir, tmp_path, rng):
    batch = rng.randrange(1, EPOCHS * BATCHES + 1)  # the training batch of fold 1 the kill lands on
    env = {**TESTS_ENV, "SIGNAL_NAME": "SIGKILL", "SIGNAL_COUNT": "process", "SIGNAL_AT_BATCH": str(PASSES_PER_FOLD + 1 + batch)}
    killed = run_script("train.py", "-c", str(cv_config(tmp_path)), "--folds", str(FOLDS), "--run-id", "cv", "--trust-checkpoint", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    folder = tmp_path / "saved" / "tiny" / "cv"
    assert (folder / "cv_summary.json").exists() and not (folder / "fold-2").exists()
    listed = runs_table([folder])
    assert [row["state"] for row in listed] == ["finished", "failed"][: len(listed)]  # fold 1 is gone if killed before its first checkpoint

    assert quiet(train.main, ["-r", folder, "--trust-checkpoint"]) == 0  # as the CV's resume command says
    summary = json.loads((folder / "cv_summary.json").read_text())
    assert summary == json.loads((cv_dir / "cv_summary.json").read_text())
    assert [entry["fold"] for entry in summary["per_fold"]] == [0, 1, 2] and set(summary["across"]) >= {"val_loss", "val_accuracy"}
    assert [row["state"] for row in runs_table([folder])] == ["finished"] * FOLDS

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert quiet(train.main, ["-r", folder, "--trust-checkpoint"]) == 2  # nothing left to train: one line
    assert "all 3 folds are finished" in err.getvalue() and err.getvalue().count("\n") == 1, err.getvalue()


def test_folds_trained_before_a_kill_could_write_the_summary_are_read_not_trained_again(cv_dir, tmp_path):
    """Killed after fold 1's last checkpoint and fold 2's too, before cv_summary.json said so: the
    resume reads both (a resume of either would find nothing to train), the summary as it was."""
    folder = tmp_path / "cv"
    shutil.copytree(cv_dir, folder)
    summary = json.loads((folder / "cv_summary.json").read_text())
    summary["per_fold"] = summary["per_fold"][:1]
    (folder / "cv_summary.json").write_text(json.dumps(summary))
    before = {name: (folder / name / "metrics.jsonl").read_bytes() for name in ("fold-1", "fold-2")}
    assert quiet(train.main, ["-r", folder, "--trust-checkpoint"]) == 0
    assert json.loads((folder / "cv_summary.json").read_text()) == json.loads((cv_dir / "cv_summary.json").read_text())
    assert {name: (folder / name / "metrics.jsonl").read_bytes() for name in before} == before  # nothing trained again


def test_the_summary_holds_each_folds_best_epoch_and_the_spread(cv_dir):
    summary = json.loads((cv_dir / "cv_summary.json").read_text())
    for entry in summary["per_fold"]:
        rows = [json.loads(line) for line in (cv_dir / entry["run_dir"] / "metrics.jsonl").read_text().splitlines()]
        best = min(rows, key=lambda row: row["val_loss"])
        assert entry["best_epoch"] == best["epoch"] and entry["metrics"]["val_loss"] == best["val_loss"]
    losses = [entry["metrics"]["val_loss"] for entry in summary["per_fold"]]
    mean = sum(losses) / FOLDS
    assert summary["across"]["val_loss"]["mean"] == pytest.approx(mean)
    assert summary["across"]["val_loss"]["std"] == pytest.approx((sum((x - mean) ** 2 for x in losses) / FOLDS) ** 0.5)
    assert summary["across"]["val_loss"]["min"] == min(losses) and summary["across"]["val_loss"]["max"] == max(losses)


def test_the_ensemble_is_the_mean_of_the_folds_probabilities(cv_dir, tmp_path):
    assert quiet(evaluate, ["-r", cv_dir, "--out", tmp_path / "ensemble.json", "--trust-checkpoint"]) == 0
    ensemble = json.loads((tmp_path / "ensemble.json").read_text())
    assert ensemble["folds"] == [0, 1, 2] and ensemble["samples"] == 359
    singles = []
    for fold in range(FOLDS):
        assert quiet(evaluate, ["-r", cv_dir, "--fold", fold, "--out", tmp_path / f"fold{fold}.json", "--trust-checkpoint"]) == 0
        singles.append(json.loads((tmp_path / f"fold{fold}.json").read_text()))
        assert singles[-1]["checkpoint"] == str(cv_dir) and "folds" not in singles[-1]
    assert all(single["loss"] != ensemble["loss"] for single in singles)

    # the same number by hand: each fold's best model, softmax, mean, negative log-likelihood
    from fixtures.data import tiny_dataset as digits_dataset
    from fixtures.model import TinyCNN as DigitsCNN

    images, labels = digits_dataset(training=False).tensors
    probabilities = []
    for fold in range(FOLDS):
        model = DigitsCNN()
        state = torch.load(cv_dir / f"fold-{fold}" / "checkpoints" / "best.pth", weights_only=True)
        model.load_state_dict(state["model"])
        with torch.no_grad():
            probabilities.append(model.eval()(images).exp())
    mean = torch.stack(probabilities).mean(dim=0)
    assert ensemble["loss"] == pytest.approx(torch.nn.functional.nll_loss(mean.log(), labels).item(), rel=1e-4)
    assert ensemble["accuracy"] == pytest.approx((mean.argmax(dim=1) == labels).float().mean().item())


def test_predict_with_the_ensemble_and_with_one_fold(cv_dir, tmp_path, capsys):
    assert quiet(predict.main, ["-r", cv_dir, "--out", tmp_path / "all.jsonl", "--trust-checkpoint"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert len(rows) == 359 and all(abs(sum(row["output"]) - 1) < 1e-4 for row in rows[:5])  # probabilities
    assert quiet(predict.main, ["-r", cv_dir, "--fold", "1", "--split", "val", "--out", tmp_path / "val.jsonl", "--trust-checkpoint"]) == 0
    validation = json.loads((cv_dir / "fold-1" / "split.json").read_text())["validation"]
    assert len((tmp_path / "val.jsonl").read_text().splitlines()) == len(validation)
    before = tree(tmp_path)
    capsys.readouterr()
    assert predict.main(["-r", str(cv_dir), "--split", "val", "--out", str(tmp_path / "v.jsonl"), "--trust-checkpoint"]) == 2
    assert "pick one with --fold I" in capsys.readouterr().err and tree(tmp_path) == before


def runs_table(paths: list[Path], *more: str) -> list[dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert runs.main([*map(str, paths), "--csv", "-", *more]) == 0
    return list(csv.DictReader(io.StringIO(out.getvalue())))


def test_the_runs_table_shows_state_and_only_the_keys_that_differ(cv_dir, tmp_path):
    folder = tmp_path / "saved"
    config = tiny_config(tmp_path, epochs=2, limit_batches=2)
    assert quiet(train.main, ["-c", write_config(tmp_path, config), "--run-id", "a"]) == 0
    config["optimizer"]["args"]["lr"] = 0.01
    config["arch"]["type"] = "fault_injection:SignalingDigitsCNN"
    os.environ.update(SIGNAL_AT_BATCH="3", SIGNAL_NAME="SIGTERM")
    try:
        assert quiet(train.main, ["-c", write_config(tmp_path, config), "--run-id", "b", "--trust-checkpoint"]) == 128 + signal.SIGTERM
    finally:
        del os.environ["SIGNAL_AT_BATCH"], os.environ["SIGNAL_NAME"]
    before = tree(tmp_path)
    claim = RunDirClaim.open(folder / "tiny" / "a")  # a process training in it
    try:
        rows = runs_table([folder])
    finally:
        claim.release()
    assert tree(tmp_path) == before, changes(before, tree(tmp_path))  # read-only
    assert [(row["run"], row["state"], row["epochs"]) for row in rows] == [("tiny/a", "running", "2/2"), ("tiny/b", "stopped", "0/2")]
    assert list(rows[0])[8:] == ["arch.type", "optimizer.args.lr"]
    assert rows[0]["optimizer.args.lr"] == "0.002" and rows[1]["optimizer.args.lr"] == "0.01"
    best = min(json.loads(line)["val_loss"] for line in (folder / "tiny" / "a" / "metrics.jsonl").read_text().splitlines())
    assert rows[0]["monitor"] == "val_loss" and float(rows[0]["best"]) == pytest.approx(best, rel=1e-5)
    assert runs_table([folder])[0]["state"] == "finished"

    folds = runs_table([cv_dir])
    assert [row["run"] for row in folds] == ["fold-0", "fold-1", "fold-2"] and list(folds[0])[8:] == ["data_loader.args.fold"]

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert runs.main([str(folder)]) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["run", "name", "run_id", "state", "epochs", "monitor", "best", "best_epoch", "arch.type", "optimizer.args.lr"]
    assert len(lines) == 3 and lines[2].split()[3] == "stopped"
    assert runs.main([str(folder), "--csv", str(tmp_path / "runs.csv")]) == 0
    assert len((tmp_path / "runs.csv").read_text().splitlines()) == 3
    assert runs.main([str(folder), "--csv", str(tmp_path / "runs.csv")]) == 2  # an existing file needs --force


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--folds", "1"], "--folds: must be a whole number of at least 2"),
        (["--folds", "3", 'data_loader={type: "fixtures.data:NoFoldsDataLoader"}'], "takes no folds/fold arguments"),
        (["--folds", "5000"], "data_loader.args.folds: 5000 folds of 1438 samples leave a fold empty"),
        (["--folds", "2", "data_loader.args.fold_groups=nothing"], "data_loader.args.fold_groups: 'nothing' is neither"),
        (["--folds", "2", "data_loader.args.folds=3"], "--folds 2: the config's data_loader.args.folds is 3; remove it"),
    ],
    ids=["one fold", "a loader without folds", "more folds than samples", "unknown groups", "another count in the config"],
)
def test_a_bad_cross_validation_is_one_line_and_leaves_nothing(argv, expected, tmp_path, capsys):
    config = write_config(tmp_path, tiny_config(tmp_path, epochs=1, limit_batches=1))
    before = tree(tmp_path)
    capsys.readouterr()
    assert train.main(["-c", str(config), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert tree(tmp_path) == before, changes(before, tree(tmp_path))


def test_ensemble_loading_refuses_what_is_not_a_fold(cv_dir, tmp_path, capsys):
    capsys.readouterr()
    assert evaluate(["-r", str(cv_dir), "--fold", "3"]) == 2
    assert "--fold: 3 is not a fold of" in capsys.readouterr().err
    assert evaluate(["-r", str(cv_dir / "fold-0" / "checkpoints" / "best.pth"), "--fold", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "is not a cross-validation's run directory" in capsys.readouterr().err


def test_an_ensemble_takes_only_finished_folds_of_one_model_and_is_exported_as_one(cv_dir, tmp_path, capsys):
    folder = tmp_path / "cv"
    shutil.copytree(cv_dir, folder)
    summary = json.loads((folder / "cv_summary.json").read_text())
    summary["per_fold"] = [entry for entry in summary["per_fold"] if entry["fold"] != 1]  # fold 1 still training, or stopped
    (folder / "cv_summary.json").write_text(json.dumps(summary))
    before = tree(tmp_path)
    capsys.readouterr()
    assert evaluate(["-r", str(folder), "--trust-checkpoint"]) == 2
    err = capsys.readouterr().err
    assert "fold(s) 1 not finished (cv_summary.json)" in err and err.count("\n") == 1 and tree(tmp_path) == before, err
    assert quiet(evaluate, ["-r", folder, "--fold", "0", "--out", tmp_path / "fold0.json", "--trust-checkpoint"]) == 0

    (folder / "cv_summary.json").write_text("{garbage")
    assert evaluate(["-r", str(folder), "--trust-checkpoint", "--out", str(tmp_path / "x.json")]) == 2
    assert "cv_summary.json: not valid JSON" in capsys.readouterr().err

    shutil.copy(cv_dir / "cv_summary.json", folder / "cv_summary.json")
    best = folder / "fold-2" / "checkpoints" / "best.pth"
    state = torch.load(best, weights_only=True)
    state["config"]["arch"]["args"]["dropout"] = 0.5  # another model than fold 0's
    save_crafted(state, best)
    assert evaluate(["-r", str(folder), "--trust-checkpoint", "--out", str(tmp_path / "y.json")]) == 2
    assert "fold 2's arch differs from fold 0's" in capsys.readouterr().err and not (tmp_path / "y.json").exists()

    assert quiet(evaluate, ["-r", cv_dir, "--export", tmp_path / "m.pt2", "--out", tmp_path / "z.json", "--trust-checkpoint"]) == 0  # one module
    assert (tmp_path / "m.pt2.check.json").is_file() and (tmp_path / "z.json").is_file()


def test_the_ensemble_averages_class_scores_as_probabilities_and_everything_else_as_values():
    from trainer.ensemble import Ensemble

    class Fixed(torch.nn.Module):
        def __init__(self, output):
            super().__init__()
            self.output = output

        def forward(self, x):
            return self.output

    sure = [torch.tensor([[0.0, 200.0]]).log_softmax(1), torch.tensor([[0.0, 150.0]]).log_softmax(1)]
    scores = Ensemble([Fixed(output) for output in sure], probabilities=True)(None)
    assert torch.isfinite(scores).all()  # log(mean(exp)) of two very sure members underflowed to -inf
    assert torch.nn.functional.nll_loss(scores, torch.tensor([0])).item() == pytest.approx(150 + math.log(2), rel=1e-6)
    values = [torch.tensor([[10.0, 20.0]]), torch.tensor([[12.0, 22.0]])]  # a two-output regression
    assert torch.equal(Ensemble([Fixed(output) for output in values])(None), torch.tensor([[11.0, 21.0]]))
    vae = [{"mu": torch.tensor([[1.0, -1.0]]), "logvar": torch.zeros(1, 2)}, {"mu": torch.tensor([[3.0, 1.0]]), "logvar": torch.zeros(1, 2)}]
    averaged = Ensemble([Fixed(output) for output in vae], probabilities=True)(None)  # a dict: fields as values
    assert torch.equal(averaged["mu"], torch.tensor([[2.0, 0.0]])) and torch.equal(averaged["logvar"], torch.zeros(1, 2))


@pytest.mark.slow
def test_under_torchrun_every_fold_runs_on_every_process(tmp_path):
    """One CV directory (rank 0 claims it), each fold trained by both processes, the ensemble evaluated in shards."""
    config = tiny_config(tmp_path, epochs=1, limit_batches=2)
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    result = run_script(*torchrun, "train.py", "-c", str(write_config(tmp_path, config)), "--folds", "2", "--run-id", "cv", env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert [path.name for path in (tmp_path / "saved" / "tiny").iterdir()] == ["cv"]
    folder = tmp_path / "saved" / "tiny" / "cv"
    for fold in range(2):
        manifest = json.loads((folder / f"fold-{fold}" / "manifest.json").read_text())
        assert manifest["world_size"] == 2 and manifest["ended"]["state"] == "finished"
    assert [entry["fold"] for entry in json.loads((folder / "cv_summary.json").read_text())["per_fold"]] == [0, 1]
    sharded = run_script(*torchrun, "test.py", "-r", str(folder), "--out", str(tmp_path / "two.json"), env={"OMP_NUM_THREADS": "1"})
    assert sharded.returncode == 0, sharded.stderr
    assert quiet(evaluate, ["-r", folder, "--out", tmp_path / "one.json"]) == 0
    two, one = (json.loads((tmp_path / name).read_text()) for name in ("two.json", "one.json"))
    assert two["samples"] == one["samples"] == 359 and two["loss"] == pytest.approx(one["loss"], rel=1e-5)


# -- the driver's own files are checked like a run's history -------------------------------------------


def one_line(code: int, err: str, *fragments: str) -> None:
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and all(f in err for f in fragments), err


def test_a_finished_fold_whose_folder_is_gone_is_said_by_test_and_trained_again_by_train(cv_dir, tmp_path, capsys):
    folder = tmp_path / "cv"
    shutil.copytree(cv_dir, folder)
    shutil.rmtree(folder / "fold-1")
    before = tree(tmp_path)
    capsys.readouterr()
    code = evaluate(["-r", str(folder), "--trust-checkpoint", "--out", str(tmp_path / "x.json")])
    one_line(code, capsys.readouterr().err, "fold-1: fold 1 is gone", f"train it again with train.py -r {folder}")
    assert tree(tmp_path) == before
    others = {name: (folder / name / "metrics.jsonl").read_bytes() for name in ("fold-0", "fold-2")}
    assert quiet(train.main, ["-r", folder, "--trust-checkpoint"]) == 0  # as the hint says: fold 1 alone is trained again
    assert json.loads((folder / "cv_summary.json").read_text()) == json.loads((cv_dir / "cv_summary.json").read_text())
    assert {name: (folder / name / "metrics.jsonl").read_bytes() for name in others} == others


@pytest.mark.parametrize("folds", [2, 4])
def test_cv_json_edited_to_another_fold_count_mixes_no_partitions(folds, cv_dir, tmp_path, capsys):
    folder = tmp_path / "cv"
    shutil.copytree(cv_dir, folder)
    description = json.loads((folder / "cv.json").read_text())
    (folder / "cv.json").write_text(json.dumps({**description, "folds": folds}))
    before = tree(tmp_path)
    capsys.readouterr()
    one_line(train.main(["-r", str(folder), "--trust-checkpoint"]), capsys.readouterr().err, f"made for 3 folds, but cv.json says {folds}")
    code = evaluate(["-r", str(folder), "--trust-checkpoint", "--out", str(tmp_path / "x.json")])
    one_line(code, capsys.readouterr().err, f"made for 3 folds, but cv.json says {folds}", '"folds": 3')
    assert tree(tmp_path) == before, changes(before, tree(tmp_path))


def test_a_fold_killed_before_the_summary_and_cv_json_edited_is_refused_by_the_folds_own_config(cv_dir, tmp_path, capsys):
    folder = tmp_path / "cv"
    shutil.copytree(cv_dir, folder)
    (folder / "cv_summary.json").unlink()  # killed in fold 0: no summary says how many folds there were
    shutil.rmtree(folder / "fold-2")
    description = json.loads((folder / "cv.json").read_text())
    (folder / "cv.json").write_text(json.dumps({**description, "folds": 2}))
    before = tree(tmp_path)
    capsys.readouterr()
    one_line(train.main(["-r", str(folder), "--trust-checkpoint"]), capsys.readouterr().err, "fold-0: not fold 0 of 2", "data_loader.args.folds 3", 'put back "folds": 3')
    assert tree(tmp_path) == before, changes(before, tree(tmp_path))
    description["config"]["seed"] += 1  # the same count, another partition
    (folder / "cv.json").write_text(json.dumps(description))
    before = tree(tmp_path)
    one_line(train.main(["-r", str(folder), "--trust-checkpoint"]), capsys.readouterr().err, "fold-0: not fold 0 of 3", "its seed differs")
    assert tree(tmp_path) == before, changes(before, tree(tmp_path))


@pytest.mark.parametrize("how", ["link", "copy"])
def test_a_fold_folder_that_is_another_run_is_refused(how, cv_dir, tmp_path, capsys):
    """fold-1 replaced by a link to (or a copy of) another run: neither trained on nor averaged in."""
    folder = tmp_path / "cv"
    shutil.copytree(cv_dir, folder)
    shutil.copytree(cv_dir / "fold-2", tmp_path / "other")
    shutil.rmtree(folder / "fold-1")
    if how == "link":
        (folder / "fold-1").symlink_to(tmp_path / "other", target_is_directory=True)
        expected = "fold-1 is a symbolic link"
    else:
        shutil.copytree(tmp_path / "other", folder / "fold-1")
        expected = "fold-1: not fold 1 of 3"
    before = tree(tmp_path)
    capsys.readouterr()
    code = evaluate(["-r", str(folder), "--trust-checkpoint", "--out", str(tmp_path / "x.json")])
    one_line(code, capsys.readouterr().err, expected)
    one_line(train.main(["-r", str(folder), "--trust-checkpoint"]), capsys.readouterr().err, expected)
    assert predict.main(["-r", str(folder), "--out", str(tmp_path / "p.jsonl"), "--trust-checkpoint"]) == 2
    assert expected in capsys.readouterr().err
    assert tree(tmp_path) == before, changes(before, tree(tmp_path))


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda s: s["per_fold"].append(dict(s["per_fold"][0])), "fold 0 is listed twice"),
        (lambda s: s["per_fold"][1].update(fold=7), "not one of folds 0 to 2"),
        (lambda s: s["per_fold"][1].update(run_dir="../elsewhere"), "has no run_dir fold-1"),
        (lambda s: s.update(per_fold={"0": {}}), "per_fold is dict, not a list"),
    ],
    ids=["a fold twice", "a fold beyond the count", "another folder", "not a list"],
)
def test_a_damaged_summary_is_one_line_for_train_and_test(damage, expected, cv_dir, tmp_path, capsys):
    folder = tmp_path / "cv"
    shutil.copytree(cv_dir, folder)
    summary = json.loads((folder / "cv_summary.json").read_text())
    damage(summary)
    (folder / "cv_summary.json").write_text(json.dumps(summary))
    before = tree(tmp_path)
    capsys.readouterr()
    one_line(train.main(["-r", str(folder), "--trust-checkpoint"]), capsys.readouterr().err, "cv_summary.json: damaged", expected)
    code = evaluate(["-r", str(folder), "--trust-checkpoint", "--out", str(tmp_path / "x.json")])
    one_line(code, capsys.readouterr().err, "cv_summary.json: damaged", expected)
    assert tree(tmp_path) == before, changes(before, tree(tmp_path))
