"""The digits example (``DigitsDataLoader``, ``DigitsCNN``, ``model/metric.py``, ``configs/digits.yaml``):
its metrics against their textbook definitions, and its loader as ``BaseDataLoader`` with the loader's
own defaults. In a project made from the template it skips once the example is replaced, and leaves
with it."""

from __future__ import annotations

import pytest
import torch
from helpers import IN_TEMPLATE, ROOT, batches, check_passes_base_arguments_on, example_or_skip, tiny_config

example_or_skip("digits", "model:DigitsCNN", "data_loader:DigitsDataLoader", "model.loss:nll_loss", "model.metric:top_k_acc", "model.metric:accuracy")

from app.config import Config  # noqa: E402
from base import BaseDataLoader  # noqa: E402
from data_loader import DigitsDataLoader  # noqa: E402
from data_loader.data_loaders import digits_dataset  # noqa: E402
from model.metric import accuracy, top_k_acc  # noqa: E402
from utils.errors import UserError  # noqa: E402


def test_top_k_matches_torch_topk_without_ties_and_counts_ties_for_the_target():
    generator = torch.Generator().manual_seed(0)
    output = torch.randn(500, 10, generator=generator)
    target = torch.randint(0, 10, (500,), generator=generator)
    for k in (1, 3, 9, 10, 12):
        top = output.topk(min(k, 10), dim=1).indices
        expected = (top == target.unsqueeze(1)).any(dim=1).float().mean()
        assert torch.equal(top_k_acc(output, target, k), expected), k
    assert torch.equal(top_k_acc(output, target, 1), accuracy(output, target))
    tied = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    assert top_k_acc(tied, torch.tensor([1, 2]), k=1).item() == 1.0


@pytest.mark.skipif(not IN_TEMPLATE, reason="in a project made from the template config.json is yours; configs/digits.yaml keeps the digits example")
def test_digits_yaml_is_the_default_experiment():
    assert Config.from_file(ROOT / "configs" / "digits.yaml").to_dict() == Config.from_file(ROOT / "config.json").to_dict()


def test_the_held_out_loader_is_base_data_loader_with_its_own_defaults():
    """DigitsDataLoader's defaults (64 a batch, 15% validation) written out by hand give the same split and batches."""
    ours = DigitsDataLoader(split_seed=3, drop_last=True)
    theirs = BaseDataLoader(digits_dataset(True), 64, True, 0.15, 0, split_seed=3, drop_last=True)
    assert ours.batch_size == theirs.batch_size == 64
    assert ours.valid_subset.indices == theirs.valid_subset.indices and len(ours.valid_subset) == round(1438 * 0.15)
    assert all(torch.equal(a, b) for a, b in zip(batches(ours), batches(theirs), strict=True))
    folds = DigitsDataLoader(folds=3, fold=1)
    assert folds.split["folds"] == 3 and folds.split["fold"] == 1  # passed on by name, as before


def test_every_base_data_loader_argument_is_still_accepted_and_a_typo_refused(tmp_path):
    check_passes_base_arguments_on(DigitsDataLoader)
    config = tiny_config(tmp_path)
    config["data_loader"] = {"type": "DigitsDataLoader", "args": {"batch_size": 32, "shufle": False}}
    with pytest.raises(
        UserError, match=r"data_loader\.args\.shufle: DigitsDataLoader has no parameter 'shufle'.*'data_loader\.args\.shuffle'"
    ):
        Config.from_dict(config, "c.json")


def test_the_data_set_it_makes_itself_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"^data_loader\.args\.dataset: DigitsDataLoader makes its data set") as caught:
        DigitsDataLoader(dataset=[])
    assert "\n" not in str(caught.value) and str(caught.value).endswith("remove it from data_loader.args")
