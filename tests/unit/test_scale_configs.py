"""The multi-process trainer configs and the SLURM launcher compose and build their objects
(`trainer=ddp_sim` trained end to end: tests/distributed/test_scale_configs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, OmegaConf

from f2llm.parallel import FSDP2Strategy
from tests.conftest import CONFIGS, ROOT, compose_train

EXPERIMENT = "gettext_tiny"


def _compose(trainer: str, tmp_path: Path) -> DictConfig:
    cfg = compose_train([f"trainer={trainer}", f"paths.output_dir={tmp_path}"],
                        experiment=EXPERIMENT)
    OmegaConf.resolve(cfg.trainer)  # every interpolation in the trainer config resolves
    return cfg


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_gpu_trainer_configs_build_their_strategy(name: str, tmp_path: Path) -> None:
    cfg = _compose(name, tmp_path)
    assert cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.use_distributed_sampler is False  # the sampler shards the batches
    strategy = instantiate(cfg.trainer.strategy)  # a Trainer would need the GPUs
    assert isinstance(strategy, FSDP2Strategy if name == "fsdp" else DDPStrategy)


def test_ddp_sim_builds_a_two_process_cpu_trainer(tmp_path: Path) -> None:
    cfg = _compose("ddp_sim", tmp_path)
    trainer = instantiate(cfg.trainer, logger=False)  # builds; processes start only in fit
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_devices == 2 and trainer.world_size == 2
    assert trainer.strategy.process_group_backend == "gloo"
    assert trainer.strategy._start_method == "spawn"


def test_slurm_launcher_composes() -> None:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True,
                      overrides=[f"experiment={EXPERIMENT}", "hydra/launcher=slurm",
                                 f"paths.root_dir={ROOT}", "trainer=ddp",
                                 "trainer.devices=8", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == cfg.trainer.devices
    assert launcher.nodes == cfg.trainer.num_nodes
    assert launcher.partition == "gpu"
    # The plugin takes every key: building the launcher checks the names, not the cluster.
    instantiate(launcher)


