"""Sharded streams (issue 21): ``base/base_stream_loader.py``, its plan and index, the digits example.

Fast tests check the plan's promises on many shapes (every sample at most once per pass, equal
batch counts on every rank, a bounded tail, an order that depends on seed and pass alone), the
loader's real batches with DataLoader workers, exact resume from ``state_dict``, evaluation and
prediction shares, the index file, and the digits shards. Slow tests train for real with
``configs/digits_stream.json`` and 2 workers: interrupted by SIGTERM and SIGKILL (one process) or
SIGTERM (torchrun, 2 processes) and resumed, the run ends bitwise where an uninterrupted run
ends, having trained on the same samples in every epoch, none twice.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, TESTS_ENV, example_or_skip, last_checkpoint, metric_rows, run_here, run_script, seeded_random, write_config
from stream_recorder import recorded

example_or_skip("streams", "model:DigitsCNN", "data_loader:DigitsDataLoader", "configs/digits.yaml", "model.metric:Accuracy", "model.metric:top_k_acc")  # what it uses of the files a user rewrites first

from app.config import Config, read_config  # noqa: E402
from base import BaseStreamLoader  # noqa: E402
from data_loader import DigitsDataLoader, DigitsStreamLoader  # noqa: E402
from data_loader.digit_shards import SHARD_WEIGHTS, write_digits_shards  # noqa: E402
from dataflow.epochs import prediction_share  # noqa: E402
from dataflow.shard_index import INDEX_NAME  # noqa: E402
from dataflow.stream_plan import next_stream, shard_order, taken_after, training_plan  # noqa: E402
from utils.errors import UserError  # noqa: E402

CPU = torch.device("cpu")


# -- tiny shards of integer ids ---------------------------------------------------------------------


def read_ids(path: Path):
    """A shard of one id per line."""
    with open(path) as file:
        for line in file:
            yield int(line)


def write_id_shards(folder: Path, sizes: list[int]) -> list[int]:
    """Shards of consecutive ids (shard order = id order), sizes as given; returns all ids."""
    folder.mkdir(parents=True, exist_ok=True)
    first = 0
    for number, size in enumerate(sizes):
        (folder / f"part-{number:03d}.txt").write_text("".join(f"{first + i}\n" for i in range(size)))
        first += size
    return list(range(first))


def id_loader(folder: Path, rank: int = 0, world: int = 1, seed: int = 0, **kwargs) -> BaseStreamLoader:
    kwargs.setdefault("batch_size", 4)
    loader = BaseStreamLoader(folder, reader=read_ids, shard=(rank, world), **kwargs)
    loader.set_seed(seed)
    loader.plan_epochs(CPU)
    return loader


def ids_of(batches) -> list[list[int]]:
    return [batch.tolist() for batch in batches]


# -- the plan ---------------------------------------------------------------------------------------


def plan_shapes(count: int = 300):
    rng = random.Random(21)
    for _ in range(count):
        counts = [rng.randint(1, 40) for _ in range(rng.randint(1, 9))]
        yield counts, rng.randint(1, 5), rng.randint(1, 16), rng.randint(1, 4), rng.random() < 0.3, rng.randint(0, 3)


def test_plan_reads_every_sample_at_most_once_with_equal_batches_and_a_bounded_tail():
    tested = 0
    for counts, world, batch_size, streams, drop_last, pass_index in plan_shapes():
        total = sum(counts)
        if (total // world) // batch_size < 1 and drop_last or total < world:
            continue  # no batch for some rank: plan_epochs refuses it (tested below)
        order = shard_order(len(counts), 5, pass_index, True)
        plans = [training_plan(counts, order, rank, world, batch_size, streams, drop_last) for rank in range(world)]
        assert len({plan.batches for plan in plans}) == 1, "every rank takes the same number of batches"
        seen, used = [], []
        for plan in plans:
            assert sum(stream.batches for stream in plan.streams) == plan.batches
            assert max(s.batches for s in plan.streams) - min(s.batches for s in plan.streams) <= 1, "streams balanced"
            for stream in plan.streams:
                assert stream.samples == sum(p.stop - p.start for p in stream.pieces)
                assert math.ceil(stream.samples / batch_size) == stream.batches
                seen += [(p.shard, i) for p in stream.pieces for i in range(p.start, p.stop)]
            used.append(sum(stream.samples for stream in plan.streams))
            partial = [s for s in plan.streams if s.samples % batch_size]
            assert len(partial) <= 1 and (not partial or partial[0] is [s for s in plan.streams if s.batches][-1]), "only the last batch"
        assert len(seen) == len(set(seen)), "a sample twice in a pass"
        assert all(0 <= i < counts[shard] for shard, i in seen)
        assert plans[0].tail == total - len(seen)
        assert plans[0].tail < (world * batch_size if drop_last else world), "tail bound"
        assert max(used) - min(used) <= (batch_size if drop_last else 1), "shares balanced"
        tested += 1
    assert tested > 200


def test_shard_order_depends_only_on_seed_and_pass():
    torch.manual_seed(1)
    first = [shard_order(20, 7, p, True) for p in range(4)]
    torch.manual_seed(2)
    random.seed(3)
    assert [shard_order(20, 7, p, True) for p in range(4)] == first
    assert len({tuple(order) for order in first}) == 4, "each pass has its own order"
    assert shard_order(20, 8, 0, True) != first[0]
    assert shard_order(20, 7, 0, False) == list(range(20))


def test_round_robin_order_is_a_function_of_the_batch_count():
    batches = [4, 4, 3]
    order, taken = [], [0, 0, 0]
    while (stream := next_stream(taken, batches)) is not None:
        order.append(stream)
        taken[stream] += 1
    assert order == [0, 1, 2] * 3 + [0, 1]
    assert [taken_after(k, batches) for k in (0, 4, 11, 50)] == [[0, 0, 0], [2, 1, 1], [4, 4, 3], [4, 4, 3]]


# -- the loader's real batches ------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_ranks_and_workers_read_disjoint_shares_with_equal_batch_counts(tmp_path, num_workers):
    every = write_id_shards(tmp_path, [3, 11, 7, 1, 9, 6])  # 37 ids
    world, seen = 3, []
    for rank in range(world):
        loader = id_loader(tmp_path, rank, world, num_workers=num_workers)
        assert loader.batches_per_epoch == 3  # 12, 12 and 13 ids: 3, 3 and 4 batches of 4; every rank takes 3
        batches = ids_of(loader.epoch_batches(2, 0))
        assert len(batches) == 3 and all(len(b) == 4 for b in batches)
        seen += [i for batch in batches for i in batch]
    assert len(seen) == len(set(seen)) == len(every) - 1  # one rank's 13th id is the tail
    again = [
        i for rank in range(world) for b in ids_of(id_loader(tmp_path, rank, world, num_workers=num_workers).epoch_batches(2, 0)) for i in b
    ]
    assert again == seen, "same seed and pass, same batches"
    other = [
        i for rank in range(world) for b in ids_of(id_loader(tmp_path, rank, world, num_workers=num_workers).epoch_batches(3, 0)) for i in b
    ]
    assert other != seen and len(set(other)) == len(other)


def test_training_order_does_not_depend_on_the_global_generators(tmp_path):
    write_id_shards(tmp_path, [5, 8, 13])
    torch.manual_seed(0)
    a = ids_of(id_loader(tmp_path, num_workers=2, shuffle_buffer=6).epoch_batches(1, 0))
    torch.manual_seed(99)
    np.random.seed(5)
    b = ids_of(id_loader(tmp_path, num_workers=2, shuffle_buffer=6).epoch_batches(1, 0))
    assert a == b and sorted(i for batch in a for i in batch) == list(range(26))


def test_reading_in_the_main_process_leaves_the_training_generators_alone(tmp_path):
    """Without workers, batches are read between training steps: dropout must draw as if they were not."""
    write_id_shards(tmp_path, [5, 8, 13])
    loader = id_loader(tmp_path, shuffle_buffer=6)

    def draws_after_seeding(read=lambda: None):
        torch.manual_seed(3), random.seed(3), np.random.seed(3)
        read()
        return torch.rand(3).tolist(), random.random(), float(np.random.rand())

    expected = draws_after_seeding()
    assert draws_after_seeding(lambda: list(loader.epoch_batches(1, 0))) == expected


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("digits") / "shards"
    write_digits_shards(folder)
    return folder


class NoisyDigits(DigitsStreamLoader):
    """Random augmentation inside read_shard: a resume must draw the same noise."""

    def read_shard(self, path, start=0):
        for image, label in super().read_shard(path, start):
            yield image + 0.1 * torch.randn(image.shape), label


def noisy(folder: Path, num_workers: int, shuffle_buffer: int, rank: int = 0, world: int = 1) -> NoisyDigits:
    loader = NoisyDigits(str(folder), batch_size=32, num_workers=num_workers, shuffle_buffer=shuffle_buffer, shard=(rank, world))
    loader.set_seed(4)
    loader.plan_epochs(CPU)
    return loader


def same_batches(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


@pytest.mark.parametrize(("num_workers", "shuffle_buffer"), [(0, 0), (2, 0), (2, 100)])
def test_state_dict_resumes_mid_epoch_exactly_and_counts_only_taken_batches(digits_dir, num_workers, shuffle_buffer):
    uninterrupted = list(noisy(digits_dir, num_workers, shuffle_buffer, 1, 2).epoch_batches(2, 0))
    assert len(uninterrupted) == 20  # 611 samples per rank, batches of 32
    loader = noisy(digits_dir, num_workers, shuffle_buffer, 1, 2)
    batches = loader.epoch_batches(2, 0)
    taken = [next(batches) for _ in range(7)]
    state = loader.state_dict()
    assert sum(state["positions"]) == 7 * 32, "prefetched batches are not counted"
    del batches
    resumed = noisy(digits_dir, num_workers, shuffle_buffer, 1, 2)
    resumed.load_state_dict(json.loads(json.dumps(state)), mid_epoch=True)  # plain data, as a checkpoint holds it
    assert same_batches(taken + list(resumed.epoch_batches(2, 7)), uninterrupted)


def test_an_epoch_starts_fresh_whatever_came_before(digits_dir):
    """The pre-flight takes one batch before a resume; a later fresh epoch is unaffected by it."""
    loader = noisy(digits_dir, 2, 0)
    next(iter(loader.epoch_batches(1, 0)))
    assert same_batches(list(loader.epoch_batches(1, 0)), list(noisy(digits_dir, 2, 0).epoch_batches(1, 0)))


def children() -> list[int]:
    """This process's live child processes (Linux ``/proc``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_leave_sigterm_to_the_main_process(digits_dir):
    """A cluster's preemption signals every process of the job, workers too: they must not die, or
    the main process fails on its next batch instead of stopping at a step with a checkpoint."""
    uninterrupted = list(noisy(digits_dir, 2, 0).epoch_batches(1, 0))
    batches = noisy(digits_dir, 2, 0).epoch_batches(1, 0)
    taken = [next(batches)]
    workers = children()
    assert len(workers) >= 2
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    time.sleep(0.5)
    assert same_batches(taken + list(batches), uninterrupted)


