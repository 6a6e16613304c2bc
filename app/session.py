"""A run's life, from a request to a finished, stopped or failed run directory.

``train.py`` builds a :class:`TrainRequest` from its command line; the drivers of runs of runs
(sweeps, cross-validation) build one per trial or fold, so each of those is an ordinary run
with every guarantee of a single one. A :class:`Session` then goes through the stages:

1. **check**: the config (trust rule included: what would be refused on resume is refused now),
   the data, the model, a resume checkpoint's fit, and one pre-flight batch. Errors here leave
   nothing behind;
2. **claim**: the run directory is created exclusively (a new run) or locked (a resume);
3. **train**: epochs, checkpoints; a signal stops at a step with a checkpoint.

What a session claimed is what a failure takes back (:meth:`Session.abandon`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from app.config import Config, build_loss, build_lr_scheduler, build_metrics, build_optimizer, scheduler_interval
from app.config.building import require_rebuildable, starts_new_run
from app.export import export_at_end
from app.history import ResumedHistory, ResumeGuard
from app.loading import LOADED_MODELS
from app.run_dir import LOCK_FILE, RunDirClaim, refuse_links
from base.freezing import freeze, matching_modules
from logger import get_logger, setup_logging
from logger.manifest import extend_manifest, fingerprint, record_end, write_manifest
from logger.run_log import RunRecorder
from logger.trackers import EXTRAS, TrackedRun, Trackers, TrackerSettings, missing_extras
from trainer import Trainer
from trainer.optimizers import declares_several
from trainer.parallel import prepare_model
from trainer.preflight import run_preflight
from utils import distributed
from utils.checkpoints import Checkpoint, load_checkpoint, load_weights, run_dir_of
from utils.device import limit_visible_gpus, select_device
from utils.errors import UserError, first_line
from utils.fetching import restoring
from utils.files import file_error, write_atomic
from utils.seed import seed_everything
from utils.signals import StartupStopped, StopRequest


@dataclass
class TrainRequest:
    """What to run: ``train.py``'s flags, or a driver's in-memory equivalent.

    ``config`` is a file (``-c``); a driver passes ``config_data`` (a config it made, e.g. a trial's)
    with ``config_source`` naming it in messages. ``run_dir`` claims exactly that new directory
    (a driver's ``trial-0003``) instead of ``<save_dir>/<name>/<run_id>``.
    """

    config: str | None = None
    resume: str | None = None
    overrides: list[str] = field(default_factory=list)
    run_id: str | None = None
    devices: str | None = None
    trust_checkpoint: bool = False
    config_data: dict | None = None
    config_source: str = "config"
    config_trusted: bool = True
    """False for ``config_data`` read back from a file a run wrote (a CV's ``cv.json``): data, as a checkpoint's config is."""
    run_dir: Path | None = None
    command: str = ""
    resume_hint: str | None = None
    """What to print as the way to continue, instead of ``train.py -r ...`` (a driver's own command)."""
    tracker_parent: dict | None = None
    """The parent tracker run of a driver's runs (``logger.trackers.open_parent``): this run's trackers link to it."""
    epoch_end: list = field(default_factory=list)
    """Callables given each finished epoch's row on every rank (a sweep's pruner): ``BaseTrainer.epoch_end``."""

    @property
    def mode(self) -> str:
        """``new``, ``resume`` or ``finetune``."""
        has_config = self.config is not None or self.config_data is not None
        if self.resume is None:
            return "new"
        return "finetune" if has_config else "resume"


@dataclass
class Session:
    """One run: what it has claimed, so a failure can take back exactly that."""

    request: TrainRequest
    stop: StopRequest
    claim: RunDirClaim | None = None
    trainer: Trainer | None = None
    config: Config | None = None
    run_dir: Path | None = None
    training: bool = False
    history: ResumedHistory | None = None
    guard: ResumeGuard | None = None  # a resumed run directory as it was, put back if the resume fails before training

    def run(self) -> int:
        """Prepare and train; the exit code (0, or 128 + signal when stopped)."""
        if self.prepare() is None:
            return stopped_during_start_up(self.stop)
        self.training = True
        self.trainer.train()
        return self.outcome()

    def run_or_abandon(self) -> int:
        """:meth:`run` for a driver of many runs (the folds of a CV, a sweep's trials): a run that
        a signal or an error ends is abandoned here (:meth:`abandon`) and the exception goes on."""
        try:
            return self.run()
        except (KeyboardInterrupt, StartupStopped):
            self.abandon(stopped=True, reason="stopped while starting")
            raise
        except BaseException as exc:
            self.abandon(stopped=False, reason=first_line(exc))
            raise

    def prepare(self) -> Path | None:
        """Check and build everything, then claim the run directory; None if a signal came first."""
        request = self.request
        limit_visible_gpus(request.devices)
        config, checkpoint = load_config(request)
        check_trackers_installed(config)
        self.config = config
        logger = setup_logging(config.settings.verbosity, int(os.environ.get("RANK", 0)))
        for note in config.notes:
            logger.warning(note)
        device = select_device(config["device"], distributed.launched_by_torchrun(), distributed.local_rank())
        distributed.init_distributed(device)
        seed_everything(config["seed"] + distributed.rank())
        if config.settings.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        notes: list[str] = []
        LOADED_MODELS.clear()  # what this run's own code loads, not an earlier run's in the same process
        self.trainer = trainer = build_trainer(config, device, self.stop, checkpoint, request.mode, request.resume, notes=notes)
        trainer.epoch_end.extend(request.epoch_end)
        if config.settings.preflight:
            distributed.agree(lambda: preflight(trainer, config.source))  # each rank checks its own batch; any refusal stops all
        if request.mode == "resume":
            distributed.agree(lambda: trainer.resume(checkpoint))  # a rank that cannot restore its part stops every rank
            check_work_left(trainer, request.resume)
            if distributed.is_main_process():
                self.history = ResumedHistory.read(run_dir_of(request.resume), request.resume)
        self.stop.while_running()  # from the claim on, a signal stops at a step with a checkpoint
        if distributed.any_process(self.stop.requested):
            return None
        run_dir = self.run_dir = self.claim_run_dir(config)
        try:
            trackers = open_trackers(config, run_dir, request, checkpoint, trainer, self.history)
            recorder = open_recorder(run_dir, config, trainer, request.mode, self.history, trackers)
        except OSError as exc:  # a write the checks could not foresee (a full disk): the guard puts things back
            raise file_error(
                "run directory", run_dir, exc, "make it writable to resume there, or start a new run with -r CKPT -c CONFIG"
            ) from None
        recorder.claim = self.claim  # released when the recorder closes, at the end of training
        trainer.attach_recorder(recorder)
        trainer.epoch_end.insert(0, recorder.epoch_saved)  # trackers get each epoch once its checkpoint is written
        record_manifest(run_dir, config, trainer, device, request.mode, request.resume, request.command, self.history)
        split = getattr(trainer.data, "split", None)  # which samples validate (BaseDataLoader): checkable, and comparable between folds
        if split is not None and request.mode != "resume" and distributed.is_main_process():
            write_atomic(run_dir / "split.json", json.dumps(split) + "\n", "run directory", "make it writable")
        log_header(config, run_dir, device, trainer, request.mode, self.resume_command())
        for note in notes:
            logger.info(note)
        return run_dir

    def claim_run_dir(self, config: Config) -> Path:
        """Create (new run) or lock (resume) the run directory on rank 0; every rank learns which, or that it failed."""
        request = self.request
        outcome: tuple[str, str] = ("", "")
        if distributed.is_main_process():
            try:
                if request.mode == "resume":
                    folder = run_dir_of(request.resume)
                    lock = folder / LOCK_FILE
                    before = lock.read_bytes() if lock.is_file() else None
                    self.claim = RunDirClaim.open(folder)
                    self.guard = ResumeGuard(folder, before)
                elif request.run_dir is not None:
                    self.claim = RunDirClaim.create(request.run_dir)
                else:
                    self.claim = claim_new_run_dir(config, request.run_id)
                outcome = ("ok", str(self.claim.path))
            except UserError as exc:
                outcome = ("error", str(exc))
        kind, text = distributed.broadcast_object(outcome)
        if kind == "error":
            raise UserError(text) if distributed.is_main_process() else UserError(f"rank 0 could not claim the run directory: {text}")
        return Path(text)

    def resume_command(self) -> str:
        if self.request.resume_hint is not None:
            return self.request.resume_hint
        last = self.run_dir / "checkpoints" / f"last{self.trainer.checkpoint_suffix}"
        return resume_command(last, self.request.trust_checkpoint)

    def outcome(self) -> int:
        trainer, logger = self.trainer, get_logger()
        folder = self.run_dir / "checkpoints"
        if trainer.stopped_by:
            if not trainer.saved_once:
                self.abandon(stopped=True)
                logger.warning(
                    "stopped by %s before the first step; nothing was trained and the run directory is removed", trainer.stopped_by
                )
            else:
                self.record_end("stopped", f"stopped by {trainer.stopped_by}")
                logger.warning("stopped by %s; resume with: %s", trainer.stopped_by, self.resume_command())
            return 128 + getattr(signal, trainer.stopped_by).value
        self.record_end("finished", trainer.ended_by or ("early stop" if trainer.monitor.should_stop else "every epoch trained"))
        if trainer.monitor.best_epoch is not None:
            suffix = trainer.checkpoint_suffix
            logger.info(
                "done: best %s %.6g at epoch %d; checkpoints in %s (best%s, last%s)",
                trainer.monitor.metric,
                trainer.monitor.best,
                trainer.monitor.best_epoch,
                folder,
                suffix,
                suffix,
            )
        else:
            logger.info("done: checkpoints in %s", folder)
        code = export_at_end(self.config, self.run_dir) if trainer.settings.export and distributed.is_main_process() else 0
        if self.claim is not None:
            self.claim.release()
        return code

    def record_end(self, state: str, reason: str) -> None:
        """How this session ended, in ``manifest.json`` (rank 0; ``runs.py`` reads it)."""
        if distributed.is_main_process() and self.run_dir is not None and self.trainer is not None:
            record_end(self.run_dir, state, self.trainer.progress.completed_epochs, reason)
            self.trainer.recorder.end(state)  # after the manifest records the end: the trackers keep it as it is

    def abandon(self, stopped: bool, reason: str = "") -> None:
        """After a failure or stop: a new run directory with no checkpoint in it goes (unless a
        failure came after training started: then its train.log tells what happened, and its
        manifest that it failed, with ``reason``)."""
        if self.claim is None:
            return
        if self.guard is not None and not self.training:
            if self.trainer is not None:
                self.trainer.recorder.close()
            self.guard.roll_back()
            self.claim.release()
            return
        written = self.trainer is not None and self.trainer.saved_once
        if not written and (stopped or not self.training):
            if self.trainer is not None:
                self.trainer.recorder.close()
                self.trainer.recorder.end("discarded")  # before the folder goes: a tracker may still write in it
            self.claim.discard()
        elif self.training:
            self.record_end("stopped" if stopped else "failed", reason or ("stopped" if stopped else "an error"))
        self.claim.release()


def preflight(trainer: Trainer, source: str) -> None:
    """The pre-flight batch (``trainer/preflight.py``), before the resume: it must see no restored
    position, and it changes nothing."""
    try:
        run_preflight(trainer)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None


def stopped_during_start_up(stop: StopRequest) -> int:
    name = stop.name or "SIGTERM"
    print(f"stopped by {name} during start-up; nothing was created", file=sys.stderr)
    return 128 + getattr(signal, name).value


def load_config(request: TrainRequest) -> tuple[Config, Checkpoint | None]:
    """The run's config (and the checkpoint of a resume or fine-tune), checked."""
    check_run_id(request.run_id)
    mode = request.mode
    if request.resume is None and request.config is None and request.config_data is None:
        raise UserError("give a config with -c CONFIG (a new run) or a checkpoint with -r CHECKPOINT (resume)")
    if mode == "resume" and request.run_id is not None:
        raise UserError(
            f"--run-id: a resume continues the run in {run_dir_of(request.resume)}; to start a new run from its weights, add -c CONFIG"
        )
    if mode == "resume" and run_dir_of(request.resume) != Path(os.path.abspath(request.resume)).parent:
        refuse_links(run_dir_of(request.resume))  # before anything is read or written through a link in the run directory
    checkpoint = load_checkpoint(request.resume) if request.resume else None
    if mode != "resume":
        config = config_of(request)
        if not request.trust_checkpoint:
            config.check_checkpoints_resumable()
            require_rebuildable(config)  # and what its nodes fetch when built: app/config/building.py
        return config, checkpoint
    checkpoint.require_resumable()
    if run_dir_of(request.resume) == Path(os.path.abspath(request.resume)).parent:
        raise UserError(
            f"-r {request.resume}: to resume, pass the file inside its run's checkpoints/ folder; to start a new run from it, add -c CONFIG"
        )
    source = f"{request.resume} (its config)"
    return Config.from_dict(checkpoint.config, source, request.overrides, trusted=request.trust_checkpoint), checkpoint


def config_of(request: TrainRequest) -> Config:
    """The config a new run's request names: a file (``-c``) or a driver's ``config_data``, with its
    overrides and its trust (a ``cv.json`` read back is data). The one place a request becomes a config."""
    if request.config_data is None:
        return Config.from_file(request.config, request.overrides)
    config = Config.from_dict(request.config_data, request.config_source, request.overrides, trusted=request.config_trusted)
    if not request.config_trusted:
        starts_new_run(config)  # a CV's next fold from cv.json: it needs its pretrained weights (app/config/building.py)
    return config


def check_trackers_installed(config: Config) -> None:
    """A tracker named in ``logger.trackers`` must be installed: said at start, before anything is written."""
    missing = missing_extras(config["logger"]["trackers"])
    if missing:
        extra = EXTRAS[missing[0]]
        raise config.error(
            "logger.trackers", f"{missing[0]!r} is not installed; install it with pip install -e '.[{extra}]', or leave it out of logger.trackers"
        )


def check_work_left(trainer: Trainer, checkpoint: str) -> None:
    """A resume with nothing to train is a mistake to say, not a run to open (and append nothing to)."""
    progress, epochs = trainer.progress, trainer.settings.epochs
    if progress.start_epoch > epochs:
        raise UserError(
            f"trainer.epochs: {checkpoint} has finished epoch {progress.completed_epochs} and trainer.epochs is {epochs}: nothing to train; "
            f"resume with trainer.epochs={progress.completed_epochs + 1} or more"
        )


def check_run_id(run_id: str | None) -> None:
    if run_id is None:
        return
    plain = run_id.strip() == run_id and run_id and not run_id.startswith(".") and run_id.isprintable()
    if not plain or "/" in run_id or "\\" in run_id:
        raise UserError(f"--run-id: {run_id!r} is not a folder name; use letters, digits, '-' or '_'")
    if len(run_id.encode()) > 255:
        raise UserError(f"--run-id: too long for a folder name ({len(run_id.encode())} bytes, at most 255); choose a shorter one")


def claim_new_run_dir(config: Config, run_id: str | None) -> RunDirClaim:
    """``<save_dir>/<name>/<run_id>``, created; without ``--run-id`` a time stamp, with ``_2``, ``_3`` ... when
    another run started in the same second."""
    parent = Path(config.settings.save_dir).expanduser() / config["name"]
    if run_id is not None:
        return RunDirClaim.create(parent / run_id)
    stamp = time.strftime("%m%d_%H%M%S")
    for attempt in range(1, 100):
        try:
            return RunDirClaim.create(parent / (stamp if attempt == 1 else f"{stamp}_{attempt}"))
        except UserError as exc:
            if "--run-id" not in str(exc):
                raise
    raise UserError(f"trainer.save_dir: could not find a free run directory name in {parent}; pass --run-id")


def build_model(config: Config) -> nn.Module:
    """``arch``, checked to be a module (a class or function that builds something else is one line)."""
    model = config.init_obj("arch")
    if not isinstance(model, nn.Module):
        raise config.error(
            "arch.type",
            f"{config['arch']['type']!r} built a {type(model).__name__}, not a torch.nn.Module; name a model class or a function returning one",
        )
    return model


def build_trainer(
    config: Config,
    device: torch.device,
    stop: StopRequest | None = None,
    checkpoint: Checkpoint | None = None,
    mode: str = "new",
    source: str | None = None,
    model: nn.Module | None = None,
    settings: object | None = None,
    notes: list[str] | None = None,
) -> Trainer:
    """Everything a run needs, built from the config (``trainer.type``'s class); nothing is written.

    ``model`` (already holding its weights) and ``settings`` replace the config's (``test.py``);
    ``notes`` collects what is worth a line in the run's log once it exists (what a fine-tune loaded)."""
    settings = settings or config.settings
    data_loader = config.init_obj("data_loader")
    if not (callable(getattr(data_loader, "epoch_batches", None)) or hasattr(data_loader, "__iter__")):
        raise config.error(
            "data_loader.type",
            f"{config['data_loader']['type']!r} built a {type(data_loader).__name__}, which gives no batches; name a data loader",
        )
    if callable(getattr(data_loader, "set_seed", None)):
        data_loader.set_seed(config["seed"])
    valid_data_loader = data_loader.split_validation() if hasattr(data_loader, "split_validation") else None
    monitored = settings.monitor_metric
    if monitored and monitored.startswith("val_") and valid_data_loader is None and not settings.overfit_batches:
        raise config.error(
            "trainer.monitor",
            f"monitors {monitored!r} but the data loader has no validation split; "
            f"set data_loader.args.validation_split or monitor a training metric",
        )
    if model is None:
        with restoring() if mode == "resume" else contextlib.nullcontext():  # the checkpoint holds every weight
            model = build_model(config)
    if mode == "finetune":
        matching_modules(model, settings.load_exclude, "trainer.load_exclude")
        loaded = load_weights(model, checkpoint.weights(ema=settings.ema_evaluate), settings.load_strict, source, settings.load_exclude)
        (notes if notes is not None else []).extend(f"fine-tuning from {source}: {line}" for line in loaded.lines())
    freeze(model, settings.freeze)
    trainer_class = config.trainer_class()
    # Several optimizers or a manual step: no DDP wrapper (trainer/optimizers.py, trainer/manual.py).
    wrap = not declares_several(config["optimizer"]) and trainer_class.automatic_optimization
    prepared = prepare_model(model, settings, device, wrap=wrap)  # before the optimizer: FSDP replaces the parameters
    optimizer = build_optimizer(config, prepared.module)
    return trainer_class(
        prepared,
        build_loss(config),
        optimizer,
        settings,
        device,
        data_loader,
        valid_data_loader,
        metrics=build_metrics(config),
        lr_scheduler=build_lr_scheduler(config, optimizer),
        scheduler_interval=scheduler_interval(config),
        stop=stop,
        checkpoint_meta={"arch": config["arch"]["type"], "config": config.to_dict(), **serving_meta(data_loader)},
        **config["trainer"]["args"],
    )


def serving_meta(data_loader) -> dict:
    """The data loader's serving state (``base/serving.py``), for every checkpoint's header, when it has one."""
    state = data_loader.serving_state() if callable(getattr(data_loader, "serving_state", None)) else None
    return {"serving": state} if state else {}


def evaluation_settings(config: Config) -> object:
    """The config's settings for evaluating given weights: one replicated model (no FSDP, no compile),
    the weights as loaded (no EMA of its own)."""
    return replace(config.settings, strategy="ddp", compile=False, ema_decay=None, freeze=[], preflight=False)


def open_recorder(
    run_dir: Path, config: Config, trainer: Trainer, mode: str, history: ResumedHistory | None = None, trackers: Trackers | None = None
) -> RunRecorder:
    if not distributed.is_main_process():
        return RunRecorder.off()
    tensorboard = config.settings.tensorboard and "tensorboard" in config["logger"]["trackers"]  # written when both allow it
    if mode == "resume":
        progress = trainer.progress
        return RunRecorder.resume(run_dir, config.to_dict(), history.config, progress.completed_epochs, progress.global_step, tensorboard, trackers)
    return RunRecorder.start(run_dir, config.to_dict(), tensorboard, trackers)


def open_trackers(
    config: Config, run_dir: Path, request: TrainRequest, checkpoint: Checkpoint | None, trainer: Trainer, history: ResumedHistory | None
) -> Trackers:
    """The run's experiment trackers (rank 0; they start with training): a resume continues the tracker
    runs it names (``trackers.json``, else its checkpoint) and sends them what they lack of
    ``metrics.jsonl``; a fine-tune names the runs of the checkpoint it starts from; a driver's run links to its parent."""
    settings = TrackerSettings.from_config(config.to_dict())
    if not settings.names or not distributed.is_main_process():
        return Trackers.off()
    kept = checkpoint.data.get("trackers") if checkpoint is not None and checkpoint.is_run else None
    kept = kept if isinstance(kept, dict) else None
    source = {"checkpoint": str(request.resume), "trackers": kept} if request.mode == "finetune" else None
    done = trainer.progress.completed_epochs
    rows = [row for row in history.rows if row["epoch"] <= done] if history is not None and request.mode == "resume" else []
    tracked = TrackedRun(run_dir, config.to_dict(), request.mode, request.tracker_parent, source, completed_epochs=done)
    return Trackers(settings, tracked, kept if request.mode == "resume" else None, rows)


def record_manifest(
    run_dir: Path,
    config: Config,
    trainer: Trainer,
    device: torch.device,
    mode: str,
    checkpoint: str | None,
    command: str,
    history: ResumedHistory | None = None,
) -> None:
    """``manifest.json``: written for a new run, extended by a resume (``logger/manifest.py``); collective under DDP."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    devices = distributed.gather_objects(name)
    if not distributed.is_main_process():
        return
    if mode == "resume":
        extend_manifest(run_dir, history.manifest, command, str(checkpoint), config.digest(), distributed.world_size(), devices, config.files)
    else:
        data = {"train": fingerprint(trainer.data), "valid": fingerprint(trainer.valid_data)}
        if LOADED_MODELS:  # trained models the run's code loaded (app/loading.py: load_model), a teacher say
            data["loaded_models"] = list(LOADED_MODELS)
        write_manifest(run_dir, command, config.digest(), distributed.world_size(), devices, config["seed"], data, config.files)


def launcher() -> str:
    """How this process was started: ``python``, or ``torchrun ...`` with the same process count."""
    if not distributed.launched_by_torchrun():
        return "python"
    per_node = os.environ.get("LOCAL_WORLD_SIZE", distributed.world_size())
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", 1))
    where = f"--nnodes={nodes} --node_rank=N --rdzv_endpoint=HOST:PORT" if nodes > 1 else "--standalone"
    return f"torchrun {where} --nproc_per_node={per_node}"


def resume_command(checkpoint: Path, trusted: bool = False) -> str:
    """The command that continues this run, with the same launcher and process count."""
    return f"{launcher()} train.py -r {shlex.quote(str(checkpoint))}" + (" --trust-checkpoint" if trusted else "")


def log_header(config: Config, run_dir: Path, device: torch.device, trainer: Trainer, mode: str, resume: str) -> None:
    """One screen saying what this run is, where it writes, and how to resume it."""
    module = trainer.model.module
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    world = distributed.world_size()
    batch = getattr(trainer.data, "batch_size", None)
    progress = trainer.progress
    trainer_name = config["trainer"]["type"]
    lines = [
        f"experiment   {config['name']} ({config.source}, {mode})",
        f"run dir      {run_dir}",
        f"device       {device}, world size {world}, strategy {trainer.model.strategy}"
        + (f", batch {batch} per process = global batch {batch * world}" if batch else ""),
        f"model        {config['arch']['type']}: {trainable:,} trainable of {total:,} parameters"
        + (f" ({', '.join(config.settings.freeze)} frozen)" if config.settings.freeze else ""),
        f"data         {_size(trainer.data)} training samples, {_size(trainer.valid_data)} validation samples, "
        f"{trainer.batches_per_epoch} batches per epoch",
        f"epochs       {progress.start_epoch}..{config.settings.epochs}, monitor {config.settings.monitor}"
        + ("" if trainer_name == "Trainer" else f", trainer {trainer_name}"),
        f"resume with  {resume}" + ("" if mode == "resume" else "  (once it is written)"),
    ]
    if progress.batch_in_epoch:
        lines.append(f"resuming     epoch {progress.epoch} at batch {progress.batch_in_epoch:,} of {trainer.batches_per_epoch:,}")
    get_logger().info("\n  " + "\n  ".join(lines))
    get_logger().debug("%s", module)


def _size(loader) -> str:
    if loader is None:
        return "no"
    if isinstance(getattr(loader, "num_samples", None), int):  # streams know their size from their shard index
        return f"{loader.num_samples:,}"
    dataset = (
        getattr(loader, "base_dataset", None)
        or getattr(loader, "dataset", None)
        or getattr(getattr(loader, "loader", None), "dataset", None)
    )
    try:
        return f"{len(dataset):,}"
    except TypeError:
        return "?"
