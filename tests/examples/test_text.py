"""The text example: custom Dataset, vocabulary from the training split only, padding collate, and a real run."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import ROOT, check_passes_base_arguments_on, example_or_skip, run_here

example_or_skip("text", "model.metric:Accuracy")  # what it uses of the files a user rewrites first

from app.config import Config, build_loss, build_lr_scheduler, build_metrics, build_optimizer  # noqa: E402
from data_loader.text import (  # noqa: E402
    BUNDLED_DIR,
    PAD_INDEX,
    UNK_INDEX,
    TextClassificationDataset,
    TextDataLoader,
    Vocabulary,
    pad_collate,
    read_tsv,
    tokenize,
)
from model.text import TextClassifier  # noqa: E402
from utils.errors import UserError  # noqa: E402

THREADS = {"OMP_NUM_THREADS": "1"}  # the test machine's cores are shared; one thread avoids oversubscription


def write_tsv(path, rows):
    path.write_text("label\ttext\n" + "".join(f"{label}\t{text}\n" for label, text in rows))


def test_dataset_items_and_padded_batches():
    vocab = Vocabulary(["the cat sat", "the dog"], max_size=100)
    dataset = TextClassificationDataset([("b", "The cat!"), ("a", "dog dog zebra the"), ("a", "...")], vocab, ["a", "b"])
    assert len(dataset) == 3
    item = dataset[0]
    assert set(item) == {"text", "label"} and item["label"] == 1
    assert item["text"].tolist() == [vocab.stoi["the"], vocab.stoi["cat"]]
    assert dataset[1]["text"].tolist()[2] == UNK_INDEX  # "zebra" was never counted

    batch = pad_collate([dataset[i] for i in range(3)])
    assert batch["text"].dtype == torch.int64 and batch["text"].shape == (3, 4)
    assert batch["text"][0, 2:].tolist() == [PAD_INDEX, PAD_INDEX]
    assert batch["text"][2].tolist() == [PAD_INDEX] * 4  # a sentence with no words is all padding
    assert batch["label"].tolist() == [1, 0, 0]
    assert pad_collate([dataset[2]])["text"].shape == (1, 1)


def test_vocabulary_comes_from_the_training_split_only_and_is_the_same_for_test(tmp_path):
    rows = [("even" if i % 2 else "odd", f"common word{i}") for i in range(10)]
    write_tsv(tmp_path / "train.tsv", rows)
    write_tsv(tmp_path / "test.tsv", [("odd", "common word3 unseen")])
    loader = TextDataLoader(str(tmp_path), batch_size=4, validation_split=3, split_seed=5)
    valid_ids = loader.valid_subset.indices
    train_ids = loader.dataset.indices
    assert len(valid_ids) == 3 and sorted(train_ids + valid_ids) == list(range(10))
    assert set(loader.vocab.itos) == {"<pad>", "<unk>", "common"} | {f"word{i}" for i in train_ids}
    valid_batch = next(iter(loader.split_validation()))
    assert (valid_batch["text"][:, 1] == UNK_INDEX).all()  # validation words are unknown to the model

    test_loader = TextDataLoader(str(tmp_path), batch_size=4, validation_split=3, split_seed=5, training=False)
    assert test_loader.vocab.itos == loader.vocab.itos and test_loader.classes == loader.classes
    assert len(test_loader.dataset) == 1


def test_bad_data_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="train.tsv"):
        TextDataLoader(str(tmp_path))
    write_tsv(tmp_path / "train.tsv", [("a", "x y"), ("b", "y z")])
    write_tsv(tmp_path / "test.tsv", [("c", "x")])
    with pytest.raises(UserError, match=r"labels \['c'\]"):
        TextDataLoader(str(tmp_path), validation_split=0, training=False)
    (tmp_path / "train.tsv").write_text("label\ttext\nno tab here\n")
    with pytest.raises(UserError, match=r"train.tsv:2"):
        TextDataLoader(str(tmp_path))


def test_model_takes_a_batch_or_one_sentence():
    model = TextClassifier(vocab_size=50, embed_dim=8, num_classes=3).eval()
    text = torch.tensor([[5, 6, 7, 0], [9, 0, 0, 0]])
    logits = model(text=text)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(model(text[1, :1]), logits[1])  # (L,) in, (C,) out; padding does not count
    with pytest.raises(UserError, match="vocab_size"):
        model(torch.tensor([[60]]))


def test_config_builds_and_runs_one_batch():
    config = Config.from_file(ROOT / "configs/text.json")
    loader = config.init_obj("data_loader")
    model = config.init_obj("arch")
    assert config["arch"]["args"]["vocab_size"] >= len(loader.vocab)
    assert config["arch"]["args"]["num_classes"] == len(loader.classes)
    optimizer = build_optimizer(config, model)
    build_lr_scheduler(config, optimizer)
    batch = next(iter(loader))
    output = model(text=batch["text"])
    loss = build_loss(config)(output, batch["label"])
    loss.backward()
    assert torch.isfinite(loss) and {name: fn(output, batch["label"]) for name, fn in build_metrics(config).items()}


@pytest.mark.slow
def test_text_example_learns_and_test_py_evaluates_the_checkpoint(tmp_path):
    overrides = [f"trainer.save_dir={tmp_path}", "trainer.epochs=8", "trainer.early_stop=0", "trainer.tensorboard=false"]
    result = run_here("train.py", "-c", "configs/text.json", "--run-id", "run", *overrides, env=THREADS)
    assert result.returncode == 0, result.stderr + result.stdout
    run_dir = tmp_path / "text_topics" / "run"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = max(row["val_accuracy"] for row in rows)
    assert best >= 0.55, rows  # four classes: chance is 0.25
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]

    out = tmp_path / "test_metrics.json"
    result = run_here("test.py", "-r", str(run_dir / "checkpoints" / "best.pth"), "--out", str(out), env=THREADS)
    assert result.returncode == 0, result.stderr + result.stdout
    metrics = json.loads(out.read_text())
    assert metrics["samples"] == 64 and metrics["accuracy"] >= 0.55, metrics

    sentences = tmp_path / "new.txt"
    sentences.write_text("the striker scored twice in the final\n\nadd the garlic and simmer the sauce\nheavy rain is expected tonight\n")
    predictions = tmp_path / "new.jsonl"
    checkpoint = str(run_dir / "checkpoints" / "best.pth")
    result = run_here("predict.py", "-r", checkpoint, "--input", str(sentences), "--out", str(predictions), env=THREADS)
    assert result.returncode == 0, result.stderr + result.stdout
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [(row["index"], row["line"]) for row in rows] == [(0, 1), (1, 3), (2, 4)]  # the blank line 2 is no sentence
    assert all("target" not in row and row["label"] in ("food", "sports", "technology", "weather") for row in rows)
    assert all(abs(sum(row["output"]) - 1) < 1e-5 for row in rows)  # logits became probabilities


def test_tokenize():
    assert tokenize("Don't STOP, 2 times!") == ["don't", "stop", "2", "times"]


def test_the_loader_fits_its_vocabulary_on_the_training_part_base_data_loader_then_makes():
    """Its own split arguments are the ones ``BaseDataLoader`` splits by: the vocabulary counts the
    training sentences that the validation subset leaves, recounted here from the file."""
    loader = TextDataLoader(batch_size=8, validation_split=0.25, split_seed=4, max_vocab=50, shuffle=False, num_workers=0)
    assert loader.batch_size == 8 and not loader.shuffle and loader.split["split_seed"] == 4
    rows = read_tsv(BUNDLED_DIR / "train.tsv")
    validating = set(loader.valid_subset.indices)
    assert len(validating) == round(len(rows) * 0.25)
    assert Vocabulary([rows[i][1] for i in range(len(rows)) if i not in validating], 50).itos == loader.vocab.itos
    assert Vocabulary([text for _, text in rows], 50).itos != loader.vocab.itos  # the check can tell


@pytest.mark.parametrize(
    "args, match",
    [
        ({"fold_groups": "topic"}, r"^data_loader\.args\.fold_groups: TextDataLoader fits its vocabulary"),
        ({"collate_fn": None}, r"^data_loader\.args\.collate_fn: TextDataLoader pads its sentences"),
    ],
)
def test_base_data_loader_arguments_pass_on_and_one_it_sets_itself_is_one_line(args, match):
    check_passes_base_arguments_on(TextDataLoader)
    with pytest.raises(UserError, match=match) as caught:
        TextDataLoader(**args)
    assert "\n" not in str(caught.value) and str(caught.value).endswith("remove it from data_loader.args")
