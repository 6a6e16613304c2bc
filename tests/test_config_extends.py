"""A family of configs (issue 39): files that extend a base, patch what differs, and say where every
value came from. In-process and tiny: the merge is checked against configs written out in full by
hand, and a variant's training against the written-out config's, weight for weight."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import last_checkpoint, run_here, tiny_config, write_config

import sweep
from app.config import Config, load_chain
from utils.errors import UserError

THREADS = {"OMP_NUM_THREADS": "1"}
VARIANTS = {  # dropout and learning rate, paired: what a grid's cross-product cannot say
    "small": (0.0, 0.01),
    "medium": (0.25, 0.005),
    "large": (0.5, 0.002),
}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def base_config(tmp_path: Path) -> dict:
    """The tiny digits experiment: 1 epoch of 2 batches."""
    return tiny_config(tmp_path, epochs=1, limit_batches=2, save_period=1)


def written_out(tmp_path: Path, name: str) -> dict:
    """Variant ``name`` written out in full, by hand, from the base."""
    data = base_config(tmp_path)
    dropout, lr = VARIANTS[name]
    data["name"] = f"digits_{name}"
    data["arch"]["args"]["dropout"] = dropout
    data["optimizer"]["args"]["lr"] = lr
    data["metrics"] = [m for m in data["metrics"] if m.get("type") != "fixtures.metric:top_k_acc"] + [
        {"type": "fixtures.metric:top_k_acc", "args": {"k": 2}, "name": "top2"}
    ]
    data["lr_scheduler"] = None
    return data


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Path:
    """``base.yaml`` and three small variants extending it (JSON and YAML mixed), each three keys and a patch."""
    tmp = tmp_path_factory.mktemp("family")
    write_yaml(tmp / "base.yaml", base_config(tmp))
    for index, (name, (dropout, lr)) in enumerate(VARIANTS.items()):
        variant = {
            "extends": "base.yaml",
            "name": f"digits_{name}",
            "arch": {"args": {"dropout": dropout}},
            "optimizer": {"args": {"lr": lr}},
            "lr_scheduler": None,
            "patch": {"~metrics[type=fixtures.metric:top_k_acc]": None, "metrics[+]": {"type": "fixtures.metric:top_k_acc", "args": {"k": 2}, "name": "top2"}},
        }
        (tmp / "variants").mkdir(exist_ok=True)
        if index % 2:
            write_config(tmp / "variants", {**variant, "extends": "../base.yaml"}, f"{name}.json")
        else:
            write_yaml(tmp / "variants" / f"{name}.yaml", {**variant, "extends": "../base.yaml"})
    return tmp


def variant_path(family: Path, name: str) -> Path:
    return next((family / "variants").glob(f"{name}.*"))


def test_three_variants_resolve_as_the_configs_written_out_in_full(family):
    for name in VARIANTS:
        config = Config.from_file(variant_path(family, name))
        assert config.to_dict() == Config.from_dict(written_out(family, name), "written out").to_dict(), name
        assert "extends" not in config.to_dict() and "patch" not in config.to_dict()


def test_a_variant_trains_to_the_weights_of_its_written_out_config_and_records_its_chain(family):
    full = write_config(family, written_out(family, "medium"), "medium_full.json")
    override = "metrics[name=top2].args.k=3"  # a metric's argument, patched by the metric's name
    assert run_here("train.py", "-c", full, "--run-id", "full", "metrics.1.args.k=3", env=THREADS).returncode == 0
    result = run_here("train.py", "-c", variant_path(family, "medium"), "--run-id", "variant", override, env=THREADS)
    assert result.returncode == 0, result.stderr
    runs = family / "saved" / "digits_medium"
    a, b = last_checkpoint(runs / "full"), last_checkpoint(runs / "variant")
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    saved = json.loads((runs / "variant" / "config.json").read_text())
    assert saved == json.loads((runs / "full" / "config.json").read_text())
    assert saved["metrics"][-1] == {"type": "fixtures.metric:top_k_acc", "args": {"k": 3}, "name": "top2"}
    printed = run_here("train.py", "-r", runs / "variant" / "checkpoints" / "last.pth", "--print-config")
    assert printed.returncode == 0 and "optimizer.args.lr: 0.005" in printed.stdout and "last.pth (its config)" in printed.stdout
    manifest = json.loads((runs / "variant" / "manifest.json").read_text())
    chain = [family / "base.yaml", variant_path(family, "medium")]
    assert [(Path(f["path"]).resolve(), f["sha256"]) for f in manifest["config_files"]] == [
        (p.resolve(), hashlib.sha256(p.read_bytes()).hexdigest()) for p in chain
    ]


def test_merge_order_replace_delete_and_bases_of_bases(tmp_path):
    base = base_config(tmp_path)
    write_config(tmp_path, base, "root.json")
    write_yaml(
        tmp_path / "mid.yaml", {"extends": "root.json", "seed": 1, "trainer": {"epochs": 3}, "data_loader": {"args": {"shuffle": False}}}
    )
    write_yaml(tmp_path / "other.yaml", {"seed": 2, "optimizer": {"_replace_": True, "type": "SGD", "args": {"lr": 0.1}}})
    top = write_yaml(
        tmp_path / "top.yaml",
        {"extends": ["mid.yaml", "other.yaml"], "trainer": {"early_stop": 1}, "lr_scheduler": {"_delete_": True}, "device": "cpu"},
    )
    expected = copy.deepcopy(base)
    expected["trainer"].update(epochs=3, early_stop=1)
    expected["data_loader"]["args"]["shuffle"] = False
    expected.update(seed=2, device="cpu", optimizer={"type": "SGD", "args": {"lr": 0.1}})  # later base over earlier; replaced, not merged
    del expected["lr_scheduler"]  # deleted: the documented default (null) again
    assert Config.from_file(top).to_dict() == Config.from_dict(expected, "by hand").to_dict()
    assert Config.from_file(top).to_dict()["lr_scheduler"] is None


def test_a_patch_in_a_file_and_the_same_key_paths_on_the_command_line_agree(tmp_path):
    base = base_config(tmp_path)
    base["metrics"] = ["fixtures.metric:accuracy", {"type": "fixtures.metric:top_k_acc", "args": {"k": 3}}, {"type": "fixtures.metric:top_k_acc", "args": {"k": 5}, "name": "top5"}]
    write_config(tmp_path, base, "base.json")
    paths = {
        "metrics[0]": "fixtures.metric:Accuracy",  # by index
        "metrics[name=top5].args.k": 4,  # by name
        "~metrics[name=top_k_acc]": None,  # the unnamed top_k_acc: its type is its name ([type=...] would be two)
        "metrics[+]": {"type": "fixtures.metric:top_k_acc", "args": {"k": 2}, "name": "top2"},
        "~lr_scheduler": None,
    }
    patched = write_yaml(tmp_path / "patched.yaml", {"extends": "base.json", "patch": paths})
    overrides = [key if value is None else f"{key}={json.dumps(value)}" for key, value in paths.items()]
    in_file, on_line = Config.from_file(patched).to_dict(), Config.from_file(tmp_path / "base.json", overrides).to_dict()
    assert in_file == on_line
    assert in_file["metrics"] == [
        "fixtures.metric:Accuracy",
        {"type": "fixtures.metric:top_k_acc", "args": {"k": 4}, "name": "top5"},
        {"type": "fixtures.metric:top_k_acc", "args": {"k": 2}, "name": "top2"},
    ]
    assert in_file["lr_scheduler"] is None
    with pytest.raises(UserError, match=r"metrics\[type=fixtures.metric:top_k_acc\]: items \[1, 2\] both have type 'fixtures.metric:top_k_acc'; select one by index"):
        Config.from_file(tmp_path / "base.json", ["metrics[type=fixtures.metric:top_k_acc].args.k=1"])


def test_vars_hold_the_users_values_and_references_resolve_after_merging_across_bases(tmp_path):
    base = base_config(tmp_path)
    base["vars"] = {"drop": 0.1, "tag": "base"}
    base["arch"]["args"]["dropout"] = "${vars.drop}"
    base["name"] = "digits_${vars.tag}"
    write_config(tmp_path, base, "base.json")
    variant = write_yaml(tmp_path / "v.yaml", {"extends": "base.json", "vars": {"drop": 0.4}})
    config = Config.from_file(variant)
    assert config["arch"]["args"]["dropout"] == 0.4 and config["name"] == "digits_base" and config["vars"] == {"drop": 0.4, "tag": "base"}
    on_line = Config.from_file(variant, ["vars.drop=0.3", "vars.tag=cli"])
    assert on_line["arch"]["args"]["dropout"] == 0.3 and on_line["name"] == "digits_cli"
    with pytest.raises(UserError, match="vars: must be a mapping of your own values"):
        Config.from_dict(base_config(tmp_path), "plain", ["vars=3"])
    with pytest.raises(UserError, match="variant: unknown top-level key; your own values go under vars"):
        Config.from_dict(base_config(tmp_path), "plain", ["+variant=wide"])


def line_of(path: Path, text: str) -> int:
    return next(number for number, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_print_config_names_the_file_line_or_override_of_every_value_and_trains_nothing(family, capsys):
    variant = variant_path(family, "small")
    for name in VARIANTS:  # YAML and JSON variants: both give lines
        path = variant_path(family, name)
        result = run_here("train.py", "-c", path, "--print-config", "optimizer.args.lr=0.3", "metrics[name=top2].args.k=4")
        assert result.returncode == 0 and not result.stderr, result.stderr
        rows = {line.split(":", 1)[0]: line for line in result.stdout.splitlines() if not line.startswith("#")}
        base = family / "base.yaml"
        assert rows["name"].endswith(f"# {path}:{line_of(path, 'name')}")
        assert rows["trainer.epochs"].endswith(f"# {base}:{line_of(base, 'epochs:')}")
        assert rows["optimizer.args.lr"].startswith("optimizer.args.lr: 0.3 ") and rows["optimizer.args.lr"].endswith(
            "# override optimizer.args.lr=0.3"
        )
        assert rows["metrics.1.args.k"].endswith("# override metrics[name=top2].args.k=4")
        assert rows["metrics.1.name"].endswith(f"# {path}:{line_of(path, 'metrics[+]')}")
        assert rows["trainer.amp"].endswith("# default")
        assert f"sha256 {hashlib.sha256(base.read_bytes()).hexdigest()[:16]}" in result.stdout
    assert not (family / "saved" / "digits_small").exists() and variant.exists()
    capsys.readouterr()
    assert sweep.main(["-c", str(variant), "--print-config", "trainer.epochs=2"]) == 0
    printed = capsys.readouterr().out
    assert "trainer.epochs: 2 " in printed and "# override trainer.epochs=2" in printed


def test_the_chain_is_read_once_per_file_and_lines_come_from_json_and_yaml(tmp_path):
    write_config(tmp_path, {"seed": 3, "trainer": {"epochs": 2}}, "a.json")
    (tmp_path / "b.json").write_text('{\n  "extends": "a.json",\n  "trainer": {\n    "epochs": 4\n  }\n}\n')
    (tmp_path / "c.yaml").write_text("extends: [b.json, a.json]\n\ndevice: cpu\n")
    chain = load_chain(tmp_path / "c.yaml")
    assert [Path(f["path"]).name for f in chain.files] == ["a.json", "b.json", "c.yaml"]
    assert chain.data == {"seed": 3, "trainer": {"epochs": 2}, "device": "cpu"}  # a.json again, last: its epochs win
    assert chain.origins["device"] == f"{tmp_path / 'c.yaml'}:3" and chain.origins["trainer.epochs"] == f"{tmp_path / 'a.json'}:1"
    assert load_chain(tmp_path / "b.json").origins["trainer.epochs"] == f"{tmp_path / 'b.json'}:4"


def test_a_sweep_over_a_variant_pairs_keys_in_a_choice_and_refuses_to_continue_after_its_base_changed(family, capsys):
    """A categorical choice may be a mapping of key paths (a paired variant, one Optuna value each:
    issue 39 item 5); the study holds the resolved config, so a changed base is a changed sweep."""
    pairs = [{"arch.args.dropout": 0.5, "metrics[name=top2].args.k": 4}, {"arch.args.dropout": 0.0, "optimizer.args.lr": 0.02}]
    data = {"sampler": "grid", "trials": 1, "params": {"variant": {"choices": pairs}}}  # one trial: a second costs plots
    space = write_yaml(family / "paired.yaml", data)
    argv = ["-c", str(variant_path(family, "small")), "--space", str(space)]
    assert sweep.main(argv) == 0, capsys.readouterr().err
    folder = family / "saved" / "digits_small" / "sweeps" / "paired"
    (config,) = [json.loads(path.read_text()) for path in folder.glob("trial-*/config.json")]
    got = (config["arch"]["args"]["dropout"], config["optimizer"]["args"]["lr"], config["metrics"][-1]["args"]["k"])
    assert got == (0.5, VARIANTS["small"][1], 4)  # the pair together, the rest the variant's
    import optuna

    stored = optuna.load_study(study_name="paired", storage=f"sqlite:///{folder / 'study.db'}").trials[0].params["variant"]
    assert json.loads(stored) == pairs[0]  # the study holds the choice itself, so its trials stay comparable
    base = family / "base.yaml"
    kept = base.read_text()
    try:
        write_yaml(base, {**yaml.safe_load(kept), "seed": 7})
        capsys.readouterr()
        assert sweep.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --study paired: config.seed is 7 here but 0 in the stored study") and err.count("\n") == 1, err
    finally:
        base.write_text(kept)


def test_json_lines_follow_strings_that_hold_brackets_quotes_and_newlines_escaped(tmp_path):
    text = '{"name": "a [b] {c} \\"q\\" \\n", "metrics": [\n  ["x", {"k": 1}],\n  {"type": "t",\n   "args": {"k": 2}}\n],\n"seed": 4}\n'
    path = tmp_path / "odd.json"
    path.write_text(text)
    assert json.loads(text)["seed"] == 4
    chain = load_chain(path)
    assert chain.origins["seed"] == f"{path}:6" and chain.origins["metrics"] == f"{path}:1"
    assert chain.origins["metrics.1"] == f"{path}:3" and chain.origins["name"] == f"{path}:1"
