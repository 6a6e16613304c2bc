"""Text classification from TSV files: a custom ``Dataset``, a vocabulary and a padding ``collate_fn``.

``data_dir`` holds ``train.tsv`` and ``test.tsv``, each a header line ``label<TAB>text`` and then
one sample per line. The bundled ``data_loader/data/topics`` is 320 short sentences on four topics
(sports, food, weather, technology), 64 of them held out in ``test.tsv``.

The vocabulary comes from the training part of ``train.tsv`` only: the validation split is drawn
first (the same seeded split :class:`BaseDataLoader` makes), so validation and test words the
model never trained on map to ``<unk>``, as they would in deployment. ``test.py`` rebuilds the
identical vocabulary from the same file and config, so keep ``train.tsv`` unchanged between
training and testing.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from base import BaseDataLoader, refuse_set_args
from utils.errors import UserError

BUNDLED_DIR = Path(__file__).resolve().parent / "data" / "topics"
PAD, UNK = "<pad>", "<unk>"
PAD_INDEX, UNK_INDEX = 0, 1
_TOKEN = re.compile(r"[a-z0-9']+")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and numbers; punctuation is dropped."""
    return _TOKEN.findall(text.lower())


def read_tsv(path: Path) -> list[tuple[str, str]]:
    """``(label, text)`` rows of a ``label<TAB>text`` file with a header line."""
    if not path.is_file():
        raise UserError(f"data_loader.args.data_dir: {path} not found; the folder needs train.tsv and test.tsv (label<TAB>text lines)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    rows = []
    for number, line in enumerate(text.splitlines()[1:], start=2):
        if not line.strip():
            continue
        label, tab, text = line.partition("\t")
        if not tab or not label.strip():
            raise UserError(f"{path}:{number}: expected 'label<TAB>text', got {line[:60]!r}")
        rows.append((label.strip(), text))
    if not rows:
        raise UserError(f"{path}: no samples; add 'label<TAB>text' lines after the header line")
    return rows


class Vocabulary:
    """Word <-> index. Index 0 is ``<pad>`` and 1 is ``<unk>``; the rest by frequency, then alphabetically.

    Args:
        texts: the texts to count words in (the training split only).
        max_size: at most this many entries, specials included (match ``arch.args.vocab_size``).
        min_freq: words seen fewer times become ``<unk>``.
    """

    def __init__(self, texts: Sequence[str], max_size: int, min_freq: int = 1):
        if max_size < 3:
            raise UserError(f"data_loader.args.max_vocab: must be at least 3 (<pad>, <unk> and one word), got {max_size}")
        counts = Counter(word for text in texts for word in tokenize(text))
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        self.itos = [PAD, UNK, *words[: max_size - 2]]
        self.stoi = {word: index for index, word in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(word, UNK_INDEX) for word in tokenize(text)]


class TextClassificationDataset(Dataset):
    """Sentences as token indices: ``dataset[i] == {"text": LongTensor (L,), "label": int}``.

    Args:
        rows: ``(label, text)`` pairs.
        vocab: maps words to indices.
        classes: label names; a label's index in this list is its class index.
    """

    def __init__(self, rows: Sequence[tuple[str, str]], vocab: Vocabulary, classes: Sequence[str]):
        self.class_to_idx = {name: index for index, name in enumerate(classes)}
        unknown = sorted({label for label, _ in rows} - set(self.class_to_idx))
        if unknown:
            raise UserError(f"data_loader.args.data_dir: labels {unknown} do not occur in train.tsv; every class needs training samples")
        self.rows = list(rows)
        self.vocab = vocab
        self.classes = list(classes)
        self.targets = [self.class_to_idx[label] for label, _ in self.rows]  # for stratified folds, without encoding a sentence

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        label, text = self.rows[index]
        return {"text": torch.tensor(self.vocab.encode(text), dtype=torch.int64), "label": self.class_to_idx[label]}


def pad_collate(samples: list[dict]) -> dict:
    """Pad a list of samples into ``{"text": (N, L) LongTensor, "label": (N,) LongTensor}`` (no
    ``label`` for unlabelled sentences).

    ``L`` is the longest sentence of the batch (at least 1); shorter ones are filled with
    ``<pad>`` (index 0), which the model's ``EmbeddingBag(padding_idx=0)`` ignores.
    """
    length = max(1, max(len(s["text"]) for s in samples))
    text = torch.full((len(samples), length), PAD_INDEX, dtype=torch.int64)
    for row, sample in enumerate(samples):
        text[row, : len(sample["text"])] = sample["text"]
    if "label" not in samples[0]:
        return {"text": text}
    return {"text": text, "label": torch.tensor([s["label"] for s in samples], dtype=torch.int64)}


class Sentences(Dataset):
    """Unlabelled sentences, one per non-empty line of a text file; ``ids`` are their line numbers (1-based)."""

    id_key = "line"

    def __init__(self, path: Path, vocab: Vocabulary):
        if not path.is_file():
            raise UserError(f"--input: {path} is not a file; give a text file with one sentence per line")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise UserError(f"--input: {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
        numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
        if not numbered:
            raise UserError(f"--input: {path} has no sentences; write one per line")
        self.ids = [n for n, _ in numbered]
        self.texts = [line for _, line in numbered]
        self.vocab = vocab

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict:
        return {"text": torch.tensor(self.vocab.encode(self.texts[index]), dtype=torch.int64)}


class TextDataLoader(BaseDataLoader):
    """Labelled sentences from ``data_dir/train.tsv`` (training and validation) or ``test.tsv`` (``training=False``).

    Args:
        data_dir: folder with ``train.tsv`` and ``test.tsv``; null uses the bundled topics set.
        max_vocab: vocabulary size cap, specials included; ``arch.args.vocab_size`` must be at least this.
        min_freq: words seen fewer times in the training split become ``<unk>``.
        validation_split, split_seed, folds, fold: as :class:`BaseDataLoader` takes them; this loader
        draws the same split first, to fit the vocabulary on the training part only.
        The rest (``**kwargs``): see :class:`BaseDataLoader` (``fold_groups`` is refused: the vocabulary
        is fitted on the training part before the data set exists).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 32,
        *,
        validation_split: int | float = 0.2,
        training: bool = True,
        split_seed: int = 0,
        max_vocab: int = 2000,
        min_freq: int = 1,
        folds: int = 0,
        fold: int = 0,
        **kwargs: Any,
    ):
        refuse_set_args(
            "TextDataLoader",
            kwargs,
            dataset="reads data_dir",
            collate_fn="pads its sentences with its own collate_fn",
            fold_groups="fits its vocabulary on the training part before the data set exists",
        )
        self.data_dir = Path(data_dir) if data_dir else BUNDLED_DIR
        train_rows = read_tsv(self.data_dir / "train.tsv")
        self.classes = sorted({label for label, _ in train_rows})
        # The split BaseDataLoader will make (same function, same arguments), drawn first so the
        # vocabulary sees training sentences only; the test loader fits the same vocabulary.
        targets = [self.classes.index(label) for label, _ in train_rows]
        fit, _ = self.split_indices(len(train_rows), validation_split, split_seed, folds, fold, targets)
        self.vocab = Vocabulary([train_rows[i][1] for i in fit], max_vocab, min_freq)
        rows = train_rows if training else read_tsv(self.data_dir / "test.tsv")
        dataset = TextClassificationDataset(rows, self.vocab, self.classes)
        super().__init__(
            dataset,
            batch_size,
            validation_split=validation_split,
            collate_fn=pad_collate,
            training=training,
            split_seed=split_seed,
            folds=folds,
            fold=fold,
            **kwargs,
        )

    def unlabeled_dataset(self, path: str) -> Sentences:
        """A text file with one sentence per line, for predict.py ``--input`` (same vocabulary)."""
        return Sentences(Path(path), self.vocab)