LEAK_AT_EXIT = """
import sys
from base import BaseStreamLoader

def read(path):
    with open(path) as file:
        yield from (int(line) for line in file)

loader = BaseStreamLoader(sys.argv[1], 2, num_workers=2, reader=read, shard=(0, 1))
loader.plan_epochs(None)
batches = loader.epoch_batches(1, 0)
next(batches)
KEPT = [batches]  # alive at exit, as a traceback can keep an epoch's generator; its workers ignore SIGTERM
print("exiting")
"""


@pytest.mark.slow
def test_a_process_exits_promptly_with_a_stream_still_open(tmp_path):
    write_id_shards(tmp_path, [10, 20])
    result = run_script("-c", LEAK_AT_EXIT, str(tmp_path), timeout=60)  # hung forever before the exit hook
    assert result.returncode == 0 and result.stdout == "exiting\n", result.stderr


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"num_workers": 0}, "data_loader.args.num_workers"),
        ({"batch_size": 16}, "data_loader.args.batch_size"),
        ({"shuffle_buffer": 8}, "data_loader.args.shuffle_buffer"),
        ({"world": 3}, "torchrun --nproc_per_node=2"),
    ],
)
def test_a_mid_epoch_state_from_another_set_up_is_one_line_naming_the_key(tmp_path, change, key):
    write_id_shards(tmp_path, [10, 20, 30])
    loader = id_loader(tmp_path, 0, 2, num_workers=2)
    next(iter(loader.epoch_batches(1, 0)))
    state = loader.state_dict()
    world = change.pop("world", 2)
    other = id_loader(tmp_path, 0, world, **{"num_workers": 2, **change})
    other.load_state_dict(state, mid_epoch=False)  # an epoch-end checkpoint resumes anywhere
    with pytest.raises(UserError) as error:
        other.load_state_dict(state, mid_epoch=True)
    message = str(error.value)
    assert "\n" not in message and key in message and "epoch-end checkpoint" in message


