"""The in-memory data path yields exactly the batches of the regular DataLoader path.

``data_loader.args.in_memory: true`` swaps torch's DataLoader for indexing tensors held in
memory; that is only a speed-up if nothing else changes: same samples, same order, same
batch boundaries, for every pass, mid-pass start, validation split and DDP shard.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TIMING_KEYS, tiny_config, write_config
from torch.utils.data import Dataset, TensorDataset

from base import BaseDataLoader
from utils.errors import UserError

N = 103  # not a multiple of any batch size used here, so there is always a short last batch


def numbered_dataset(n: int = N) -> TensorDataset:
    """Sample i has features (i, -i, i/2) and label i % 7, so a batch names the samples it holds."""
    ids = torch.arange(n, dtype=torch.float32)
    return TensorDataset(torch.stack([ids, -ids, ids / 2], dim=1), torch.arange(n) % 7)


class DictDataset(Dataset):
    """A dataset of dict samples, the shape text and multi-input models use."""

    def __init__(self, n: int = N):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"tokens": torch.full((4,), i, dtype=torch.int64), "mask": torch.ones(4) * (i % 3), "label": i % 5}


def pair(dataset: Dataset, **kwargs) -> tuple[BaseDataLoader, BaseDataLoader]:
    """(regular, in-memory) loaders with the same arguments."""
    return BaseDataLoader(dataset, in_memory=False, **kwargs), BaseDataLoader(dataset, in_memory=True, **kwargs)


def assert_same_batches(regular: list, in_memory: list) -> None:
    assert len(regular) == len(in_memory) > 0
    for index, (a, b) in enumerate(zip(regular, in_memory)):
        assert type(a) is type(b), f"batch {index}: {type(a).__name__} vs {type(b).__name__}"
        if isinstance(a, dict):
            assert a.keys() == b.keys()
            pairs = [(a[key], b[key]) for key in a]
        else:
            assert len(a) == len(b)
            pairs = list(zip(a, b))
        for x, y in pairs:
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), f"batch {index} differs"


def passes(loader: BaseDataLoader, count: int, seed: int = 5, start_batch: int = 0) -> list[list]:
    loader.set_seed(seed)
    out = []
    for p in range(count):
        loader.set_epoch(p, start_batch)
        out.append(list(loader))
    return out


def sample_ids(batches: list) -> list[int]:
    return [int(i) for batch in batches for i in batch[0][:, 0].tolist()]


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_same_batches_every_pass(shuffle: bool, drop_last: bool) -> None:
    regular, memory = pair(numbered_dataset(), batch_size=10, shuffle=shuffle, drop_last=drop_last)
    got_regular, got_memory = passes(regular, 3), passes(memory, 3)
    for a, b in zip(got_regular, got_memory):
        assert_same_batches(a, b)
        assert len(a) == (10 if drop_last else 11)
        assert len(a[-1][0]) == (10 if drop_last else 3)
    orders = [sample_ids(batches) for batches in got_memory]
    if shuffle:
        assert orders[0] != orders[1] != orders[2], "each pass must reshuffle"
    else:
        assert orders[0] == orders[1] == list(range(100 if drop_last else N))
    assert len(memory) == len(regular) == memory.batches_per_pass()


def test_order_depends_on_seed_and_pass_only() -> None:
    first = passes(BaseDataLoader(numbered_dataset(), batch_size=8, in_memory=True), 2, seed=3)
    again = BaseDataLoader(numbered_dataset(), batch_size=8, in_memory=True)
    again.set_seed(3)
    again.set_epoch(1)
    list(again)  # another pass read first does not change pass 1
    again.set_epoch(1)
    assert sample_ids(list(again)) == sample_ids(first[1])
    other_seed = passes(BaseDataLoader(numbered_dataset(), batch_size=8, in_memory=True), 1, seed=4)
    assert sample_ids(other_seed[0]) != sample_ids(first[0])


@pytest.mark.parametrize("drop_last", [True, False])
def test_mid_pass_start(drop_last: bool) -> None:
    regular, memory = pair(numbered_dataset(), batch_size=10, drop_last=drop_last)
    for p in range(2):
        full = passes(memory, p + 1)[p]
        for loader in (regular, memory):
            loader.set_seed(5)
        for start in (1, 4, 9):
            regular.set_epoch(p, start)
            memory.set_epoch(p, start)
            tail_regular, tail_memory = list(regular), list(memory)
            assert_same_batches(tail_regular, tail_memory)
            assert_same_batches(full[start:], tail_memory)
            assert len(memory) == len(full) - start


def test_validation_split() -> None:
    regular, memory = pair(numbered_dataset(), batch_size=16, validation_split=0.2, split_seed=11)
    for a, b in zip(passes(regular, 2), passes(memory, 2)):
        assert_same_batches(a, b)
    valid_regular, valid_memory = regular.split_validation(), memory.split_validation()
    assert valid_memory.in_memory and not valid_regular.in_memory
    valid_batches = list(valid_memory)
    assert_same_batches(list(valid_regular), valid_batches)
    train_ids = set(sample_ids(passes(memory, 1)[0]))
    valid_ids = sample_ids(valid_batches)
    assert valid_ids == sorted(valid_ids), "validation is read in order"
    assert len(valid_ids) == round(0.2 * N) and train_ids.isdisjoint(valid_ids) and len(train_ids | set(valid_ids)) == N


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_ddp_shards(world: int, drop_last: bool) -> None:
    """Every rank's in-memory batches equal its regular ones, and the shards split one global order."""
    shards = []
    for rank in range(world):
        regular, memory = pair(numbered_dataset(), batch_size=6, drop_last=drop_last, shard=(rank, world))
        got_regular, got_memory = passes(regular, 2), passes(memory, 2)
        for a, b in zip(got_regular, got_memory):
            assert_same_batches(a, b)
        shards.append([sample_ids(batches) for batches in got_memory])
    single = BaseDataLoader(numbered_dataset(), batch_size=N, shuffle=True)
    single.set_seed(5)
    for p in range(2):
        single.set_epoch(p)
        global_order = single.sampler.indices()
        per_rank = len(global_order) // world if drop_last else -(-len(global_order) // world)
        padded = (global_order + global_order)[: per_rank * world]
        for rank in range(world):
            expected = padded[rank::world]
            ids = shards[rank][p]
            assert ids == expected[: len(ids)]
            assert len(expected) - len(ids) < 6, "only a short last batch may be dropped"
        seen = {i for rank in range(world) for i in shards[rank][p]}
        assert len(seen) >= N - world * 6 if drop_last else seen == set(range(N))


