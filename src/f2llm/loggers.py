"""The experiment loggers of `configs/logger/` (TensorBoard, CSV, W&B, MLflow): how they are
built, what they get beyond Lightning's metrics (the config, the Matryoshka figure), and how a
W&B run ends."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from f2llm.errors import UserError
from f2llm.evaluation.figure import figure_to_array


class MissingPackage(UserError):
    """A configured logger whose package is not installed."""


def build_loggers(loggers: Mapping[str, DictConfig] | None) -> list[Logger]:
    """Instantiate every entry of `cfg.logger` (a null entry is off)."""
    built = []
    for name, conf in (loggers or {}).items():
        if not conf:
            continue
        try:
            built.append(instantiate(conf))
        except InstantiationException as err:
            if not isinstance(err.__cause__, ModuleNotFoundError):
                raise
            raise MissingPackage(
                f"logger.{name} needs a package that is not installed ({err.__cause__}); "
                "pip install -e '.[loggers]' installs those of every logger config") from err
    return built


def log_config(loggers: Sequence[Logger], cfg: DictConfig) -> None:
    """The composed config, resolved, as each logger's hyperparameters (TensorBoard and CSV:
    `hparams.yaml`; W&B: the run's config; MLflow: params such as `optimizer/lr`)."""
    if not loggers:
        return
    params = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            _start_wandb(logger)
        logger.log_hyperparams(params)


def _start_wandb(logger: WandbLogger) -> None:
    """Start the W&B run now: without a login it stops with one message saying what to do."""
    from wandb.errors import UsageError

    try:
        logger.experiment  # noqa: B018 (the property starts the run)
    except UsageError as err:
        raise UserError(f"logger=wandb: {err} Or log without an account or a network: "
                        "WANDB_MODE=offline (the run is kept in <run>/wandb/)") from err


def log_figure(loggers: Sequence[Logger], key: str, fig: Figure, step: int) -> None:
    """`fig` in each logger that shows images: TensorBoard's images tab, W&B media, an MLflow
    image series. CSV has no place for an image (the PNG is in the run folder)."""
    shows = (TensorBoardLogger, WandbLogger, LightningMLFlowLogger)
    if not any(isinstance(logger, shows) for logger in loggers):
        return
    image = figure_to_array(fig)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, step, dataformats="HWC")
        elif isinstance(logger, WandbLogger):
            logger.log_image(key, [image], step=step)
        elif isinstance(logger, LightningMLFlowLogger):
            logger.experiment.log_image(logger.run_id, image, key=key, step=step)


@contextmanager
def runs_ended(loggers: Sequence[Logger]) -> Iterator[None]:
    """End the W&B run when training ends (exit code 1 on an error). W&B keeps a run open until
    the process exits, so the next job of a multirun would log into this one."""
    try:
        yield
    except BaseException:
        _end_wandb(loggers, exit_code=1)
        raise
    _end_wandb(loggers, exit_code=0)


def _end_wandb(loggers: Sequence[Logger], exit_code: int) -> None:
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish(exit_code=exit_code)  # a no-op object on ranks > 0


_DIM = re.compile(r"@(\d+)$")
_NOT_IN_MLFLOW_NAMES = re.compile(r"[^a-zA-Z0-9_/. -]")  # what Lightning's MLFlowLogger keeps


def mlflow_metric_name(name: str) -> str:
    """`<metric>@<dim>` -> `<metric>_dim<dim>`; any other character MLflow refuses -> `_`."""
    return _NOT_IN_MLFLOW_NAMES.sub("_", _DIM.sub(r"_dim\1", name))


class MLFlowLogger(LightningMLFlowLogger):
    """Lightning's MLFlowLogger with readable metric names: MLflow refuses `@`, which Lightning
    drops, so `val/retrieval/recall_at_5@32` would read `recall_at_532`; here it is
    `recall_at_5_dim32` (`mlflow_metric_name`)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({mlflow_metric_name(k): v for k, v in metrics.items()}, step)
