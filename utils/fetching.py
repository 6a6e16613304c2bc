"""What building an object from a config may fetch: the rule that keeps a checkpoint data even
when the names in its config are allowed ones.

Allowed names can still reach for files: a ``torchvision.models`` builder given ``weights``, the
project's ``TransferClassifier`` with ``weights``, a torchmetrics image metric with a pretrained
feature net all fetch a file through ``torch.hub`` (which unpickles it with
``weights_only=False`` and checks no hash of a file already in its cache), and other libraries
go to the network themselves. So the rule is about what a build may *do*, not about names:

- :func:`sealed` (a build from data: a checkpoint's config): no network
  connection (but to this machine's own services, on loopback), no use of torch's hub cache (reading it or creating its folders), and every
  ``torch.load`` ``weights_only=True``. Such an attempt raises :class:`FetchRefused`, which the
  builder turns into one line naming the config key.
- :func:`verified` (a build from a config the user passed, trusted like code): files from the
  hub cache are loaded ``weights_only=True``, and a file whose name carries its published hash
  (torchvision's ``resnet18-f37072fd.pth``) is checked against it each time it is read, not only
  when it was downloaded.
- :func:`restoring` (a model whose every weight a checkpoint restores right after it is built):
  pretrained weights are not needed at all, :func:`weights_restored` says so to a model that can
  skip them exactly (``model/transfer.py``).

The guards are per thread (another thread, a tracker's upload say, is not affected) and are
installed once, as thin wrappers of ``torch.load``, ``torch.hub.get_dir`` and the socket
functions that pass everything through outside a guard. What they cannot see: a library that
unpickles with ``pickle`` itself, or reads a cache of its own without the network.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.hub

from utils.errors import UserError


class FetchRefused(UserError):
    """A build from data tried to fetch a file or reach the network (:func:`sealed`)."""


_local = threading.local()
_install_lock = threading.Lock()
_installed = False
_env_lock = threading.Lock()
_sealed_threads = 0
_saved_env: dict[str, str | None] = {}


def _depth(name: str) -> int:
    return getattr(_local, name, 0)


def _is_sealed() -> bool:
    return _depth("sealed") > 0


def _is_verified() -> bool:
    return _depth("verified") > 0


def fetches() -> int:
    """How many times this thread has fetched (used torch's hub cache, or opened a network
    connection) inside :func:`verified`: a builder compares it before and after a build."""
    return getattr(_local, "fetches", 0)


def _count_fetch() -> None:
    if _is_verified() and not _is_sealed():
        _local.fetches = fetches() + 1


def weights_restored() -> bool:
    """Whether the model being built gets every weight from a checkpoint right after (:func:`restoring`)."""
    return _depth("restoring") > 0


@contextlib.contextmanager
def _level(name: str) -> Iterator[None]:
    setattr(_local, name, _depth(name) + 1)
    try:
        yield
    finally:
        setattr(_local, name, _depth(name) - 1)


@contextlib.contextmanager
def sealed() -> Iterator[None]:
    """Build from data: no network, no hub cache, ``weights_only`` for every ``torch.load`` (module docstring)."""
    _install()
    _force_weights_only_env(True)
    try:
        with _level("sealed"):
            yield
    finally:
        _force_weights_only_env(False)


@contextlib.contextmanager
def verified() -> Iterator[None]:
    """Build from a trusted config: hub files ``weights_only`` and checked against their published hash."""
    _install()
    with _level("verified"):
        yield


def guard(trusted: bool) -> contextlib.AbstractContextManager:
    """:func:`verified` for a trusted config, :func:`sealed` for one that is data."""
    return verified() if trusted else sealed()


@contextlib.contextmanager
def restoring() -> Iterator[None]:
    """The model built inside gets every weight from a checkpoint right after (strictly)."""
    with _level("restoring"):
        yield


class GuardedPartial(functools.partial):
    """``functools.partial`` whose every call runs under the guard of the config that bound it: a
    loss or metric function can fetch when it is called (torchmetrics' functional LPIPS builds its
    net on each call), long after the build."""

    trusted: bool = True
    refused: Callable[[FetchRefused], UserError] | None = None
    """The one line for a refused fetch, naming the config key (set by the builder)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            with guard(self.trusted):
                return super().__call__(*args, **kwargs)
        except FetchRefused as exc:
            if self.refused is None:
                raise
            raise self.refused(exc) from None