def test_len_epoch_spans_passes_and_resumes_inside_the_second(tmp_path):
    write_id_shards(tmp_path, [5, 9, 6])  # 20 ids: 5 batches of 4 per pass
    loader = id_loader(tmp_path, num_workers=2)
    loader.plan_epochs(CPU, len_epoch=3)
    epochs = [ids_of(loader.epoch_batches(epoch, 0)) for epoch in (1, 2, 3, 4)]
    flat = [b for epoch in epochs for b in epoch]
    assert sorted(i for b in flat[:5] for i in b) == sorted(i for b in flat[5:10] for i in b) == list(range(20))
    batches = loader.epoch_batches(2, 0)
    next(batches)  # epoch 2 = pass 0's batches 3, 4 and pass 1's batch 0
    next(batches)
    state = loader.state_dict()
    del batches
    resumed = id_loader(tmp_path, num_workers=2)
    resumed.plan_epochs(CPU, len_epoch=3)
    resumed.load_state_dict(state, mid_epoch=True)
    assert ids_of(resumed.epoch_batches(2, 2)) == epochs[1][2:]
    resumed.plan_epochs(CPU, len_epoch=4)
    resumed.load_state_dict(state, mid_epoch=True)
    with pytest.raises(UserError, match="trainer.len_epoch"):
        list(resumed.epoch_batches(2, 2))


