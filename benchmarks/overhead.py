"""The framework tax: this project's Trainer against the loop you would write by hand.

    python benchmarks/overhead.py                                  all workloads (about 4 minutes on 2 cores)
    python benchmarks/overhead.py --workloads mlp --repeats 25     one workload, more repeats
    python benchmarks/overhead.py --config my.json --steps 300     your own config
    python benchmarks/overhead.py --config my.json data_loader.args.in_memory=true   ... with overrides

Both sides get the same model (same initial weights), data, batch size, optimizer, scheduler,
number of optimizer steps, data path and threads, in one process, alternating a/b, b/a, a/b...
after an untimed warm-up round. The Trainer is built from typed settings (no config object reaches the engine)
with the config's parts, with logging (``train.log``, TensorBoard, a line every ``log_step``),
training metrics and checkpointing at their defaults, writing into a temporary folder; its time is the whole ``trainer.train()`` call:
one epoch of ``--steps`` batches (``trainer.len_epoch``), its metrics row and its checkpoint, and
no validation, which the bare loop does not do either. The bare loop is forward, loss, backward,
step, zero_grad and a running loss sum for an epoch log, over a plain ``DataLoader`` or over
pre-made tensors (``index_select`` by a shuffled permutation), matching the Trainer's data path.

Both sides visit the data in the same order with the same dropout draws, so on CPU they end with
bit-identical weights: the ``weights`` column checks that they did the same work.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset  # noqa: E402

from app.config import Config, build_loss, build_lr_scheduler, build_metrics, build_optimizer, read_config_file, scheduler_interval  # noqa: E402
from app.run_dir import RunDirClaim  # noqa: E402
from base import BaseDataLoader, BaseModel  # noqa: E402
from logger import get_logger, setup_logging  # noqa: E402
from logger.run_log import RunRecorder  # noqa: E402
from trainer import Trainer  # noqa: E402
from trainer.batches import unpack_batch  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.seed import seed_everything  # noqa: E402


class SyntheticDataLoader(BaseDataLoader):
    """Random inputs of a given shape, labelled by a fixed random linear teacher (no download).

    Found by name as ``benchmarks.overhead:SyntheticDataLoader``, the way any user class is.
    """

    def __init__(
        self,
        shape: list[int],
        num_samples: int = 8192,
        num_classes: int = 10,
        batch_size: int = 64,
        shuffle: bool = True,
        in_memory: bool = False,
        drop_last: bool = False,
        num_workers: int = 0,
    ):
        generator = torch.Generator().manual_seed(1234)
        inputs = torch.randn(num_samples, *shape, generator=generator)
        teacher = torch.randn(inputs[0].numel(), num_classes, generator=generator)
        labels = (inputs.flatten(1) @ teacher).argmax(dim=1)
        dataset = TensorDataset(inputs, labels)
        super().__init__(dataset, batch_size, shuffle, num_workers=num_workers, in_memory=in_memory, drop_last=drop_last)


class BenchLeNet(BaseModel):
    """LeNet-style CNN for 1x28x28 inputs (MNIST-sized): the benchmark's own, so it runs in a project
    that replaced or removed the shipped examples (``model/model.py``'s ``LeNet`` is the same network)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.5):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = torch.nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = torch.nn.Dropout2d(dropout)
        self.fc1 = torch.nn.Linear(320, 50)
        self.fc2 = torch.nn.Linear(50, num_classes)
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = self.dropout(F.relu(self.fc1(x.view(-1, 320))))
        return F.log_softmax(self.fc2(x), dim=1)


class BenchMLP(BaseModel):
    """A 64-64-10 perceptron, where per-step overhead dominates: the benchmark's own (as :class:`BenchLeNet`)."""

    def __init__(self, in_features: int = 64, hidden: int = 64, num_classes: int = 10):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(in_features, hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.0),
            torch.nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return F.log_softmax(self.net(x), dim=1)


def nll_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss of the digits example's ``model/loss.py``, the benchmark's own (as :class:`BenchLeNet`)."""
    return F.nll_loss(output, target)


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The metric of the digits example's ``model/metric.py``, the benchmark's own (as :class:`BenchLeNet`)."""
    return (output.argmax(dim=1) == target).float().mean()


# -- workloads ------------------------------------------------------------------------------------


@dataclass
class Workload:
    title: str
    config: dict
    steps: int
    paths: tuple[str, ...]


SYNTHETIC_BASE = {
    "seed": 0,
    "device": "auto",
    "loss": "benchmarks.overhead:nll_loss",
    "metrics": [{"type": "benchmarks.overhead:accuracy", "name": "accuracy"}],
    "optimizer": {"type": "Adam", "args": {"lr": 0.002, "weight_decay": 0.0001, "fused": True}},
    "lr_scheduler": {"type": "StepLR", "args": {"step_size": 10, "gamma": 0.5}, "interval": "epoch"},
    "trainer": {"save_period": 5, "keep_last": 2, "verbosity": 1, "tensorboard": True, "log_step": 50},
}
"""The synthetic workloads' loss, optimizer, scheduler and trainer settings: the digits example's
(config.json as shipped), fixed here so that the workloads do not change with the project's config."""


def synthetic(name: str, arch: dict, shape: list[int], batch_size: int, num_samples: int) -> dict:
    """A workload of the benchmark's own model and data, trained as :data:`SYNTHETIC_BASE` says."""
    config = copy.deepcopy(SYNTHETIC_BASE)
    config.update(name=name, arch=arch)
    config["data_loader"] = {
        "type": "benchmarks.overhead:SyntheticDataLoader",
        "args": {"shape": shape, "num_samples": num_samples, "batch_size": batch_size},
    }
    return config


def workloads(names: list[str]) -> dict[str, Workload]:
    """The project's config.json itself, an MNIST-sized LeNet, and a tiny MLP where per-step overhead
    dominates; only ``config`` (alias ``digits``, its name when config.json was the digits example)
    reads a project file, so the others run in any project."""
    known = {}
    for name in names:
        if name in ("config", "digits"):
            config = read_config_file(ROOT / "config.json")
            batch = config.get("data_loader", {}).get("args", {}).get("batch_size", "?")
            known[name] = Workload(f"{config.get('arch', {}).get('type', '?')} of config.json, batch {batch}", config, 100, ("memory",))
        elif name == "lenet":
            config = synthetic("bench_lenet", {"type": "benchmarks.overhead:BenchLeNet", "args": {}}, [1, 28, 28], 128, 10_240)
            known[name] = Workload("LeNet on synthetic 1x28x28 (MNIST-sized), batch 128", config, 60, ("memory",))
        elif name == "mlp":
            config = synthetic("bench_mlp", {"type": "benchmarks.overhead:BenchMLP", "args": {"in_features": 64}}, [64], 64, 8192)
            known[name] = Workload("MLP on 64 features, batch 64 (per-step overhead dominates)", config, 1000, ("memory", "loader"))
    return known


# -- building both sides from one config --------------------------------------------------------


def make_config(
    data: dict, source: str, steps: int, save_dir: str, path: str | None, overrides: list[str], metrics: bool, extra: tuple = ()
) -> Config:
    """The config, then: one epoch of ``steps`` batches, no validation, runs under ``save_dir``."""
    data = copy.deepcopy(data)
    if path is not None:
        data["data_loader"].setdefault("args", {})["in_memory"] = path == "memory"
    ours = [
        "trainer.epochs=1",
        f"trainer.len_epoch={steps}",
        f"trainer.save_dir={save_dir}",
        "trainer.progress_bar=false",
        "trainer.limit_batches=0",
        "trainer.overfit_batches=0",
        "trainer.monitor=min loss",
    ]
    return Config.from_dict(data, source, [*overrides, *ours, *([] if metrics else ["metrics=[]"]), *extra])


@dataclass
class Parts:
    """What ``train.py`` builds before the Trainer, from the same seed for every run of every side."""

    model: torch.nn.Module
    criterion: Callable
    metrics: dict
    optimizer: torch.optim.Optimizer
    scheduler: Any


def build_parts(config: Config, device: torch.device) -> Parts:
    seed_everything(config["seed"])
    model = config.init_obj("arch").to(device)
    optimizer = build_optimizer(config, model)
    return Parts(model, build_loss(config), build_metrics(config), optimizer, build_lr_scheduler(config, optimizer))


def run_trainer(config: Config, loader: Any, device: torch.device, run_dir: Path) -> tuple[float, torch.nn.Module]:
    """Seconds for ``trainer.train()``, and the trained model."""
    parts = build_parts(config, device)
    settings = config.settings
    run = RunRecorder.start(RunDirClaim.create(run_dir).path, config.to_dict(), settings.tensorboard)
    trainer = Trainer(
        parts.model,
        parts.criterion,
        parts.optimizer,
        settings,
        device,
        loader,
        metrics=parts.metrics,
        lr_scheduler=parts.scheduler,
        scheduler_interval=scheduler_interval(config),
        recorder=run,
    )
    seed_everything(config["seed"])
    started = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - started
    shutil.rmtree(run_dir)  # checkpoints of big models would pile up
    return elapsed, parts.model


def materialize(dataset: Dataset, collate_fn: Callable) -> Any:
    """The whole dataset as tensors, the way a person keeps a dataset that fits in memory."""
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, TensorDataset):
        return [t[torch.as_tensor(dataset.indices)] for t in dataset.dataset.tensors]
    if isinstance(dataset, TensorDataset):
        return list(dataset.tensors)
    return collate_fn([dataset[i] for i in range(len(dataset))])


