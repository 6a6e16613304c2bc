"""A checkpoint runs no code and fetches nothing through the names the trust rule allows
(``utils/fetching.py``): a pickle planted in torch's hub cache, where ``torch.hub`` would unpickle
it with ``weights_only=False``, never runs, and an empty cache is never filled or even created.

The planted file is a real pickle whose ``__reduce__`` writes a marker file (``helpers.plant``).
These are the guards' own tests; real checkpoints of the transfer example, edited as a stranger
could, are tested in ``tests/examples/test_transfer_trust.py``. Nothing here reaches the network:
where a download would start, it is refused first.
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.request

import pytest
import torch
from helpers import plant

from utils.fetching import FetchRefused, guarded_partial, sealed, verified


def test_a_trusted_build_loads_hub_files_weights_only_even_with_the_right_hash(tmp_path, monkeypatch):
    """A planted pickle named with its own true hash passes the hash check; weights_only still refuses it."""
    marker = tmp_path / "MARKER"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    folder = tmp_path / "home" / "hub" / "checkpoints"
    planted = plant(folder, "evil.pth", marker)
    digest = hashlib.sha256(planted.read_bytes()).hexdigest()[:10]
    planted.rename(folder / f"evil-{digest}.pth")
    with verified(), pytest.raises(Exception, match="Weights only load failed"):
        torch.hub.load_state_dict_from_url(f"https://example.invalid/evil-{digest}.pth", check_hash=True, weights_only=False)
    assert not marker.exists()
    good = folder / "good.pth"
    torch.save({"w": torch.arange(3.0)}, good)
    digest = hashlib.sha256(good.read_bytes()).hexdigest()[:10]
    good.rename(folder / f"good-{digest}.pth")
    with verified():
        state = torch.hub.load_state_dict_from_url(f"https://example.invalid/good-{digest}.pth", check_hash=True)
    assert torch.equal(state["w"], torch.arange(3.0))


def test_sealed_refuses_unpickling_network_and_the_cache_and_gives_everything_back(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    planted = plant(tmp_path, "any.pth", marker)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # a user's setting: given back as it was
    urllib.request.install_opener(None)  # urlopen's opener reads the proxy variables once: not one an earlier test built
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # a proxy on this machine is no way around the seal
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with sealed():
        with pytest.raises(Exception, match="Weights only load failed"):
            torch.load(planted, weights_only=False)
        with pytest.raises(FetchRefused, match="connect to example.invalid"):
            urllib.request.urlopen("http://example.invalid/weights.pth")
        with pytest.raises(FetchRefused, match="torch.hub"):
            torch.hub.get_dir()
        with socket.create_server(("127.0.0.1", 0)) as server, socket.create_connection(server.getsockname()):
            pass  # this machine's own services (a local database) are no download
    assert not marker.exists()
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1" and "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
    assert os.environ["https_proxy"] == os.environ["HTTP_PROXY"] == "http://127.0.0.1:9"
    assert torch.hub.get_dir()  # outside the guard, everything as before
    refused = guarded_partial(False, None, torch.hub.load_state_dict_from_url, "https://example.invalid/w.pth")
    with pytest.raises(FetchRefused):  # a function bound from a checkpoint's config is guarded when it is called
        refused()


# -- a package a config's `type` needs but that is not installed: one line saying which -------------------


@pytest.fixture
def module_needing_a_package(tmp_path, monkeypatch):
    """A user module importing a package that is not installed, at its top and lazily in a class."""
    (tmp_path / "needs_packages.py").write_text(
        "import torch\n\n\n"
        "class LazyModel(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        import a_package_nobody_installed  # noqa: F401\n"
    )
    (tmp_path / "needs_at_import.py").write_text("import another_package_nobody_installed  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def tiny_with_arch(arch: dict) -> dict:
    import json

    from helpers import TINY

    data = json.loads(TINY.read_text())
    data["arch"] = arch
    data["metrics"] = []
    return data


def test_a_missing_package_is_named_at_import_and_at_build(module_needing_a_package):
    from app.config import Config
    from app.session import build_model
    from utils.errors import UserError

    with pytest.raises(UserError) as raised:
        Config.from_dict(tiny_with_arch({"type": "needs_at_import:Model"}), "c.json")
    assert str(raised.value) == (
        "c.json: arch.type: module 'needs_at_import' needs the package 'another_package_nobody_installed', which is not installed; "
        "install it (pip install another_package_nobody_installed), or name another"
    )
    config = Config.from_dict(tiny_with_arch({"type": "needs_packages:LazyModel"}), "c.json")
    with pytest.raises(UserError) as raised:
        build_model(config)
    message = str(raised.value)
    assert message.startswith("c.json: arch.type: needs_packages:LazyModel needs the package 'a_package_nobody_installed'"), message
    assert f"imported at {module_needing_a_package / 'needs_packages.py'}:7" in message and "\n" not in message


# -- what trains must resume: a build that fetched is tried once more as its checkpoint's config ---------


HUB_MODELS = """
import torch
from helpers import plant
from utils.fetching import weights_restored