@pytest.mark.parametrize("shuffle", [True, False])
def test_more_ranks_than_samples(shuffle: bool) -> None:
    """DDP pads a small split by repeating it, more than once when ranks outnumber samples."""
    for rank in range(5):
        regular, memory = pair(numbered_dataset(2), batch_size=1, shuffle=shuffle, shard=(rank, 5))
        got_regular, got_memory = passes(regular, 2), passes(memory, 2)
        for a, b in zip(got_regular, got_memory):
            assert_same_batches(a, b)
            assert len(b) == 1


@pytest.mark.parametrize("world", [1, 2])
def test_evaluation_shards(world: int) -> None:
    """The test split (training=False): in order, no padding, every sample on exactly one rank."""
    seen = []
    for rank in range(world):
        regular, memory = pair(numbered_dataset(), batch_size=7, training=False, shard=(rank, world))
        batches = list(memory)
        assert_same_batches(list(regular), batches)
        seen += sample_ids(batches)
    assert sorted(seen) == list(range(N))


def test_dict_batches() -> None:
    regular, memory = pair(DictDataset(), batch_size=8, validation_split=10, drop_last=True)
    got_regular, got_memory = passes(regular, 2), passes(memory, 2)
    for a, b in zip(got_regular, got_memory):
        assert_same_batches(a, b)
    assert set(got_memory[0][0]) == {"tokens", "mask", "label"}
    assert_same_batches(list(regular.split_validation()), list(memory.split_validation()))
    memory.set_epoch(1, 3)
    regular.set_epoch(1, 3)
    assert_same_batches(list(regular), list(memory))