def test_limit_and_overfit_batches(tmp_path):
    write_id_shards(tmp_path, [5, 9, 6])
    loader = id_loader(tmp_path)
    loader.plan_epochs(CPU, limit_batches=2)
    assert loader.batches_per_epoch == 2 and ids_of(loader.epoch_batches(1, 0)) == ids_of(id_loader(tmp_path).epoch_batches(1, 0))[:2]
    loader.plan_epochs(CPU, overfit_batches=3)
    assert ids_of(loader.epoch_batches(1, 0)) == ids_of(loader.epoch_batches(5, 0)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_a_rank_without_a_whole_batch_is_a_one_line_error(tmp_path):
    write_id_shards(tmp_path, [3, 2])
    with pytest.raises(UserError, match=r"^data_loader.args.batch_size: 5 training samples over 2 process\(es\) give no batch of 4"):
        id_loader(tmp_path, 0, 2, drop_last=True)


# -- evaluation and predictions -------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_evaluation_reads_each_ranks_contiguous_share_once(tmp_path, num_workers):
    every = write_id_shards(tmp_path, [3, 11, 7, 1, 9, 6])
    shares = []
    for rank in range(3):
        loader = id_loader(tmp_path, rank, 3, num_workers=num_workers, training=False)
        share = [i for batch in ids_of(loader.epoch_batches(1, 0)) for i in batch]
        assert share == [i for batch in ids_of(iter(loader)) for i in batch]  # plain batches, no tags
        shares.append(share if num_workers == 0 else sorted(share))
    assert [i for share in shares for i in share] == every
    assert [len(share) for share in shares] == [12, 12, 13]


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_prediction_batches_are_the_single_process_batches_in_order_split_like_the_map_style_loaders(tmp_path, num_workers, world):
    every = write_id_shards(tmp_path, [3, 11, 7, 1, 9, 6])
    loader = id_loader(tmp_path, training=False, num_workers=num_workers)
    single = [every[i : i + 4] for i in range(0, len(every), 4)]  # ids are positions in the in-order sequence
    rows = []
    for rank in range(world):
        share = prediction_share(len(every), 4, rank, world)
        got = list(loader.prediction_batches(rank, world))
        assert all(index.dtype == torch.int64 and index.tolist() == batch.tolist() for index, batch in got)
        assert ids_of(b for _, b in got) == single[share.start // 4 : -(-share.stop // 4)]
        rows += [i for _, batch in got for i in batch.tolist()]
    assert rows == every, "ranks' rows, concatenated in rank order, are in data set order"


# -- the index file ----------------------------------------------------------------------------------


def test_index_counts_once_and_recounts_only_changed_shards(tmp_path):
    write_id_shards(tmp_path, [3, 4, 5])
    counted = []

    def counter(path):
        counted.append(path.name)
        return sum(1 for _ in read_ids(path))

    BaseStreamLoader(tmp_path, 2, reader=read_ids, counter=counter, shard=(0, 1))
    assert sorted(counted) == ["part-000.txt", "part-001.txt", "part-002.txt"]
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert {name: entry["samples"] for name, entry in index["shards"].items()} == {"part-000.txt": 3, "part-001.txt": 4, "part-002.txt": 5}
    counted.clear()
    BaseStreamLoader(tmp_path, 2, reader=read_ids, counter=counter, shard=(0, 1))
    assert counted == []
    (tmp_path / "part-001.txt").write_text("100\n101\n102\n103\n104\n")
    loader = BaseStreamLoader(tmp_path, 2, reader=read_ids, counter=counter, shard=(0, 1))
    assert counted == ["part-001.txt"] and loader.num_samples == 13


def test_a_stale_index_is_a_one_line_error_naming_it(tmp_path):
    write_id_shards(tmp_path, [3, 4, 5])
    BaseStreamLoader(tmp_path, 2, reader=read_ids, shard=(0, 1))

    def fewer(path):  # a changed reader of the same name, the index does not know
        yield from list(read_ids(path))[:-1]

    fewer.__qualname__ = read_ids.__qualname__
    loader = BaseStreamLoader(tmp_path, 2, num_workers=2, reader=fewer, shard=(0, 1))
    loader.plan_epochs(CPU)
    with pytest.raises(UserError) as error:
        list(loader.epoch_batches(1, 0))
    assert "\n" not in str(error.value) and f"delete {tmp_path / INDEX_NAME}" in str(error.value)


def test_an_index_that_cannot_be_written_is_kept_in_memory(tmp_path):
    write_id_shards(tmp_path, [3, 4])
    (tmp_path / INDEX_NAME).mkdir()  # unwritable even for root, like a read-only folder
    assert BaseStreamLoader(tmp_path, 2, reader=read_ids, shard=(0, 1)).num_samples == 7
    assert (tmp_path / INDEX_NAME).is_dir() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_user_errors_at_construction_are_one_line(tmp_path):
    with pytest.raises(UserError, match="no shard files in"):
        BaseStreamLoader(tmp_path, 2, reader=read_ids)
    write_id_shards(tmp_path, [3, 4])
    with pytest.raises(UserError, match="must define read_shard"):
        BaseStreamLoader(tmp_path, 2)
    with pytest.raises(UserError, match="data_loader.args.num_workers: must be from 0 to"):
        BaseStreamLoader(tmp_path, 2, num_workers=-1, reader=read_ids)
    with pytest.raises(UserError, match="data_loader.args.validation_split: 2 shards of 2"):
        BaseStreamLoader(tmp_path, 2, validation_split=2, reader=read_ids)


def test_validation_split_holds_out_whole_shards(tmp_path):
    write_id_shards(tmp_path, [3, 4, 5, 6])
    loader = BaseStreamLoader(tmp_path, 2, validation_split=1, split_seed=3, reader=read_ids, shard=(0, 1))
    valid = loader.split_validation()
    assert valid is not None and not valid.training
    assert loader.num_samples + valid.num_samples == 18 and len(valid.dataset.paths) == 1
    assert not set(valid.dataset.paths) & set(loader.dataset.paths)


# -- the digits shards --------------------------------------------------------------------------------


def _write(folder: str, start) -> None:
    start.wait()
    write_digits_shards(Path(folder))


def test_two_processes_writing_the_digits_shards_together_leave_one_whole_copy(tmp_path):
    folder = tmp_path / "d"
    context = multiprocessing.get_context("fork")
    start = context.Event()
    writers = [context.Process(target=_write, args=(str(folder), start)) for _ in range(2)]
    for writer in writers:
        writer.start()
    start.set()
    for writer in writers:
        writer.join(60)
    assert [writer.exitcode for writer in writers] == [0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"], "no staging folder left behind"
    for split, weights in SHARD_WEIGHTS.items():
        assert len(list((folder / split).glob("shard-*.npz"))) == len(weights)


def test_digits_shards_hold_the_in_memory_defaults_splits_in_uneven_shards(digits_dir):
    memory = DigitsDataLoader(batch_size=64, in_memory=True)
    stream = DigitsStreamLoader(str(digits_dir), batch_size=64, num_workers=0, shard=(0, 1))
    assert sorted(stream.dataset.counts) != [stream.dataset.counts[0]] * 7 and len(stream.dataset.counts) == 7

    def rows(batches) -> list:
        return sorted(tuple(image.flatten().tolist()) + (int(label),) for images, labels in batches for image, label in zip(images, labels))

    assert rows(stream) == rows(memory)
    assert rows(stream.split_validation()) == rows(memory.split_validation())
    test = DigitsStreamLoader(str(digits_dir), batch_size=64, num_workers=0, training=False, shard=(0, 1))
    assert rows(test) == rows(DigitsDataLoader(batch_size=64, training=False))
    assert len(test.base_dataset) == 359


def test_a_data_dir_holding_something_else_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"data_loader.args.data_dir: .* holds no digits shards"):
        DigitsStreamLoader(str(tmp_path))


# -- end to end: real runs with configs/digits_stream.json, real signals ------------------------------

STREAM_CONFIG = ROOT / "configs" / "digits_stream.json"
TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
TRAIN_IDS = 1222  # the digits training split; no tail with these batch sizes (1,222 = 19*64+6; 611 = 19*32+3 per rank)


def stream_experiment(tmp_path: Path, batch_size: int, epochs: int, **trainer) -> Path:
    """configs/digits_stream.json (2 workers, shuffle buffer), small, its batches' ids recorded, under ``tmp_path``."""
    config = read_config(STREAM_CONFIG)  # through digits.yaml, which it extends
    assert config["data_loader"]["args"]["num_workers"] == 2
    config["arch"] = {"type": "stream_recorder:RecordingDigitsCNN", "args": {"num_classes": 10, "dropout": 0.3}}
    config["data_loader"]["type"] = "stream_recorder:IdDigitsStreamLoader"
    config["data_loader"]["args"].update(data_dir=str(tmp_path / "shards"), batch_size=batch_size)
    config["trainer"].update(epochs=epochs, save_dir=str(tmp_path / "saved"), tensorboard=False, early_stop=0, **trainer)
    config["metrics"] = [metric for metric in config["metrics"] if "torchmetrics" not in str(metric.get("type"))]  # 2 s per process
    return write_config(tmp_path, config, "stream.json")


def launch(*args: str, ids: Path, torchrun: bool = False, **signal_env: str):
    env = {**TESTS_ENV, "RECORD_IDS": str(ids), **signal_env}
    # Nothing a new process must show: a SIGTERM the model sends its own process is real in-process too.
    if not torchrun and signal_env.get("SIGNAL_NAME") != "SIGKILL":
        return run_here("train.py", *args, "--trust-checkpoint", env=env)
    return run_script(*(TORCHRUN if torchrun else ()), "train.py", *args, "--trust-checkpoint", env=env, timeout=600)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_run(a: Path, b: Path) -> None:
    state_a, state_b = last_checkpoint(a), last_checkpoint(b)
    assert state_a["model"].keys() == state_b["model"].keys()
    for key in state_a["model"]:
        assert torch.equal(state_a["model"][key], state_b["model"][key]), f"{key} differs after resume"
    assert state_a["progress"] == state_b["progress"]
    assert metric_rows(a, timing=False) == metric_rows(b, timing=False)


def assert_epochs_see_every_id_once(batches: list[list[int]], per_epoch: int, epochs: int) -> None:
    assert len(batches) == per_epoch * epochs
    for epoch in range(epochs):
        ids = [i for batch in batches[epoch * per_epoch : (epoch + 1) * per_epoch] for i in batch]
        assert sorted(ids) == list(range(TRAIN_IDS)) or (len(ids) == len(set(ids)) and len(ids) == TRAIN_IDS), f"epoch {epoch + 1}"


@pytest.fixture(scope="module")
def single(tmp_path_factory, request):
    """One uninterrupted run and one stopped by SIGTERM, resumed, killed by SIGKILL, resumed."""
    rng = seeded_random(request)
    tmp = tmp_path_factory.mktemp("single")
    config = stream_experiment(tmp, batch_size=64, epochs=3, save_every_n_steps=7)  # 20 batches per epoch
    straight = launch("-c", str(config), "--run-id", "straight", ids=tmp / "ids-straight")
    assert straight.returncode == 0, straight.stdout + straight.stderr
    at_term = rng.randint(22, 37)  # a step inside epoch 2
    stopped = launch(
        "-c", str(config), "--run-id", "interrupted", ids=tmp / "ids-1", SIGNAL_AT_BATCH=str(at_term + 1), SIGNAL_NAME="SIGTERM"
    )
    assert stopped.returncode == 128 + signal.SIGTERM, (at_term, stopped.stdout + stopped.stderr)
    run_dir = tmp / "saved" / "digits_stream" / "interrupted"
    snapshot = tmp / "snapshot" / "digits_stream" / "interrupted"
    shutil.copytree(run_dir, snapshot)
    last = str(run_dir / "checkpoints" / "last.pth")
    at_kill = rng.randint(at_term + 3, 57)
    killed = launch("-r", last, ids=tmp / "ids-2", SIGNAL_AT_BATCH=str(at_kill - at_term + 1), SIGNAL_NAME="SIGKILL")
    assert killed.returncode == -signal.SIGKILL, (at_term, at_kill, killed.stdout + killed.stderr)
    kept = last_checkpoint(run_dir)["progress"]["global_step"]
    resumed = launch("-r", last, ids=tmp / "ids-3")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # what training counted: each process's lines after its pre-flight line, up to its last checkpoint
    trained = recorded(tmp / "ids-1")[1 : 1 + at_term] + recorded(tmp / "ids-2")[1 : 1 + kept - at_term] + recorded(tmp / "ids-3")[1:]
    return {
        "tmp": tmp,
        "straight": tmp / "saved" / "digits_stream" / "straight",
        "run_dir": run_dir,
        "snapshot": snapshot,
        "at_term": at_term,
        "stopped": stopped,
        "resumed": resumed,
        "reference_ids": recorded(tmp / "ids-straight")[1:],
        "trained_ids": trained,
    }


@pytest.mark.slow
def test_stream_run_stopped_by_sigterm_then_sigkill_resumes_bitwise(single):
    at = single["at_term"]
    assert (
        "stream: 1,222 training samples in 7 shards; per process 20 batches of 64 per pass from 2 stream(s); 0 sample(s)"
        in single["stopped"].stdout
    )
    assert f"resuming epoch 2 at batch {at - 20} of 20" in single["stopped"].stdout + last_log(single["run_dir"])
    assert_same_run(single["straight"], single["run_dir"])


def last_log(run_dir: Path) -> str:
    return (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_every_epoch_trains_on_the_uninterrupted_runs_samples_none_twice(single):
    assert single["trained_ids"] == single["reference_ids"], "the same batches, in the same order"
    assert_epochs_see_every_id_once(single["reference_ids"], 20, 3)


@pytest.mark.slow
def test_mid_epoch_resume_with_other_num_workers_is_refused_and_changes_nothing(single):
    snapshot = single["snapshot"]
    before = files_of(snapshot)
    refused = run_here("train.py", "-r", str(snapshot / "checkpoints" / "last.pth"), "data_loader.args.num_workers=0", "--trust-checkpoint", env=TESTS_ENV)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    lines = refused.stderr.strip().splitlines()
    checkpoint = snapshot / "checkpoints" / "last.pth"
    assert len(lines) == 1 and lines[0].startswith(
        f"error: {checkpoint}: data_loader.args.num_workers: the checkpoint was written mid-epoch with num_workers 2"
    )
    assert "resume with data_loader.args.num_workers=2" in lines[0]
    assert files_of(snapshot) == before


@pytest.mark.slow
def test_test_py_and_predict_py_read_the_test_shards(single, tmp_path):
    """test.py evaluates every test sample once; predict.py writes them in data set order, agreeing with it."""
    best = str(single["straight"] / "checkpoints" / "best.pth")
    result = run_here("test.py", "-r", best, "--out", str(tmp_path / "metrics.json"), "--trust-checkpoint", env=TESTS_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["samples"] == 359 and metrics["accuracy"] > 0.8
    result = run_here("predict.py", "-r", best, "--out", str(tmp_path / "rows.jsonl"), "--trust-checkpoint", env=TESTS_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [row["index"] for row in rows] == list(range(359))
    assert sum(row["prediction"] == row["target"] for row in rows) == round(metrics["accuracy"] * 359)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, request):
    """Under torchrun with 2 processes: one uninterrupted run, and one stopped by SIGTERM on rank 0 and
    resumed. (A SIGKILL mid-stream is the single-process fixture's; a rank killed under torchrun,
    test_hardening's and test_auto_resume's: each launch here costs about 10 s of the suite.)"""
    rng = seeded_random(request)
    tmp = tmp_path_factory.mktemp("ddp")
    config = stream_experiment(tmp, batch_size=32, epochs=2, save_every_n_steps=7)  # 611 samples per rank: 20 batches per epoch
    straight = launch("-c", str(config), "--run-id", "straight", ids=tmp / "ids-straight", torchrun=True)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    at_term = rng.randint(21, 33)
    signals = {"SIGNAL_RANK": "0", "SIGNAL_AT_BATCH": str(at_term + 1), "SIGNAL_NAME": "SIGTERM"}
    stopped = launch("-c", str(config), "--run-id", "interrupted", ids=tmp / "ids-1", torchrun=True, **signals)
    assert stopped.returncode != 0, stopped.stdout + stopped.stderr
    run_dir = tmp / "saved" / "digits_stream" / "interrupted"
    state = last_checkpoint(run_dir)
    assert (state["progress"]["epoch"], state["progress"]["batch_in_epoch"], state["world_size"]) == (2, at_term - 20, 2), at_term
    snapshot = tmp / "snapshot" / "digits_stream" / "interrupted"
    shutil.copytree(run_dir, snapshot)
    last = str(run_dir / "checkpoints" / "last.pth")
    resumed = launch("-r", last, ids=tmp / "ids-2", torchrun=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return {
        "straight": tmp / "saved" / "digits_stream" / "straight",
        "run_dir": run_dir,
        "snapshot": snapshot,
        "reference_ids": [recorded(tmp / "ids-straight", rank)[1:] for rank in range(2)],
        "trained_ids": [
            recorded(tmp / "ids-1", rank)[1 : 1 + at_term] + recorded(tmp / "ids-2", rank)[1:]
            for rank in range(2)
        ],
    }


@pytest.mark.slow
def test_stream_under_torchrun_resumes_bitwise_after_sigterm(ddp):
    assert_same_run(ddp["straight"], ddp["run_dir"])


@pytest.mark.slow
def test_under_torchrun_each_rank_trains_on_its_uninterrupted_samples_and_ranks_share_none(ddp):
    assert ddp["trained_ids"] == ddp["reference_ids"]
    first, second = ddp["reference_ids"]
    assert len(first) == len(second) == 40, "both ranks take the same number of batches"
    merged = [a + b for a, b in zip(first, second)]
    assert_epochs_see_every_id_once(merged, 20, 2)


@pytest.mark.slow
def test_a_mid_epoch_ddp_checkpoint_resumed_by_one_process_is_refused_and_changes_nothing(ddp):
    snapshot = ddp["snapshot"]
    before = files_of(snapshot)
    refused = run_here("train.py", "-r", str(snapshot / "checkpoints" / "last.pth"), "--trust-checkpoint", env=TESTS_ENV)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "written mid-epoch by 2 process(es)" in lines[0] and "same number of processes" in lines[0]
    assert files_of(snapshot) == before


def test_digits_stream_extends_digits_yaml_and_resolves_as_written_out():
    """configs/digits_stream.json is digits.yaml with a streamed loader: the same config as the file written in full."""
    full = read_config(ROOT / "configs" / "digits.yaml")  # not config.json: in a copy that is the user's
    full["name"] = "digits_stream"
    full["data_loader"] = {
        "type": "DigitsStreamLoader",
        "args": {"data_dir": "data/digits_shards", "batch_size": 32, "shuffle": True, "num_workers": 2, "shuffle_buffer": 256},
    }
    stream = Config.from_file(ROOT / "configs" / "digits_stream.json")
    assert stream.to_dict() == Config.from_dict(full, "written out").to_dict()
    assert [Path(entry["path"]) for entry in stream.files] == [ROOT / "configs" / "digits.yaml", ROOT / "configs" / "digits_stream.json"]


def rekeyed(path: Path) -> None:
    with np.load(path) as shard:
        arrays = {"pixels": shard["images"], "labels": shard["labels"]}
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:200]), ()),
        (lambda p: p.write_bytes(b""), ()),
        (rekeyed, ("images",)),
    ],
    ids=["truncated", "empty", "other arrays"],
)
def test_a_damaged_shard_is_one_line_naming_it(tmp_path, damage, expected):
    folder = tmp_path / "shards"
    write_digits_shards(folder)
    damage(folder / "train" / "shard-00003.npz")
    overrides = [f"data_loader.args.data_dir={folder}", "data_loader.args.num_workers=0", f"trainer.save_dir={tmp_path / 'saved'}"]
    result = run_here("train.py", "-c", STREAM_CONFIG, *overrides)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert all(text in lines[0] for text in ("shard-00003.npz", "not a readable digits shard", *expected)), lines[0]
