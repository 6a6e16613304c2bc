"""The config system: JSON/YAML, defaults, command-line overrides, building by name, and one-line user errors."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import ROOT, TIMING_KEYS, TINY, run_here, run_script, set_key, tiny_config, write_config

import train
from app.config import (
    SCHEMA,
    TRAINER_SCHEMA,
    Config,
    apply_override,
    build_loss,
    build_lr_scheduler,
    build_metrics,
    build_optimizer,
    read_config_file,
    reference_markdown,
)
from utils.errors import EXIT_USER_ERROR, UserError

THREADS = {"OMP_NUM_THREADS": "1"}  # the test machine's cores are shared; one thread avoids oversubscription


def config_from(tmp_path: Path, data: dict, name: str = "config.json", overrides: tuple[str, ...] = ()) -> Config:
    return Config.from_file(write_config(tmp_path, data, name), overrides)


def minimal() -> dict:
    """The required keys only; everything else comes from the defaults."""
    return {
        "arch": {"type": "fixtures.model:TinyCNN"},
        "data_loader": {"type": "fixtures.data:TinyDataLoader", "args": {"batch_size": 64}},
        "loss": "fixtures.metric:nll_loss",
        "optimizer": {"type": "Adam", "args": {"lr": 0.01}},
    }


# -- reading and resolving ----------------------------------------------------------------------


def test_yaml_and_json_give_the_same_resolved_config(tmp_path):
    data = tiny_config(tmp_path)
    json_path = write_config(tmp_path, data, "a.json")
    for name in ("b.yaml", "c.yml"):
        (tmp_path / name).write_text(yaml.safe_dump(data, sort_keys=False))
    resolved = [Config.from_file(tmp_path / name).to_dict() for name in ("a.json", "b.yaml", "c.yml")]
    assert resolved[0] == resolved[1] == resolved[2]
    assert resolved[0]["trainer"]["save_dir"] == str(tmp_path / "saved")
    assert read_config_file(json_path) == data  # reading adds nothing; defaults are the Config's job


def test_yaml_values_mean_what_they_look_like(tmp_path):
    """YAML 1.1 would read `off` as False and `1e-3` as a string; configs use YAML 1.2 scalars."""
    text = yaml.safe_dump(json.loads(TINY.read_text()), sort_keys=False)
    text = text.replace("lr: 0.002", "lr: 1e-3").replace("monitor: min val_loss", "monitor: off").replace("name: tiny", "name: 2024-01-01")
    (tmp_path / "c.yaml").write_text(text)
    config = Config.from_file(tmp_path / "c.yaml", ["trainer.early_stop=0", "data_loader.args.shuffle=false"])
    assert config["optimizer"]["args"]["lr"] == 0.001 and config["optimizer"]["args"]["weight_decay"] == 0.0001
    assert config.trainer["monitor"] == "off" and config.monitor() == ("off", None)
    assert config["name"] == "2024-01-01"
    assert config["data_loader"]["args"]["shuffle"] is False
    same = Config.from_file(TINY, ["trainer.monitor=off", "optimizer.args.lr=1e-3", "name=2024-01-01"])
    assert same.trainer["monitor"] == "off" and same["optimizer"]["args"]["lr"] == 0.001 and same["name"] == "2024-01-01"


def test_documented_keys_have_defaults(tmp_path):
    config = config_from(tmp_path, minimal())
    assert {key: config.trainer[key] for key in TRAINER_SCHEMA} == {key: spec.default for key, spec in TRAINER_SCHEMA.items()}
    assert config["lr_scheduler"] is None and config["metrics"] == [] and config["seed"] == 0
    assert config.monitor() == ("min", "val_loss")


# -- overrides ------------------------------------------------------------------------------------


def test_overrides_are_parsed_as_yaml_scalars_and_lists(tmp_path):
    config = config_from(
        tmp_path,
        tiny_config(tmp_path),
        overrides=(
            "trainer.epochs=3",
            "optimizer.args.lr=0.01",
            "arch.args.dropout=0",
            "metrics=['fixtures.metric:accuracy', {type: 'fixtures.metric:top_k_acc', args: {k: 2}, name: top2}]",
            "trainer.clip_grad_norm=1.5",
            "trainer.amp=bf16",
            "trainer.len_epoch=null",
            "lr_scheduler.args.gamma=0.1",
            "metrics.1.args.k=4",
            "name=my run",
        ),
    )
    assert config.trainer["epochs"] == 3 and config["optimizer"]["args"]["lr"] == 0.01
    assert config["arch"]["args"]["dropout"] == 0 and isinstance(config["arch"]["args"]["dropout"], int)
    assert config["metrics"] == ["fixtures.metric:accuracy", {"type": "fixtures.metric:top_k_acc", "args": {"k": 4}, "name": "top2"}]
    assert config.trainer["clip_grad_norm"] == 1.5 and config.trainer["amp"] == "bf16" and config.trainer["len_epoch"] is None
    assert config["lr_scheduler"]["args"] == {"step_size": 10, "gamma": 0.1}
    assert config["name"] == "my run"


def test_documented_keys_can_be_overridden_when_the_file_leaves_them_out(tmp_path):
    config = config_from(
        tmp_path,
        minimal(),
        overrides=(
            "trainer.epochs=2",
            "trainer.monitor=max val_accuracy",
            "metrics=['fixtures.metric:accuracy']",
            "lr_scheduler.type=StepLR",
            "lr_scheduler.args.step_size=3",
            "lr_scheduler.interval=step",
            "arch.args.dropout=0.5",
            "optimizer.param_groups=[{params: fc2, lr: 0.001}]",
        ),
    )
    assert config.trainer["epochs"] == 2
    assert config["lr_scheduler"] == {"type": "StepLR", "args": {"step_size": 3}, "interval": "step"}
    assert config["arch"] == {"type": "fixtures.model:TinyCNN", "args": {"dropout": 0.5}}
    model = config.init_obj("arch")
    optimizer = build_optimizer(config, model)
    assert [group["lr"] for group in optimizer.param_groups] == [0.01, 0.001]
    assert isinstance(build_lr_scheduler(config, optimizer), torch.optim.lr_scheduler.StepLR)


def test_unknown_override_keys_are_errors_with_the_full_key_path(tmp_path):
    path = write_config(tmp_path, tiny_config(tmp_path))
    cases = {
        "trainer.epochz=3": "'trainer.epochs'",
        "epochs=3": "'trainer.epochs'",
        "optimizer.args.lrr=0.1": "'optimizer.args.lr'",
        "optimiser.type=SGD": "'optimizer'",
        "arch.args.dropot=0": "'arch.args.dropout'",
        "lr_scheduler.intervall=step": "'lr_scheduler.interval'",
    }
    for override, hint in cases.items():
        with pytest.raises(UserError) as info:
            Config.from_file(path, [override])
        message = str(info.value)
        assert message.startswith(str(path)) and "did you mean" in message and hint in message, message
        assert "\n" not in message


def test_plus_adds_a_key_that_does_not_exist():
    data = {"a": {"b": 1}}
    with pytest.raises(UserError, match="unknown key a.c"):
        apply_override(data, "a.c.d=[1, 2]")
    apply_override(data, "+a.c.d=[1, 2]")
    assert data == {"a": {"b": 1, "c": {"d": [1, 2]}}}


def test_added_keys_are_still_validated(tmp_path):
    path = write_config(tmp_path, tiny_config(tmp_path))
    with pytest.raises(UserError, match=r"data_loader\.args\.colour: TinyDataLoader has no parameter"):
        Config.from_file(path, ["+data_loader.args.colour=red"])
    with pytest.raises(UserError, match=r"trainer\.colour: unknown key"):
        Config.from_file(path, ["+trainer.colour=red"])


# -- building by name -----------------------------------------------------------------------------


def test_types_resolve_in_torch_and_full_paths(tmp_path):
    data = minimal()
    data["arch"] = {"type": "Linear", "args": {"in_features": 64, "out_features": 8}}  # torch.nn
    data["loss"] = {"type": "CrossEntropyLoss", "args": {"label_smoothing": 0.1}}  # torch.nn
    data["metrics"] = ["fixtures.metric:accuracy", {"type": "fixtures.metric:top_k_acc", "args": {"k": 2}, "name": "top2"}]
    data["optimizer"] = {"type": "torch.optim:SGD", "args": {"lr": 0.1, "momentum": 0.9}}
    data["lr_scheduler"] = {"type": "OneCycleLR", "args": {"max_lr": 0.1, "total_steps": 10}, "interval": "step"}
    config = config_from(tmp_path, data)
    model = config.init_obj("arch")
    assert isinstance(model, torch.nn.Linear) and model.out_features == 8
    loss = build_loss(config)
    assert isinstance(loss, torch.nn.CrossEntropyLoss) and loss.label_smoothing == 0.1
    optimizer = build_optimizer(config, model)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    assert isinstance(build_lr_scheduler(config, optimizer), torch.optim.lr_scheduler.OneCycleLR)
    metrics = build_metrics(config)
    output, target = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]]), torch.tensor([2, 0])
    assert list(metrics) == ["accuracy", "top2"]
    assert metrics["accuracy"](output, target).item() == 0.5 and metrics["top2"](output, target).item() == 1.0


def test_init_ftn_binds_args_and_lr_scheduler_is_optional(tmp_path):
    data = minimal()
    data["loss"] = {"type": "torch.nn.functional:cross_entropy", "args": {"label_smoothing": 0.2}}
    config = config_from(tmp_path, data)
    loss = config.init_ftn("loss")
    output, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    assert torch.equal(loss(output, target), F.cross_entropy(output, target, label_smoothing=0.2))
    model = config.init_obj("arch")
    assert build_lr_scheduler(config, build_optimizer(config, model)) is None


# -- user errors: one line, exit code 2, the key named, nothing left behind -------------------------


def _delete(path: str):
    def change(data: dict) -> None:
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node[part]
        del node[last]

    return change


# (id, change to the file, overrides, text the message must hold)
ERRORS = [
    ("unknown top-level key", set_key("epochs", 3), [], ["epochs: unknown top-level key", "'trainer.epochs'"]),
    ("unknown trainer key", set_key("trainer.epochz", 3), [], ["trainer.epochz: unknown key", "'trainer.epochs'"]),
    ("wrong type", set_key("trainer.epochs", "ten"), [], ["trainer.epochs: expected int, got str 'ten'"]),
    ("wrong type by override", None, ["trainer.tensorboard=maybe"], ["trainer.tensorboard: expected bool"]),
    ("choice", None, ["trainer.amp=fp8"], ["trainer.amp: must be one of"]),
    ("missing required key", _delete("arch"), [], ["arch: missing"]),
    ("missing type", _delete("optimizer.type"), [], ['optimizer: missing "type"']),
    ("unknown node key", set_key("optimizer.arg", {}), [], ["optimizer.arg: unknown key", "'optimizer.args'"]),
    ("unknown class", None, ["arch.type=Conv2e"], ["arch.type: unknown name 'Conv2e'", "'Conv2d'"]),
    ("unknown loss", set_key("loss", "NLLLos"), [], ["loss.type: unknown name 'NLLLos'", "'NLLLoss'"]),
    ("unknown metric", set_key("metrics", ["MulticlassAcuracy"]), [], ["metrics.0.type: unknown name 'MulticlassAcuracy'", "'MulticlassAccuracy'"]),
    ("unknown module path", None, ["optimizer.type=torch.optimz:SGD"], ["optimizer.type: cannot import module 'torch.optimz'"]),
    ("unknown argument", set_key("arch.args.dropot", 0.1), [], ["arch.args.dropot: TinyCNN has no parameter", "'arch.args.dropout'"]),
    ("missing argument", set_key("lr_scheduler", {"type": "StepLR"}), [], ["lr_scheduler.args.step_size: StepLR needs this argument"]),
    ("bad monitor", None, ["trainer.monitor=maximize val_accuracy"], ["trainer.monitor: must be"]),
    ("monitor not produced", None, ["trainer.monitor=max val_precision"], ["trainer.monitor: the run does not produce 'val_precision'"]),
    ("monitor without validation", None, ["data_loader.args.validation_split=0"], ["trainer.monitor: monitors 'val_loss'"]),
    ("object rejects a value", None, ["optimizer.args.lr=fast"], ["optimizer.args.lr: Adam rejected 'fast'"]),
    ("object rejects a number", None, ["optimizer.args.lr=-1"], ["optimizer.args.lr: Adam(...) rejected its arguments: Invalid learning rate: -1"]),
    ("loader rejects a value", None, ["data_loader.args.batch_size=0"], ["data_loader.args.batch_size: must be a whole number from 1"]),
    ("arg supplied by the code", set_key("optimizer.args.params", []), [], ["optimizer.args: ['params'] are supplied by the code"]),
    ("bad interval", set_key("lr_scheduler.interval", "batch"), [], ["lr_scheduler.interval: must be"]),
    ("bad name", set_key("name", "a/b"), [], ["name: 'a/b' is not a folder name"]),
    ("bad override syntax", None, ["trainer.epochs"], ["override 'trainer.epochs': write overrides as key.path=value"]),
    ("override into a value", None, ["seed.x=1"], ["override 'seed.x=1': seed is 0, not a mapping"]),
]


@pytest.mark.parametrize("change, overrides, expected", [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS])
def test_user_errors_are_one_line_naming_file_and_key(tmp_path, capsys, change, overrides, expected):
    """Through ``train.main`` (what ``python train.py`` runs); the subprocess test below covers the script itself."""
    data = tiny_config(tmp_path)
    if change is not None:
        change(data)
    path = write_config(tmp_path, data)
    code = train.main(["-c", str(path), *overrides])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR, err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: "), err
    for text in expected:
        assert text in err, err
    assert not (tmp_path / "saved").exists()


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("broken.yaml", "name: [unclosed\n", "invalid YAML at line 2"),
        ("broken.json", '{"name": "x",}', "invalid JSON at line 1"),
        ("list.yaml", "- a\n- b\n", "the top level of a config must be a mapping"),
        ("config.txt", "{}", "a config must be a .json, .yaml or .yml file"),
    ],
)
def test_unreadable_config_files_are_user_errors(tmp_path, capsys, name, text, expected):
    (tmp_path / name).write_text(text)
    assert train.main(["-c", str(tmp_path / name)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / name}: ") and expected in err and err.count("\n") == 1, err


def test_missing_config_file_is_a_user_error(tmp_path, capsys):
    assert train.main(["-c", str(tmp_path / "nope.yaml")]) == EXIT_USER_ERROR
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.yaml'}: config file not found; pass an existing file with -c\n"


def test_errors_found_while_building_the_trainer_leave_no_run_dir(tmp_path, capsys):
    path = write_config(tmp_path, tiny_config(tmp_path))
    assert train.main(["-c", str(path), "data_loader.args.batch_size=5000", "data_loader.args.drop_last=true"]) == EXIT_USER_ERROR
    assert "data_loader" in capsys.readouterr().err
    assert not (tmp_path / "saved").exists()


@pytest.mark.slow
def test_train_py_reports_user_errors_without_a_traceback(tmp_path):
    """The script itself: ``error: <file>: <key>: ...`` on one stderr line, exit code 2, nothing written.

    The error comes from building the optimizer, after data and model, the deepest point a config error can reach.
    """
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    result = run_script("train.py", "-c", str(path), "trainer.epochs=1", "optimizer.args.lr=fast", env=THREADS)
    assert result.returncode == EXIT_USER_ERROR, result.stderr
    assert result.stderr.startswith(f"error: {path}: optimizer.args.lr: Adam rejected 'fast'"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "saved").exists()


# -- a real run -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_overrides_land_in_the_saved_config_and_checkpoint(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    overrides = [
        "trainer.epochs=1",
        "optimizer.args.lr=0.01",
        "arch.args.dropout=0",
        "trainer.limit_batches=3",
        "lr_scheduler=null",
        "seed=7",
    ]
    result = run_here("train.py", "--run-id", "r", "-c", str(path), *overrides, env=THREADS)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "saved" / "tiny" / "r"
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved == Config.from_file(path, overrides).to_dict()
    assert saved["trainer"]["epochs"] == 1 and saved["optimizer"]["args"]["lr"] == 0.01 and saved["arch"]["args"]["dropout"] == 0
    assert saved["lr_scheduler"] is None and saved["seed"] == 7
    assert set(saved["trainer"]) == set(TRAINER_SCHEMA)  # every default is written out
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)
    assert checkpoint["config"] == saved
    assert Config.from_dict(saved, "saved").to_dict() == saved  # a saved config is a valid config


def test_the_seed_decides_the_run(tmp_path, capsys):
    """Same seed, same numbers (model init, data order, dropout); another seed, other numbers."""
    rows = {}
    for run_id, seed in (("a", 3), ("b", 3), ("c", 4)):
        random.seed(run_id)  # disturb every global RNG: the config's seed must override all of them
        np.random.seed(ord(run_id))
        torch.manual_seed(ord(run_id))
        config = copy.deepcopy(tiny_config(tmp_path, epochs=1, limit_batches=4, monitor="off"))
        config["seed"] = seed
        assert train.main(["--run-id", run_id, "-c", str(write_config(tmp_path, config))]) == 0, capsys.readouterr().err
        row = json.loads((tmp_path / "saved" / "tiny" / run_id / "metrics.jsonl").read_text())
        rows[run_id] = {key: value for key, value in row.items() if key not in TIMING_KEYS}
    assert rows["a"] == rows["b"]
    assert rows["a"]["loss"] != rows["c"]["loss"]


# -- documentation ------------------------------------------------------------------------------


def test_reference_table_lists_every_key():
    table = reference_markdown()
    for key in SCHEMA:
        assert f"| `{key}` |" in table
    for key in TRAINER_SCHEMA:
        assert f"| `trainer.{key}` |" in table
    for key in ("type", "args", "param_groups", "interval", "name"):
        assert f"| `{key}` |" in table


def test_the_configuration_reference_documents_every_key():
    """docs/configuration.md holds the table generated from the declarations (new projects copy docs/ too)."""
    reference = (ROOT / "docs" / "configuration.md").read_text()
    missing = [key for key in SCHEMA if f"`{key}`" not in reference]
    missing += [f"trainer.{key}" for key in TRAINER_SCHEMA if f"`trainer.{key}`" not in reference]
    assert not missing, f"docs/configuration.md does not document {missing}"
    stale = "docs/configuration.md's table is stale: regenerate it with .venv/bin/python -m app.config.docs --write docs/configuration.md"
    assert reference_markdown().strip() in reference, stale


def test_a_project_without_one_of_the_places_short_names_are_looked_in_finds_them_in_the_next(tmp_path, monkeypatch):
    """A user who deletes ``model/metric.py`` (torchmetrics' names only) or ``model/loss.py`` (``torch.nn``'s):
    a short name is looked up in the next place, and an unknown one names the places it looked in."""
    from app.config import names

    monkeypatch.setitem(names.NAMESPACES, "loss", ("model.no_such_loss_module", "torch.nn"))
    assert names.resolve_type("loss", "MSELoss", "c.json") is torch.nn.MSELoss
    with pytest.raises(UserError, match=r"^c\.json: loss\.type: unknown name 'huber' \(looked in model\.no_such_loss_module, torch\.nn\)"):
        names.resolve_type("loss", "huber", "c.json")
    (tmp_path / "broken_losses.py").write_text("import no_such_package_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(names.NAMESPACES, "loss", ("broken_losses", "torch.nn"))
    with pytest.raises(ModuleNotFoundError, match="no_such_package_xyz"):  # a module that fails inside is the user's bug, not skipped
        names.resolve_type("loss", "MSELoss", "c.json")