def test_in_memory_ignores_workers_and_stays_on_cpu() -> None:
    regular, memory = pair(numbered_dataset(), batch_size=10, num_workers=2)
    memory.to_device(torch.device("cpu"))
    for a, b in zip(passes(regular, 1), passes(memory, 1)):
        assert_same_batches(a, b)
    assert memory.num_workers == 0
    assert all(t.device.type == "cpu" for batch in passes(memory, 1)[0] for t in batch)


class LabelledText(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> dict:
        return {"x": torch.tensor([float(i)]), "label": i % 2, "name": f"sample-{i}"}


def test_non_tensor_fields_are_refused() -> None:
    """A string field cannot be indexed per batch: a clear error instead of wrong batches."""
    loader = BaseDataLoader(LabelledText(), batch_size=4, in_memory=True)
    loader.set_epoch(0)
    with pytest.raises(UserError, match="data_loader.args.in_memory"):
        list(loader)


def test_training_is_identical(tmp_path) -> None:
    """train.py on the digits: both data paths log the same losses and metrics and end with the same weights."""
    import train

    rows, weights = {}, {}
    for in_memory in (False, True):
        config = tiny_config(tmp_path, epochs=2, save_period=0, limit_batches=6, progress_bar=False)
        config["data_loader"]["args"]["in_memory"] = in_memory
        name = f"memory_{in_memory}"
        assert train.main(["-c", str(write_config(tmp_path, config, f"{name}.json")), "--run-id", name]) == 0
        run_dir = tmp_path / "saved" / config["name"] / name
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        rows[in_memory] = [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]
        weights[in_memory] = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)["model"]
    assert len(rows[True]) == 2 and rows[True][0]["loss"] != rows[True][1]["loss"]
    assert rows[False] == rows[True]
    assert weights[False].keys() == weights[True].keys()
    assert all(torch.equal(weights[False][key], weights[True][key]) for key in weights[True])


def test_overhead_benchmark_runs(tmp_path, capsys) -> None:
    """benchmarks/overhead.py, tiny: both data paths, and a user config; each Trainer side matches its bare loop."""
    from benchmarks import overhead

    assert overhead.main(["--workloads", "mlp", "--steps", "3", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("identical") == 4 and "DIFFERENT" not in out
    assert "in-memory vs DataLoader" in out
    config = write_config(tmp_path, tiny_config(tmp_path))
    assert (
        overhead.main(["--config", str(config), "--steps", "2", "--repeats", "1", "--paths", "loader", "data_loader.args.batch_size=16"])
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("identical") == 1 and "loader trainer" in out
    assert overhead.main(["--config", str(tmp_path / "missing.json")]) == 2


def test_overhead_workloads_need_no_shipped_example() -> None:
    """lenet and mlp bring their own model, data, loss and metric (a copy may have removed the examples) and are
    the shipped LeNet and MLP, weight for weight and output for output, so their numbers still compare."""
    from benchmarks import overhead

    known = overhead.workloads(["lenet", "mlp"])
    for workload in known.values():
        config = workload.config
        names = [config["arch"]["type"], config["data_loader"]["type"], config["loss"], *(m["type"] for m in config["metrics"])]
        assert all(name.startswith("benchmarks.overhead:") for name in names), names
    shipped = pytest.importorskip("model.model")
    if not hasattr(shipped, "LeNet") or not hasattr(shipped, "MLP"):
        pytest.skip("this project's model/model.py has no LeNet and MLP to compare with")
    for ours, theirs, shape in ((overhead.BenchLeNet(), shipped.LeNet(), (4, 1, 28, 28)), (overhead.BenchMLP(), shipped.MLP(), (4, 64))):
        theirs.load_state_dict(ours.state_dict())  # the same parameter names and shapes, or this raises
        ours.eval(), theirs.eval()
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        assert torch.equal(ours(x), theirs(x))
