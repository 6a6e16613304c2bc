"""Python imports this module at start-up in every process whose ``PYTHONPATH`` holds ``tests/``
(the test suite's subprocesses: ``helpers.run_script``, torchrun workers): there, as in the pytest
process (``conftest.py``), a checkpoint's config may name the engine tests' fixtures
(``tests/fixtures``). Nothing is imported up front: the rule is extended when the engine's
``app.config.names`` is first imported, so a process's start-up (and its early signal handlers)
is unchanged. A user's process never has ``tests/`` on its path, so its rule is never loosened."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

TARGET = "app.config.names"


class _TrustFixturesOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_trust(module):
            exec_module(module)
            from fixtures import trust_for_tests

            trust_for_tests()

        spec.loader.exec_module = exec_then_trust
        return spec


sys.meta_path.insert(0, _TrustFixturesOnImport())