class HubModel(torch.nn.Module):
    '''Loads its weights through torch.hub, as torchvision's builders do.'''

    def __init__(self, url: str, skip_when_restored: bool = False):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)
        if not (skip_when_restored and weights_restored()):
            self.fc.load_state_dict(torch.hub.load_state_dict_from_url(url, check_hash=True))

    def forward(self, x):
        return torch.log_softmax(self.fc(x.flatten(1)), dim=1)
"""


@pytest.fixture
def hub_file(tmp_path, monkeypatch):
    """A module whose model fetches through torch.hub, and the hub cache holding its file under its true hash."""
    (tmp_path / "hub_models.py").write_text(HUB_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    folder = tmp_path / "home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(3)
    state = torch.nn.Linear(64, 10).state_dict()
    torch.save(state, folder / "fc.pth")
    digest = hashlib.sha256((folder / "fc.pth").read_bytes()).hexdigest()[:10]
    (folder / "fc.pth").rename(folder / f"fc-{digest}.pth")
    return f"https://example.invalid/fc-{digest}.pth", state


@pytest.mark.parametrize("skip", [False, True], ids=["fetches again", "skips when restored"])
def test_a_model_that_fetches_is_refused_when_the_run_starts_unless_its_checkpoint_can_rebuild_it(skip, hub_file):
    from app.config import Config
    from app.config.building import require_rebuildable
    from app.session import build_model
    from utils.errors import UserError

    url, state = hub_file
    config = Config.from_dict(tiny_with_arch({"type": "hub_models:HubModel", "args": {"url": url, "skip_when_restored": skip}}), "c.json")
    require_rebuildable(config)
    torch.manual_seed(0)
    if not skip:
        with pytest.raises(UserError) as raised:
            build_model(config)
        message = str(raised.value)
        assert message.startswith("c.json: arch.type: building hub_models:HubModel fetched files"), message
        assert "could not be resumed, tested or predicted" in message and "--trust-checkpoint" in message
        return
    model = build_model(config)
    after = torch.rand(1)
    assert torch.equal(model.fc.weight, state["weight"])  # the weights the trusted build fetched, hash checked
    torch.manual_seed(0)
    torch.nn.Linear(64, 10)  # what the first build drew: the second one drew nothing that shows
    assert torch.equal(torch.rand(1), after)


def test_only_a_checkpoints_config_is_sealed_a_cvs_next_fold_fetches_verified():
    """A CV's next fold is built from ``cv.json`` (data, names under the trust rule) but no
    checkpoint holds its pretrained weights yet: it fetches as a trusted config does."""
    from app.config import Config
    from app.config.building import fetch_trusted, starts_new_run

    data = tiny_with_arch({"type": "fixtures.model:TinyCNN", "args": {"num_classes": 10}})
    assert fetch_trusted(Config.from_dict(data, "-c config"))
    from_checkpoint = Config.from_dict(data, "last.pth (its config)", trusted=False)
    assert not fetch_trusted(from_checkpoint)
    next_fold = Config.from_dict(data, "cv.json", trusted=False)
    starts_new_run(next_fold)
    assert fetch_trusted(next_fold) and not next_fold.trusted and not fetch_trusted(from_checkpoint)
