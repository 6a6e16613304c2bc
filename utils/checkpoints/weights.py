"""A model's weights by name: wrapper prefixes stripped, and loaded with what was skipped said."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from utils.errors import UserError

_PREFIXES = ("module.", "_orig_mod.")
_WRAPPED = "_checkpoint_wrapped_module."


def clean_state_dict(state_dict: dict) -> dict:
    """Strip wrapper prefixes from every key: DDP's ``module.`` and torch.compile's ``_orig_mod.``
    in front (repeatedly), activation checkpointing's ``_checkpoint_wrapped_module.`` anywhere."""
    return {clean_key(key): value for key, value in state_dict.items()}


def clean_key(key: str) -> str:
    key = key.replace(_WRAPPED, "")
    while key.startswith(_PREFIXES):
        key = key.split(".", 1)[1]
    return key


@dataclass
class LoadReport:
    """What :func:`load_weights` did, by weight name."""

    loaded: list[str]
    excluded: list[str]
    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[str]

    def lines(self) -> list[str]:
        """One line each: loaded, excluded, missing (kept as initialised), unexpected (ignored)."""

        def names(keys: list[str]) -> str:
            return f"{len(keys)} {keys[:6]}{' ...' if len(keys) > 6 else ''}" if keys else "none"

        shapes = f"; different shapes {self.wrong_shape}" if self.wrong_shape else ""
        return [
            f"loaded {len(self.loaded)} tensors",
            f"excluded (trainer.load_exclude, kept as initialised): {names(self.excluded)}",
            f"missing (kept as initialised): {names(self.missing + self.wrong_shape)}{shapes}",
            f"unexpected (ignored): {names(self.unexpected)}",
        ]


def load_weights(model: nn.Module, state_dict: dict, strict: bool, source: str, exclude: tuple[str, ...] | list[str] = ()) -> LoadReport:
    """Load weights by name, except those under an ``exclude`` module prefix (they keep the model's
    own values, even where names and shapes match). Mismatches are named; ``strict`` makes them errors."""
    state_dict = clean_state_dict(state_dict)
    # The model's own names, cleaned the same way (a model may have a child named ``module``):
    # compared clean, loaded under the model's real names.
    named = model.state_dict()
    real = {clean_key(key): key for key in named}
    own = {key: named[name] for key, name in real.items()}

    def excluded(key: str) -> bool:
        return any(key == prefix or key.startswith(prefix + ".") for prefix in exclude)

    report = LoadReport(
        loaded=[k for k, v in state_dict.items() if k in own and own[k].shape == v.shape and not excluded(k)],
        excluded=[k for k in own if excluded(k)],
        missing=[k for k in own if k not in state_dict and not excluded(k)],
        unexpected=[k for k in state_dict if k not in own and not excluded(k)],
        wrong_shape=[k for k, v in state_dict.items() if k in own and own[k].shape != v.shape and not excluded(k)],
    )
    problems = [f"{what} {keys}" for what, keys in (("missing", report.missing), ("unexpected", report.unexpected), ("different shapes", report.wrong_shape)) if keys]
    if problems and strict:
        raise UserError(
            f"{source}: weights do not match the model: {'; '.join(problems)}; fix arch, set trainer.load_exclude to the "
            f"parts to start fresh, or trainer.load_strict=false to load what matches"
        )
    model.load_state_dict({real[k]: state_dict[k] for k in report.loaded}, strict=False)
    return report