def guarded_partial(
    trusted: bool, refused: Callable[[FetchRefused], UserError] | None, func: Callable, *args: Any, **kwargs: Any
) -> GuardedPartial:
    """``functools.partial(func, *args, **kwargs)`` that runs under :func:`guard` (``trusted``)."""
    bound = GuardedPartial(func, *args, **kwargs)
    bound.trusted, bound.refused = trusted, refused
    return bound


# -- the wrappers, installed once --------------------------------------------------------------------


PROXY_VARIABLES = tuple(f"{scheme}_proxy" for scheme in ("http", "https", "ftp", "all")) + tuple(f"{scheme}_PROXY" for scheme in ("HTTP", "HTTPS", "FTP", "ALL"))
"""Unset while sealed: through a proxy on this machine a download would pass the loopback exception."""


def _force_weights_only_env(entering: bool) -> None:
    """``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` while any thread is sealed: it reaches a ``torch.load``
    imported under another name too (process-wide, so other threads load more safely meanwhile).
    The proxy variables are unset meanwhile, so a fetch connects to its real host and is refused."""
    global _sealed_threads
    with _env_lock:
        if entering:
            if _sealed_threads == 0:
                for name in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", *PROXY_VARIABLES):
                    _saved_env[name] = os.environ.pop(name, None)
                os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
            _sealed_threads += 1
            return
        _sealed_threads -= 1
        if _sealed_threads == 0:
            for name, value in _saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _install() -> None:
    global _installed
    if _installed:  # the common case, every guarded call of a loss or metric: no lock
        return
    with _install_lock:
        if _installed:
            return
        _wrap(torch, "load", _load)
        _wrap(torch.hub, "get_dir", _get_dir)
        _wrap(socket, "getaddrinfo", _getaddrinfo)
        _wrap(socket.socket, "connect", _connect)
        _wrap(socket.socket, "connect_ex", _connect)
        _installed = True


def _wrap(owner: Any, name: str, make: Callable[[Callable], Callable]) -> None:
    original = getattr(owner, name)
    wrapper = functools.wraps(original)(make(original))
    wrapper.__wrapped_by_fetching__ = original
    setattr(owner, name, wrapper)


def _refuse(what: str) -> FetchRefused:
    return FetchRefused(f"it would {what}")


def _get_dir(original: Callable) -> Callable:
    def get_dir() -> str:
        if _is_sealed():
            raise _refuse("fetch a file through torch.hub (pretrained weights)")
        _count_fetch()
        return original()

    return get_dir


def _loopback(host: object) -> bool:
    """This machine's own services (a local database, a tracker's server) are no download."""
    text = host.decode() if isinstance(host, bytes) else str(host)
    return text in ("localhost", "::1") or text.startswith("127.")


def _getaddrinfo(original: Callable) -> Callable:
    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _loopback(host):
            if _is_sealed():
                raise _refuse(f"connect to {host} (a download)")
            _count_fetch()
        return original(host, *args, **kwargs)

    return getaddrinfo


def _connect(original: Callable) -> Callable:
    def connect(self, address, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            if _is_sealed():
                raise _refuse(f"open a network connection to {address[0]} (a download)")
            _count_fetch()
        return original(self, address, *args, **kwargs)

    return connect


def _load(original: Callable) -> Callable:
    def load(f, *args, **kwargs):
        if _is_sealed():
            kwargs["weights_only"] = True
        elif _is_verified() and isinstance(f, (str, os.PathLike)) and _in_hub_cache(Path(f)):
            kwargs["weights_only"] = True
            check_published_hash(Path(f))
        return original(f, *args, **kwargs)

    return load


def _in_hub_cache(path: Path) -> bool:
    get_dir = getattr(torch.hub.get_dir, "__wrapped_by_fetching__", torch.hub.get_dir)  # asking is no fetch
    hub = Path(get_dir()).resolve()
    try:
        path.resolve().relative_to(hub)
    except (ValueError, OSError):
        return False
    return True


def check_published_hash(path: Path) -> None:
    """A hub file named ``<name>-<sha256 prefix>.<ext>`` must hash to that prefix (``torch.hub.HASH_REGEX``)."""
    found = torch.hub.HASH_REGEX.search(path.name)
    if not found or not found.group(1):
        return
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(found.group(1)):
        raise UserError(
            f"{path}: does not match its published hash {found.group(1)} (a damaged or planted file in the torch cache); "
            f"delete it, and it is downloaded again"
        )
