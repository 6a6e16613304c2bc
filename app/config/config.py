"""The validated experiment config: plain data, the file it came from, and whether it is trusted.

What it is checked for is ``app/config/validation.py``; how its objects are built, ``app/config/building.py``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from app.config import building
from app.config.extends import EXTENDS, PATCH, Chain, load_chain
from app.config.names import UntrustedName, resolve_type, trust_rule
from app.config.overrides import apply_override
from app.config.provenance import leaves, references_in, render
from app.config.reading import check_shape, plain_data_problem
from app.config.refs import escape_literals, resolve_references
from app.config.schema import (
    REQUIRED,
    SCHEMA,
    metric_name,
    with_defaults,
)
from app.config.validation import validate
from base.settings import SETTINGS, TrainerSettings, parse_monitor
from utils.errors import UserError


class Config:
    """A validated experiment config.

    ``trusted`` is False for a config read back from a checkpoint (and not passed again with
    ``-c``): its names then resolve only to the project's own code and the libraries the template
    builds from (``app/config/names.py``). ``notes`` are one-line remarks for the log (a key
    from pytorch-template that was accepted and ignored, say).
    """

    def __init__(self, data: dict, source: str = "config", trusted: bool = True):
        self.source = source
        self.trusted = trusted
        self.notes: list[str] = []
        self.origins: dict[str, str] = {}
        """Dotted key path -> the ``file:line`` or override that set it (absent: a default); see ``app/config/extends.py``."""
        self.files: list[dict] = []
        """The chain of config files read, bases first: ``{path, sha256}`` each (for the manifest)."""
        self.references: dict[str, str] = {}
        """Dotted key path -> the ``${reference}`` text its value was resolved from."""
        self.data = with_defaults(data)
        validate(self)
        self.settings = TrainerSettings(**{key: value for key, value in self.data["trainer"].items() if key in SETTINGS})

    @classmethod
    def from_file(cls, path: str | Path, overrides: Iterable[str] = ()) -> Config:
        """The file through the bases it extends (``app/config/extends.py``), then :meth:`from_dict`."""
        chain = load_chain(path)
        return cls.from_dict(chain.data, str(path), overrides, chain=chain)

    @classmethod
    def from_dict(cls, data: dict, source: str, overrides: Iterable[str] = (), trusted: bool = True, chain: Chain | None = None) -> Config:
        """Defaults, then the overrides in order (left to right), then ``${references}``, then validation.

        ``chain``: the files ``data`` was merged from, and where each value came from."""
        if not isinstance(data, dict):
            raise UserError(f"{source}: the config must be a mapping of keys (name, arch, ...), got {type(data).__name__}")
        for directive in (EXTENDS, PATCH):
            if directive in data:
                raise UserError(
                    f"{source}: {directive}: a config's bases and patches are read from its file; pass the file with -c "
                    f"(a driver passes app.config.read_config(FILE), the merged data)"
                )
        check_shape(data, source)  # before anything walks it: a checkpoint's config may be built to exhaust
        found = plain_data_problem(data)
        if found:
            raise UserError(f"{source}: {found[0]}: {found[1]}")
        origins = dict(chain.origins) if chain is not None else {path: source for path, _ in leaves(data)}
        data = with_defaults(data)
        for text in overrides:
            apply_override(data, text, source, trusted, origins)
        for key, spec in SCHEMA.items():  # said before a reference to it could be said to dangle
            if key not in data and spec.default is REQUIRED:
                raise UserError(f"{source}: {key}: missing; every experiment needs it (see the README configuration reference)")
        config = cls(resolve_references(data, source), source, trusted)
        config.origins, config.references = origins, references_in(data)
        config.files = list(chain.files) if chain is not None else []
        return config

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __contains__(self, key: str) -> bool:
        return key in self.data

    @property
    def trainer(self) -> dict:
        return self.data["trainer"]

    def to_dict(self) -> dict:
        """The resolved config as plain data (saved in the run directory and every checkpoint); a
        literal ``${`` is written ``\\${`` so that it reads back as the same text."""
        return escape_literals(copy.deepcopy(self.data))

    def explain(self) -> str:
        """The resolved config, one value a line, each with the file:line or override that set it (``--print-config``)."""
        return render(self.to_dict(), self.origins, self.references, self.source, self.files)

    def digest(self) -> str:
        """A short hash of the resolved config: equal configs, equal digests."""
        return hashlib.sha256(json.dumps(self.data, sort_keys=True).encode()).hexdigest()[:16]

    def check_checkpoints_resumable(self) -> None:
        """Refuse, when a run starts, a config whose checkpoints the trust rule would refuse
        (``app/config/names.py``): what trains must resume, test and predict with the printed command."""
        if not self.trusted:
            return
        try:
            Config(self.to_dict(), self.source, trusted=False)
        except UntrustedName as exc:
            what = str(exc).split(": ", 1)[1].split(" is not defined in ")[0]
            raise UntrustedName(
                f"{self.source}: {what} is not defined in {trust_rule().describe()}, so this run's checkpoints could not be resumed, tested "
                f"or predicted: move it into one of those packages, list its package under [tool.pytorch-template] in "
                f"pyproject.toml, or add --trust-checkpoint to say you trust them"
            ) from None

    def error(self, key: str, problem: str) -> UserError:
        return UserError(f"{self.source}: {key}: {problem}")

    @property
    def metric_names(self) -> list[str]:
        return [metric_name(entry) for entry in self.data["metrics"]]

    def monitor(self) -> tuple[str, str | None]:
        return parse_monitor(self.trainer["monitor"])

    # -- building objects (see app/config/building.py) --------------------------------------

    def init_obj(self, key: str, *args: Any, **kwargs: Any) -> Any:
        """Build the object of node ``key``: ``type(*args, **node.args, **kwargs)``.

        ``args``/``kwargs`` are what the code must supply (e.g. parameters for an optimizer);
        config args may not replace them.
        """
        return building.build(self, key, self._node(key), *args, **kwargs)

    def init_ftn(self, key: str, *args: Any, **kwargs: Any) -> Callable:
        """``functools.partial`` of the function of node ``key`` with its args bound."""
        return building.build_partial(self, key, self._node(key), *args, **kwargs)

    def trainer_class(self) -> type:
        """The class ``trainer.type`` names (checked at validation to be a Trainer)."""
        return resolve_type("trainer", self.data["trainer"]["type"], self.source, self.trusted)

    def _node(self, key: str) -> dict:
        node = self.data.get(key)
        if node is None:
            raise self.error(key, "missing; add it to the config")
        return node