def bare_batches(loader: Any, path: str, seed: int, device: torch.device) -> Callable[[int], Iterator]:
    """Pass ``p``'s batches: a DataLoader or pre-made tensors, shuffled by ``randperm`` seeded with ``seed + p``."""
    if not isinstance(loader, BaseDataLoader):
        return lambda p: iter(loader)
    dataset, batch_size, drop_last = loader.base_dataset, loader.batch_size, loader.drop_last
    n = len(dataset)

    def order(p: int) -> torch.Tensor:
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed + p)) if loader.shuffle else torch.arange(n)

    if path == "loader":

        def from_loader(p: int) -> Iterator:
            return iter(
                DataLoader(
                    dataset,
                    batch_size,
                    sampler=order(p).tolist(),
                    num_workers=loader.num_workers,
                    collate_fn=loader.collate_fn,
                    pin_memory=device.type == "cuda",
                    drop_last=drop_last,
                    generator=torch.Generator(),
                )
            )

        return from_loader

    memory = materialize(dataset, loader.collate_fn)
    if isinstance(memory, dict):
        memory = {key: value.to(device) for key, value in memory.items()}
    else:
        memory = [t.to(device) for t in memory]

    def from_memory(p: int) -> Iterator:
        perm = order(p).to(device)
        for index in perm[: n - n % batch_size if drop_last else n].split(batch_size):
            if isinstance(memory, dict):
                yield {key: value.index_select(0, index) for key, value in memory.items()}
            else:
                yield [t.index_select(0, index) for t in memory]

    return from_memory


