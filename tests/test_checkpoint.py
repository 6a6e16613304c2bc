"""The checkpoint contract: safe to load, never half-written, pruned, fine-tunable, exportable."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, build_trainer, entry_point, metric_rows, run_here, run_script, tiny_config, write_config

from utils.checkpoints import VERSION, clean_state_dict, load_checkpoint
from utils.errors import UserError

SCHEDULERS = [
    {"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}},
    {"type": "CosineAnnealingLR", "args": {"T_max": 4}},
    {"type": "OneCycleLR", "args": {"max_lr": 0.01, "total_steps": 100}, "interval": "step"},
    {"type": "ReduceLROnPlateau", "args": {"patience": 0}},
]


@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=lambda s: s["type"])
def test_every_checkpoint_kind_loads_with_weights_only(tmp_path, scheduler):
    fp16 = "fp16" if scheduler["type"] == "StepLR" else None  # fp16 autocast is slow on CPU: once is enough
    config = tiny_config(tmp_path, epochs=2, save_period=1, save_every_n_steps=4, limit_batches=10, amp=fp16)
    config["data_loader"]["args"]["batch_size"] = 8  # fp16 costs ~25 ms a sample on CPU; the files do not depend on it
    config["lr_scheduler"] = scheduler
    trainer, run_dir = build_trainer(tmp_path, config)
    trainer.train()
    files = sorted((run_dir / "checkpoints").glob("*.pth"))
    assert [f.name for f in files] == ["best.pth", "epoch-1.pth", "epoch-2.pth", "last.pth"]
    for path in files:
        state = torch.load(path, weights_only=True, map_location="cpu")
        assert state["config"]["lr_scheduler"]["type"] == scheduler["type"]
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model"])
        assert set(state["ranks"][0]["rng"]) >= {"python", "numpy", "torch"}
    assert (state["precision"] is not None) == (scheduler["type"] == "StepLR")
    assert not list((run_dir / "checkpoints").glob(".*tmp*"))


def test_compiled_and_ddp_prefixes_never_reach_a_checkpoint():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    wrapped = torch.compile(model)  # state_dict keys gain "_orig_mod." (nothing is compiled until called)
    assert next(iter(wrapped.state_dict())).startswith("_orig_mod.")
    prefixed = {f"module.{k}": v for k, v in wrapped.state_dict().items()}
    assert list(clean_state_dict(prefixed)) == list(model.state_dict())


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_a_loadable_last_checkpoint(tmp_path, rng):
    """Checkpoint after every step and kill the process at random moments, mid-write included."""
    config = write_config(tmp_path, tiny_config(tmp_path, epochs=50, save_every_n_steps=1))
    last = tmp_path / "saved" / "tiny" / "run" / "checkpoints" / "last.pth"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    for attempt in range(3):
        args = ["-c", str(config), "--run-id", "run", "--trust-checkpoint"] if attempt == 0 else ["-r", str(last), "--trust-checkpoint"]
        process = subprocess.Popen(
            [sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while not last.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        step_before = torch.load(last, weights_only=True)["progress"]["global_step"] if attempt else 0
        time.sleep(rng.uniform(0.2, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        state = torch.load(last, weights_only=True, map_location="cpu")
        assert state["progress"]["global_step"] >= step_before
    progress = state["progress"]
    one_more = progress["epoch"] + (0 if progress["batch_in_epoch"] else 1)  # finish the epoch it was in, or train one more
    resumed = run_here("train.py", "-r", str(last), f"trainer.epochs={one_more}")
    assert resumed.returncode == 0, resumed.stderr  # the stale temporary file is swept
    assert not list(last.parent.glob(".*tmp*"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("finished")
    trainer, run_dir = build_trainer(tmp_path, tiny_config(tmp_path, epochs=4, save_period=1, keep_last=2))
    trainer.train()
    return run_dir


def test_keep_last_keeps_the_newest_epoch_files_and_always_last_and_best(finished_run):
    names = sorted(p.name for p in (finished_run / "checkpoints").iterdir())
    assert names == ["best.pth", "epoch-3.pth", "epoch-4.pth", "last.pth"]
    assert torch.load(finished_run / "checkpoints" / "epoch-3.pth", weights_only=True)["progress"]["epoch"] == 3


def test_any_garbage_is_a_one_line_error(tmp_path, recwarn):
    """Random bytes make torch.load raise UnpicklingError mostly, but also IndexError, KeyError and
    UnicodeDecodeError, and warn about odd pickle protocols: every one is the same clean error."""
    generator = random.Random(0)
    path = tmp_path / "garbage.pth"
    for _ in range(300):
        path.write_bytes(generator.randbytes(512))
        with pytest.raises(UserError, match=r"not a readable checkpoint") as caught:
            load_checkpoint(path)
        assert "\n" not in str(caught.value)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "test.py"])
def test_missing_truncated_or_foreign_files_are_one_line_errors(tmp_path, finished_run, script, capsys):
    good = (finished_run / "checkpoints" / "last.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(4096))
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": torch.nn.Linear(2, 2).state_dict()}, foreign)
    main = entry_point(script)
    for path in (tmp_path / "missing.pth", truncated, foreign):  # in-process, through the scripts' own main()
        assert main(["-r", str(path)]) == 2, path
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}: ") and err.count("\n") == 1, err
    result = run_script(script, "-r", str(garbage))  # and once as the real script: exit code 2, no traceback
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {garbage}: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in finished_run.parent.iterdir()) == [finished_run.name]


@pytest.mark.slow
def test_fine_tuning_takes_weights_only_into_a_new_run(tmp_path, finished_run):
    source = finished_run / "checkpoints" / "best.pth"
    config = tiny_config(tmp_path, epochs=1)
    config["optimizer"] = {"type": "SGD", "args": {"lr": 0.0}}  # lr 0: the weights must stay the checkpoint's
    path = write_config(tmp_path, config, "finetune.json")
    result = run_here("train.py", "-r", str(source), "-c", str(path), "--run-id", "tuned")
    assert result.returncode == 0, result.stderr
    tuned = torch.load(tmp_path / "saved" / "tiny" / "tuned" / "checkpoints" / "last.pth", weights_only=True)
    original = torch.load(source, weights_only=True)
    assert tuned["progress"]["epoch"] == 1 and tuned["progress"]["global_step"] == 20 and tuned["optimizer"]["state"]["param_groups"][0]["lr"] == 0.0
    for key, value in original["model"].items():
        assert torch.equal(tuned["model"][key], value), key


@pytest.mark.slow
def test_fine_tuning_names_mismatched_weights_and_strict_is_configurable(tmp_path, finished_run):
    source = finished_run / "checkpoints" / "best.pth"
    config = tiny_config(tmp_path, epochs=1)
    config["arch"]["args"]["num_classes"] = 12  # a head of another shape
    config["metrics"] = ["fixtures.metric:accuracy"]
    path = write_config(tmp_path, config, "five.json")
    strict = run_here("train.py", "-r", str(source), "-c", str(path), "--run-id", "strict")
    assert strict.returncode == 2
    assert "different shapes ['fc2.weight', 'fc2.bias']" in strict.stderr and "trainer.load_strict=false" in strict.stderr
    assert not (tmp_path / "saved").exists()
    loose = run_here("train.py", "-r", str(source), "-c", str(path), "--run-id", "loose", "trainer.load_strict=false")
    assert loose.returncode == 0, loose.stderr
    assert "different shapes ['fc2.weight', 'fc2.bias']" in loose.stdout
    tuned = torch.load(tmp_path / "saved" / "tiny" / "loose" / "checkpoints" / "last.pth", weights_only=True)
    assert tuned["model"]["fc2.weight"].shape == (12, 128)
    assert len(metric_rows(tmp_path / "saved" / "tiny" / "loose")) == 1


@pytest.mark.slow
def test_export_runs_without_this_code(tmp_path, finished_run):
    exported = tmp_path / "model.pt2"
    result = run_here(
        "test.py", "-r", str(finished_run / "checkpoints" / "best.pth"), "--export", str(exported), "--out", str(tmp_path / "m.json")
    )
    assert result.returncode == 0, result.stderr
    images = torch.randn(7, 1, 8, 8)
    script = "import sys, torch; m = torch.export.load(sys.argv[1]).module(); torch.save(m(torch.load(sys.argv[2])), sys.argv[3])"
    torch.save(images, tmp_path / "in.pt")
    # A bare interpreter in an empty folder: nothing of this project is importable there.
    loaded = subprocess.run(
        [sys.executable, "-c", script, str(exported), str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert loaded.returncode == 0, loaded.stderr
    sys.path.insert(0, str(ROOT))
    from fixtures.model import TinyCNN

    model = TinyCNN()
    model.load_state_dict(torch.load(finished_run / "checkpoints" / "best.pth", weights_only=True)["model"])
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), model.eval()(images))
    assert json.loads((tmp_path / "m.json").read_text())["samples"] == 359


@pytest.mark.slow
def test_a_format_1_checkpoint_is_evaluated_and_fine_tuned_but_not_resumed(tmp_path, finished_run):
    """Checkpoints written before the resume state became per-part (format 1) keep their weights and config."""
    current = torch.load(finished_run / "checkpoints" / "last.pth", weights_only=True)
    old = {  # the layout format 1 had
        "format": current["format"],
        "version": 1,
        "arch": current["arch"],
        "model": current["model"],
        "optimizer": current["optimizer"]["state"],
        "lr_scheduler": None,
        "scaler": None,
        "epoch": 4,
        "batch_in_epoch": 0,
        "global_step": current["progress"]["global_step"],
        "monitor_best": 0.1,
        "not_improved_count": 0,
        "ranks": [{"rng": current["ranks"][0]["rng"], "epoch_sums": None, "epoch_samples": 0}],
        "world_size": 1,
        "config": current["config"],
    }
    run_dir = tmp_path / "old_run"
    (run_dir / "checkpoints").mkdir(parents=True)
    path = run_dir / "checkpoints" / "last.pth"
    torch.save(old, path)
    tested = run_here("test.py", "-r", str(path), "--out", str(tmp_path / "m.json"))
    assert tested.returncode == 0, tested.stderr
    assert json.loads((tmp_path / "m.json").read_text())["epoch"] == 4
    resumed = run_here("train.py", "-r", str(path))
    assert resumed.returncode == 2 and resumed.stderr.count("\n") == 1
    assert f"checkpoint format version 1, and this code resumes version {VERSION}; fine-tune from it with -r FILE -c CONFIG" in resumed.stderr
    assert sorted(p.name for p in run_dir.rglob("*")) == ["checkpoints", "last.pth"]  # nothing written


def test_a_model_with_a_child_named_module_loads_its_own_weights():
    """Wrapper prefixes (DDP's ``module.``) are stripped from saved names; a model whose own child is
    called ``module`` is compared under the same cleaning and loaded under its real names."""
    from utils.checkpoints.weights import clean_state_dict, load_weights

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module, self.head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)

    saved, loaded = Wrapped(), Wrapped()
    report = load_weights(loaded, clean_state_dict(saved.state_dict()), strict=True, source="x.pth")
    assert report.missing == report.unexpected == [] and len(report.loaded) == 4
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), loaded.state_dict().values()))


def test_a_crafted_file_that_would_unpack_to_gigabytes_is_one_line_before_it_is_read(tmp_path):
    """A saved tensor keeps its strides (a one-element view of 10^9 elements), and torch's reader
    inflates compressed records torch never writes: both are refused before anything is allocated."""
    import zipfile

    expanded = tmp_path / "expanded.pth"
    torch.save({"model": {"w": torch.zeros(1).expand(10**9)}}, expanded)
    with pytest.raises(UserError, match="1,000,000,000 elements in 4 bytes"):
        load_checkpoint(expanded)
    plain, packed = tmp_path / "plain.pth", tmp_path / "packed.pth"
    torch.save({"model": {"w": torch.zeros(1 << 20)}}, plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as target:
        for record in source.infolist():
            target.writestr(record.filename, source.read(record))
    assert packed.stat().st_size < plain.stat().st_size // 50
    with pytest.raises(UserError, match="compressed records, which torch never writes"):
        load_checkpoint(packed)


def test_a_checkpoint_whose_version_was_lowered_is_still_checked(tmp_path, finished_run):
    state = torch.load(finished_run / "checkpoints" / "last.pth", weights_only=True)
    state["version"] = 2  # checksums came with version 3: lowering it must not switch them off
    torch.save(state, tmp_path / "older.pth")
    with pytest.raises(UserError, match="the part 'version' does not match its checksum"):
        load_checkpoint(tmp_path / "older.pth")
