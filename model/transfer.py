"""Transfer learning: a torchvision backbone with pretrained weights, a new head, and frozen parts.

``arch.args``:

- ``backbone``: any ``torchvision.models`` classification model name (``resnet18``, ``efficientnet_b0``, ...);
- ``weights``: a local file holding that model's torchvision ``state_dict`` (read with
  ``weights_only=True``), or a torchvision weights name such as ``IMAGENET1K_V1`` (downloaded once
  into ``$TORCH_HOME``; needs internet the first time; read ``weights_only`` and checked against
  its published hash each time, ``utils/fetching.py``), or null for random initialisation. A model
  rebuilt to be restored from a checkpoint (``test.py -r``, ``predict.py -r``, ``train.py -r``)
  neither reads nor fetches them: the checkpoint holds every weight, the pretrained ones trained on;
- ``freeze``: ``"backbone"``, or a list of module-name prefixes (``["backbone.conv1", "backbone.layer1"]``), or null.

The backbone's last ``Linear`` (its ImageNet classifier) becomes ``nn.Identity``, so the backbone
returns pooled features, and a new ``head`` maps them to ``num_classes`` logits. Parameter names
are ``backbone.<torchvision name>`` and ``head.*``: use them in ``freeze`` and in
``optimizer.param_groups`` (e.g. a smaller learning rate for ``backbone.layer4``).
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from base import BaseModel
from base.freezing import freeze as freeze_modules
from model.layers import Linear
from utils.checkpoints import clean_state_dict
from utils.errors import UserError, closest, first_line
from utils.fetching import weights_restored


def build_backbone(name: str) -> nn.Module:
    """A randomly initialised ``torchvision.models`` model by name."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise UserError(f"arch.args.backbone: {name!r} is not a torchvision classification model{closest(name, available)}")
    return torchvision.models.get_model(name, weights=None)


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """(name, module) of the last ``nn.Linear`` in registration order: torchvision's classifier head."""
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not found:
        raise UserError(f"arch.args.backbone: {type(model).__name__} has no Linear classifier head to replace; choose another backbone")
    return found[-1]


def pretrained_state_dict(backbone: str, weights: str) -> dict:
    """A torchvision ``state_dict`` from a file, or from torchvision's weights registry by name."""
    try:
        path = Path(weights).expanduser()
    except RuntimeError:  # ~name of a user this machine does not have
        raise UserError(f"arch.args.weights: {weights.split('/')[0]!r} names no user of this machine; write the file's path out") from None
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
            reason = first_line(exc, 160)
            raise UserError(f"arch.args.weights: {path} is not a readable torch file ({reason})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"arch.args.weights: {path} is not a state_dict; save one with torch.save(model.state_dict(), {str(path)!r})")
        return clean_state_dict(state)
    if path.suffix in (".pth", ".pt", ".bin") or "/" in weights or "\\" in weights:
        raise UserError(f"arch.args.weights: file {weights} not found; give an existing state_dict file or a torchvision weights name")

    import torchvision

    names = [w.name for w in torchvision.models.get_model_weights(backbone)]
    if weights not in (*names, "DEFAULT"):
        raise UserError(f"arch.args.weights: {backbone} has no torchvision weights {weights!r}; choose one of {names}, a file path or null")
    enum = torchvision.models.get_model_weights(backbone)[weights]
    try:
        return enum.get_state_dict(progress=False, check_hash=True)
    except pickle.UnpicklingError as exc:  # read weights_only (utils/fetching.py): a planted or damaged cache file
        raise UserError(
            f"arch.args.weights: the cached file of {backbone} weights {weights!r} holds more than tensors ({first_line(exc, 80)}); "
            f"delete it from {torch.hub.get_dir()}/checkpoints and it is downloaded again"
        ) from None
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad download fails its hash check
        reason = first_line(exc, 120)
        raise UserError(
            f"arch.args.weights: cannot download {backbone} weights {weights!r} ({reason}); offline, save them once where there is "
            f"internet with torch.save(torchvision.models.get_model({backbone!r}, weights={weights!r}).state_dict(), "
            f"'{backbone}.pth'), copy the file here and set arch.args.weights to its path"
        ) from None


class TransferClassifier(BaseModel):
    """A torchvision backbone with a new ``num_classes`` head; see the module docstring for the args.

    Frozen means frozen (``base/freezing.py``, the same mechanism as ``trainer.freeze``, which
    works for any model): frozen parameters get ``requires_grad=False`` (so the optimizer never
    sees them) and frozen modules stay in eval mode even when the Trainer calls ``model.train()``,
    so their BatchNorm running statistics and dropout do not change either.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet18",
        weights: str | None = None,
        freeze: str | Sequence[str] | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.backbone = build_backbone(backbone)
        head_name, old_head = last_linear(self.backbone)
        if weights and not weights_restored():  # restored from a checkpoint: it holds these weights, trained on
            self._load_backbone(pretrained_state_dict(backbone, weights), weights)
        self.backbone.set_submodule(head_name, nn.Identity())
        self.dropout = nn.Dropout(dropout)
        self.head = Linear(old_head.in_features, num_classes)
        self.frozen = self._freeze(freeze)

    def _load_backbone(self, state: dict, source: str) -> None:
        """Load every backbone weight (the old head's too, replaced right after); a mismatch names what and where."""
        own = self.backbone.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        problems = [
            f"{what} {keys[:4]}{' ...' if len(keys) > 4 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        problems += [f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model" for k in shapes[:2]]
        if problems:
            raise UserError(
                f"arch.args.weights: {source} does not fit arch.args.backbone ({'; '.join(problems)}); save that model's state_dict"
            )
        self.backbone.load_state_dict(state)

    def _freeze(self, freeze: str | Sequence[str] | None) -> list[str]:
        """Freeze the modules under each prefix (``base/freezing.py``, the mechanism of ``trainer.freeze``)."""
        if freeze is not None and not isinstance(freeze, (str, list, tuple)):
            raise UserError(f'arch.args.freeze: expected "backbone", a list of module-name prefixes or null, got {freeze!r}')
        prefixes = [freeze] if isinstance(freeze, str) else list(freeze or [])
        return freeze_modules(self, prefixes, key="arch.args.freeze")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)  # (N, 3, H, W) -> (N, F): pooled features, the old head being Identity
        if isinstance(features, tuple):  # inception_v3 / googlenet in training mode: (main, aux...)
            features = features[0]
        return self.head(self.dropout(features))  # (N, F) -> (N, num_classes) logits