def run_bare(config: Config, loader: Any, path: str, device: torch.device, steps: int) -> tuple[float, torch.nn.Module]:
    """The hand-written loop: forward, loss, backward, step, zero_grad, and a loss sum for the epoch log."""
    parts = build_parts(config, device)
    model, criterion, optimizer, scheduler = parts.model, parts.criterion, parts.optimizer, parts.scheduler
    per_step = scheduler is not None and config["lr_scheduler"].get("interval", "epoch") == "step"
    batches = bare_batches(loader, path, config["seed"], device)
    seed_everything(config["seed"])
    started = time.perf_counter()
    model.train()
    loss_sum, samples, done, p = torch.zeros((), device=device), 0, 0, 0
    while done < steps:
        for batch in batches(p):
            if isinstance(batch, dict):
                inputs, target = unpack_batch(batch)
                output = model(**{k: v.to(device) for k, v in inputs.items()})
            else:
                *inputs, target = batch
                output = model(*(x.to(device) for x in inputs))
            target = target.to(device)
            loss = criterion(output, target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if per_step:
                scheduler.step()
            loss_sum += loss.detach() * len(target)
            samples += len(target)
            done += 1
            if done == steps:
                break
        p += 1
    if scheduler is not None and not per_step:
        scheduler.step()
    get_logger().info("bare loop: epoch loss %.6f", loss_sum.item() / samples)  # the epoch log line (reads the device once)
    return time.perf_counter() - started, model


# -- measuring ------------------------------------------------------------------------------------


@dataclass
class Side:
    """One way of training: the bare loop, the Trainer, or the Trainer without training metrics, on one data path."""

    label: str
    kind: str
    path: str
    config: Config
    loader: Any
    device: torch.device
    samples: int
    rates: list[float] = field(default_factory=list)
    step_us: list[float] = field(default_factory=list)
    model: torch.nn.Module | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def spread(self) -> float:
        """Half the min-max range of the repeats, in percent of the median."""
        return 50 * (max(self.rates) - min(self.rates)) / self.median


def samples_in(loader: Any, steps: int) -> int:
    """Samples in ``steps`` batches over consecutive passes (short last batches included)."""
    if not isinstance(loader, BaseDataLoader):
        return steps * (getattr(loader, "batch_size", None) or 1)
    n, bs = loader.samples_per_pass, loader.batch_size
    sizes = [bs] * (n // bs) + ([] if loader.drop_last or n % bs == 0 else [n % bs])
    return sum(sizes[i % len(sizes)] for i in range(steps))


def make_sides(data: dict, source: str, steps: int, paths: tuple, overrides: list[str], without_metrics: bool, tmp: Path, ema: float | None = None) -> list[Side]:  # fmt: skip
    sides = []
    for path in paths:
        config = make_config(data, source, steps, str(tmp), path, overrides, metrics=True)
        device = select_device(config["device"], False, 0)
        loader = config.init_obj("data_loader")
        actual = ("memory" if loader.in_memory else "loader") if isinstance(loader, BaseDataLoader) else "own"
        samples = samples_in(loader, steps)
        sides.append(Side(f"{actual:<7}bare loop", "bare", actual, config, loader, device, samples))
        sides.append(Side(f"{actual:<7}trainer", "trainer", actual, config, loader, device, samples))
        if without_metrics and config["metrics"]:
            config = make_config(data, source, steps, str(tmp), path, overrides, metrics=False)
            sides.append(Side(f"{actual:<7}trainer, metrics=[]", "trainer", actual, config, loader, device, samples))
        if ema is not None:
            config = make_config(data, source, steps, str(tmp), path, overrides, metrics=True, extra=(f"trainer.ema_decay={ema}",))
            sides.append(Side(f"{actual:<7}trainer, ema", "trainer", actual, config, loader, device, samples))
    return sides


def measure(sides: list[Side], steps: int, repeats: int, tmp: Path) -> None:
    """Run every side in turn, ``repeats + 1`` times; the first round is the warm-up.

    Odd rounds run the sides in reverse order (a b, b a, a b, ...), so that a machine slowing down
    or speeding up during the benchmark favours neither side of a pair.
    """
    for repeat in range(repeats + 1):
        order = list(enumerate(sides))
        for index, side in order[::-1] if repeat % 2 else order:
            if side.kind == "trainer":
                elapsed, side.model = run_trainer(side.config, side.loader, side.device, tmp / f"run_{index}_{repeat}")
            else:
                elapsed, side.model = run_bare(side.config, side.loader, side.path, side.device, steps)
            if repeat:
                side.rates.append(side.samples / elapsed)
                side.step_us.append(1e6 * elapsed / steps)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def paired(a: Side, b: Side) -> float:
    """Median over rounds of ``a``'s rate over ``b``'s in the same round (robust to the machine's slow drifts)."""
    return statistics.median(x / y for x, y in zip(a.rates, b.rates))


def paired_interval(a: Side, b: Side, resamples: int = 2000) -> tuple[float, float]:
    """A 95% bootstrap interval of :func:`paired`: how far the noise of this machine leaves it uncertain."""
    ratios = [x / y for x, y in zip(a.rates, b.rates)]
    draw = random.Random(0)
    medians = sorted(statistics.median(draw.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def report(title: str, steps: int, sides: list[Side]) -> None:
    """One table per workload: ``vs bare`` is the ratio of the medians, ``paired`` the median of each
    round's ratio with its 95% bootstrap interval, ``best`` the ratio of each side's fastest run."""
    print(f"\n{title}: {steps} steps per run")
    print(f"  {'side':<28}{'samples/s':>11}{'us/step':>9}{'+/-':>7}{'vs bare':>9}{'paired':>8}{'95% interval':>14}{'best':>8}  weights")
    bare = {side.path: side for side in sides if side.kind == "bare"}
    for side in sides:
        ratio = pair = interval = best = weights = ""
        if side.kind == "trainer":
            ratio = f"{side.median / bare[side.path].median:.3f}x"
            pair = f"{paired(side, bare[side.path]):.3f}x"
            interval = "{:.3f}-{:.3f}".format(*paired_interval(side, bare[side.path]))
            best = f"{max(side.rates) / max(bare[side.path].rates):.3f}x"
            if side.path != "own":  # a loader of your own may not replay the same order on both sides
                weights = "identical" if same_weights(side.model, bare[side.path].model) else "DIFFERENT"
        us = statistics.median(side.step_us)
        print(f"  {side.label:<28}{side.median:>11,.0f}{us:>9,.0f}{side.spread:>6.1f}%{ratio:>9}{pair:>8}{interval:>14}{best:>8}  {weights}")
    trainers = {side.path: side for side in sides if side.kind == "trainer" and "," not in side.label}
    for side in sides:
        if side.label.endswith("ema"):
            low, high = paired_interval(side, trainers[side.path])
            print(f"  {side.path} trainer with EMA vs without: paired {paired(side, trainers[side.path]):.3f}x (95% interval {low:.3f}-{high:.3f})")
    if "memory" in bare and "loader" in bare:
        memory, loader = trainers["memory"], trainers["loader"]
        print(
            f"  in-memory vs DataLoader: trainer {memory.median / loader.median:.2f}x (paired {paired(memory, loader):.2f}x), "
            f"bare loop {bare['memory'].median / bare['loader'].median:.2f}x (paired {paired(bare['memory'], bare['loader']):.2f}x)"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="config,lenet,mlp", help="comma-separated, from: config (config.json; alias digits), lenet, mlp (default: all)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (one run of each side) after a warm-up round (default: 15)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default: per workload; 200 with --config)")
    parser.add_argument("--paths", help="data paths: memory, loader or memory,loader (default: per workload; the config's own)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for both sides (default: torch's choice)")
    parser.add_argument("--config", help="benchmark this config (.json/.yaml) instead of the built-in workloads")
    parser.add_argument("--without-metrics", action="store_true", help="with --config: also time the Trainer with metrics=[]")
    parser.add_argument("--ema", type=float, metavar="DECAY", help="also time the Trainer with trainer.ema_decay=DECAY")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="overrides for --config, as in train.py")
    args = parser.parse_args(argv)
    if args.repeats < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--repeats and --steps must be at least 1")
    args.paths = tuple(args.paths.split(",")) if args.paths else None
    if args.paths and any(p not in ("memory", "loader") for p in args.paths):
        parser.error("--paths: use memory, loader or memory,loader")
    if args.overrides and not args.config:
        parser.error("key.path=value overrides need --config")
    unknown = set(args.workloads.split(",")) - set(WORKLOAD_NAMES)
    if unknown and not args.config:
        parser.error(f"--workloads: unknown {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOAD_NAMES)}")
    return args


WORKLOAD_NAMES = ("config", "digits", "lenet", "mlp")


def run(args: argparse.Namespace) -> None:
    if args.config:
        data = read_config_file(args.config)
        jobs = [(args.config, args.config, data, args.steps or 200, args.paths or (None,), args.without_metrics)]
    else:
        known = workloads(args.workloads.split(","))
        jobs = [
            (
                known[name].title,
                f"workload {name}",
                known[name].config,
                args.steps or known[name].steps,
                args.paths or known[name].paths,
                True,
            )
            for name in args.workloads.split(",")
        ]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    setup_logging(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"median of {args.repeats} rounds after a warm-up round (+/-: half the range)"
    )
    with tempfile.TemporaryDirectory(prefix="overhead-") as folder:
        tmp = Path(folder)
        for title, source, data, steps, paths, without_metrics in jobs:
            sides = make_sides(data, source, steps, paths, args.overrides, without_metrics, tmp, args.ema)
            measure(sides, steps, args.repeats, tmp)
            report(title, steps, sides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
