"""Your own images, one sub-folder per class: torchvision's ``ImageFolder`` with train and eval transforms.

::

    data_dir/
        train/<class>/<image>      training images (augmented)
        val/<class>/<image>        validation images, one pass per epoch
        test/<class>/<image>       optional; test.py uses val/ when it is missing

Class indices come from the sorted names of ``train/``'s sub-folders; ``val/`` and ``test/`` must
have the same class folders. Any format PIL reads works; images are converted to RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from base import BaseDataLoader, refuse_set_args
from dataflow.transforms import check_transforms, pipeline, to_normalized_tensor
from utils.errors import UserError, first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_transforms(image_size: int, augment: bool) -> dict[str, list[dict]]:
    """The transform lists used when ``transforms`` leaves a phase out.

    Evaluation: resize to ``image_size`` x ``image_size`` (nothing is cut off; the aspect ratio of
    a non-square image is not kept). For ImageNet's resize-then-centre-crop, list it yourself:
    ``"eval": [{"type": "Resize", "args": {"size": 256}}, {"type": "CenterCrop", "args": {"size": 224}}]``.
    Training: with ``augment``, a random resized crop (50-100% of the area) and a horizontal flip;
    without, the evaluation list.
    """
    resize = [{"type": "Resize", "args": {"size": [image_size, image_size], "antialias": True}}]
    augmented = [
        {"type": "RandomResizedCrop", "args": {"size": image_size, "scale": [0.5, 1.0], "antialias": True}},
        {"type": "RandomHorizontalFlip"},
    ]
    return {"train": augmented if augment else resize, "eval": resize}


def image_folder(root: Path, transform, data_dir: Path, classes: list[str] | None = None) -> Dataset:
    """``ImageFolder(root)``; a missing or empty folder, or classes other than ``classes``, is a UserError."""
    from torchvision.datasets import ImageFolder

    layout = "expected data_dir/train/<class>/<image> and data_dir/val/<class>/<image>"
    if not root.is_dir():
        raise UserError(f"data_loader.args.data_dir: {data_dir} has no {root.name}/ folder; {layout}")
    try:
        dataset = ImageFolder(str(root), transform=transform)
    except FileNotFoundError as exc:
        raise UserError(f"data_loader.args.data_dir: {root}: {first_line(exc)}; {layout}") from None
    if classes is not None and dataset.classes != classes:
        raise UserError(
            f"data_loader.args.data_dir: {root} has classes {dataset.classes} but train/ has {classes}; use the same class folders"
        )
    return dataset


class ImageFolderDataLoader(BaseDataLoader):
    """Images from ``data_dir/train`` (augmented) with validation on ``data_dir/val``; ``training=False`` reads ``test/`` or ``val/``.

    Args:
        data_dir: folder holding ``train/`` and ``val/`` (and optionally ``test/``).
        image_size: side of the square images fed to the model (by the default transforms).
        mean, std: per-channel normalisation; the defaults are ImageNet's, which pretrained torchvision models expect.
        augment: with the default training transforms, random crops and flips (off: the evaluation transforms).
        transforms: ``{"train": [...], "eval": [...]}`` of ``torchvision.transforms.v2`` names or
            ``package.module:Name`` (``dataflow/transforms.py``); a phase left out keeps
            :func:`default_transforms`. The conversion to a float tensor and ``mean``/``std``
            normalisation are appended to every list.
        folds: partition ``train/`` into folds (``val/`` is then not used).
        The rest (``**kwargs``): see :class:`BaseDataLoader` (``validation_split`` is refused here:
        ``val/`` is the validation set, unless ``folds`` partitions ``train/`` into folds).
    """

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 32,
        *,
        image_size: int = 224,
        num_workers: int = 2,
        training: bool = True,
        augment: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        transforms: dict | None = None,
        folds: int = 0,
        **kwargs: Any,
    ):
        validates = "validates on val/ (or, with folds, on a fold of train/)"
        refuse_set_args("ImageFolderDataLoader", kwargs, dataset="reads data_dir", validation_split=validates, validation_dataset=validates)
        self.data_dir = Path(data_dir)
        if not self.data_dir.is_dir():
            raise UserError(f"data_loader.args.data_dir: {data_dir} is not a folder; point it at a folder holding train/ and val/")
        lists = {**default_transforms(image_size, augment), **check_transforms(transforms)}
        tail = to_normalized_tensor(mean, std)
        key = "data_loader.args.transforms"
        eval_transform = self.eval_transform = pipeline(lists["eval"], tail, f"{key}.eval")
        train_transform = pipeline(lists["train"], tail, f"{key}.train")
        train_set = image_folder(self.data_dir / "train", train_transform if training else eval_transform, self.data_dir)
        self.classes = train_set.classes
        self.valid_dataset: Dataset | None = None
        fold_view = None
        if training and folds:  # the folds partition train/ (val/ is not used), validating through the eval transforms
            dataset = train_set
            fold_view = image_folder(self.data_dir / "train", eval_transform, self.data_dir)
        elif training:
            dataset = train_set
            self.valid_dataset = image_folder(self.data_dir / "val", eval_transform, self.data_dir, self.classes)
        else:
            split = "test" if (self.data_dir / "test").is_dir() else "val"
            dataset = image_folder(self.data_dir / split, eval_transform, self.data_dir, self.classes)
        super().__init__(
            dataset, batch_size, num_workers=num_workers, training=training, validation_dataset=fold_view, folds=folds, **kwargs
        )

    def unlabeled_dataset(self, path: str) -> Dataset:
        """Image files of a folder without class subfolders (any depth), for predict.py ``--input``:
        each sample is the evaluation-transformed image; rows carry the file's path within ``path``."""
        return ImageFiles(Path(path), self.eval_transform)

    def split_validation(self) -> BaseDataLoader | None:
        """A loader over ``val/`` (evaluation transform, no shuffle), used like a validation split by
        train.py; with ``folds``, the validating fold of ``train/``."""
        if self.valid_dataset is None:
            return super().split_validation()
        return BaseDataLoader(self.valid_dataset, training=False, **self.init_kwargs)


class ImageFiles(Dataset):
    """The images under ``root`` (sorted by path), as tensors; ``ids`` are their paths relative to ``root``."""

    id_key = "path"

    def __init__(self, root: Path, transform):
        from torchvision.datasets.folder import IMG_EXTENSIONS

        if not root.is_dir():
            raise UserError(f"--input: {root} is not a folder of images")
        self.files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        if not self.files:
            raise UserError(f"--input: {root} holds no image files ({', '.join(IMG_EXTENSIONS)})")
        self.ids = [str(p.relative_to(root)) for p in self.files]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from torchvision.datasets.folder import default_loader

        return self.transform(default_loader(str(self.files[index])))
