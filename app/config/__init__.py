"""The experiment config, one module per job.

- ``schema``: the documented keys, object nodes and lookup modules (``trainer.*`` keys come from
  the engine's typed settings, ``base/settings.py``);
- ``reading``: JSON and YAML 1.2 files as plain data;
- ``extends``: a file through the bases it extends, merged, with each value's origin;
- ``overrides``: ``key.path=value`` on the command line (and a file's ``patch``: the same syntax);
- ``provenance``: where each value came from, as ``--print-config`` prints it;
- ``names``: names to classes and functions, and what a checkpoint's config may name;
- ``building``: objects from nodes, and the loss, metrics, optimizer and scheduler builders;
- ``config``: :class:`Config`, validated data;
- ``validation``: the checks a :class:`Config` passes when it is made (keys, kinds, names, metrics, monitor);
- ``docs``: the README's reference table.

A config is plain data (JSON or YAML) and is trusted like code, because it names classes to
import; it is read with ``json.loads`` / a ``yaml.SafeLoader`` and nothing else. Every problem is
raised as :class:`UserError` naming the file, the key path and the fix, before anything is
trained or written.
"""

from app.config.building import build_loss, build_lr_scheduler, build_metrics, build_optimizer, scheduler_interval
from app.config.config import Config
from app.config.docs import reference_markdown
from app.config.extends import load_chain, read_config
from app.config.names import closest, resolve_type
from app.config.overrides import apply_override
from app.config.reading import load_yaml, read_config_file
from app.config.schema import REQUIRED, SCHEMA, TRAINER_SCHEMA, metric_name

__all__ = [
    "REQUIRED",
    "SCHEMA",
    "TRAINER_SCHEMA",
    "Config",
    "apply_override",
    "build_loss",
    "build_lr_scheduler",
    "build_metrics",
    "build_optimizer",
    "closest",
    "load_chain",
    "load_yaml",
    "metric_name",
    "read_config",
    "read_config_file",
    "reference_markdown",
    "resolve_type",
    "scheduler_interval",
]
