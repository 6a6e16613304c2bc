"""The shipped loaders name only their own arguments and pass ``**kwargs`` on to ``BaseDataLoader``
(as the README teaches): what they build is what ``BaseDataLoader`` builds from the same data and
the loader's own defaults, every ``BaseDataLoader`` argument is still accepted by name and a typo
is still refused, and an argument a loader sets itself is one line naming it."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_config

from app.config import Config
from app.config.overrides import parameters
from base import BaseDataLoader
from data_loader import DigitsDataLoader, ImageFolderDataLoader, MnistDataLoader, TextDataLoader
from data_loader.data_loaders import digits_dataset
from data_loader.text import BUNDLED_DIR, Vocabulary, read_tsv
from utils.errors import UserError

BASE = {
    "batch_size",
    "shuffle",
    "validation_split",
    "num_workers",
    "training",
    "split_seed",
    "in_memory",
    "drop_last",
    "folds",
    "fold",
    "fold_groups",
}


def batches(loader, count: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [target for _, target in zip(range(count), (target for _, target in loader))]


def test_a_held_out_loader_is_base_data_loader_with_its_own_defaults():
    """DigitsDataLoader's defaults (64 a batch, 15% validation) written out by hand give the same split and batches."""
    ours = DigitsDataLoader(split_seed=3, drop_last=True)
    theirs = BaseDataLoader(digits_dataset(True), 64, True, 0.15, 0, split_seed=3, drop_last=True)
    assert ours.batch_size == theirs.batch_size == 64
    assert ours.valid_subset.indices == theirs.valid_subset.indices and len(ours.valid_subset) == round(1438 * 0.15)
    assert all(torch.equal(a, b) for a, b in zip(batches(ours), batches(theirs), strict=True))
    folds = DigitsDataLoader(folds=3, fold=1)
    assert folds.split["folds"] == 3 and folds.split["fold"] == 1  # passed on by name, as before


def test_the_text_loader_fits_its_vocabulary_on_the_training_part_base_data_loader_then_makes():
    """Its own split arguments are the ones ``BaseDataLoader`` splits by: the vocabulary counts the
    training sentences that the validation subset leaves, recounted here from the file."""
    loader = TextDataLoader(batch_size=8, validation_split=0.25, split_seed=4, max_vocab=50, shuffle=False, num_workers=0)
    assert loader.batch_size == 8 and not loader.shuffle and loader.split["split_seed"] == 4
    rows = read_tsv(BUNDLED_DIR / "train.tsv")
    validating = set(loader.valid_subset.indices)
    assert len(validating) == round(len(rows) * 0.25)
    assert Vocabulary([rows[i][1] for i in range(len(rows)) if i not in validating], 50).itos == loader.vocab.itos
    assert Vocabulary([text for _, text in rows], 50).itos != loader.vocab.itos  # the check can tell


def test_every_base_data_loader_argument_is_still_a_parameter_and_a_typo_is_still_refused(tmp_path):
    for loader in (DigitsDataLoader, MnistDataLoader, ImageFolderDataLoader, TextDataLoader):
        assert BASE - {"validation_split", "fold_groups"} <= parameters(loader), loader.__name__
    config = tiny_config(tmp_path)
    config["data_loader"] = {"type": "DigitsDataLoader", "args": {"batch_size": 32, "shufle": False}}
    with pytest.raises(
        UserError, match=r"data_loader\.args\.shufle: DigitsDataLoader has no parameter 'shufle'.*'data_loader\.args\.shuffle'"
    ):
        Config.from_dict(config, "c.json")


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda tmp: ImageFolderDataLoader(str(tmp), validation_split=0.1),
            r"^data_loader\.args\.validation_split: ImageFolderDataLoader validates on val/",
        ),
        (lambda tmp: TextDataLoader(fold_groups="topic"), r"^data_loader\.args\.fold_groups: TextDataLoader fits its vocabulary"),
        (lambda tmp: TextDataLoader(collate_fn=None), r"^data_loader\.args\.collate_fn: TextDataLoader pads its sentences"),
        (lambda tmp: DigitsDataLoader(dataset=[]), r"^data_loader\.args\.dataset: DigitsDataLoader makes its data set"),
    ],
)
def test_an_argument_the_loader_sets_itself_is_one_line(tmp_path, make, match):
    with pytest.raises(UserError, match=match) as caught:
        make(tmp_path)
    assert "\n" not in str(caught.value) and str(caught.value).endswith("remove it from data_loader.args")


def test_the_refusal_reaches_the_user_through_the_config(tmp_path):
    config = tiny_config(tmp_path)
    config["data_loader"] = {"type": "ImageFolderDataLoader", "args": {"data_dir": str(tmp_path), "validation_split": 0.2}}
    with pytest.raises(UserError, match=r"^c\.json: data_loader\.args\.validation_split: ImageFolderDataLoader validates on val/"):
        Config.from_dict(config, "c.json").init_obj("data_loader")
