"""LightningModule: composes the encoder, the objective and the optimiser; no maths here."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from f2llm.checkpoints import load_weights
from f2llm.data.batch import TrainBatch
from f2llm.data.datamodule import F2LLMDataModule
from f2llm.errors import UserError
from f2llm.model import Encoder
from f2llm.model.frozen import FrozenEncoder, check_same_tokenizer
from f2llm.objective import F2LLMObjective, gradcache_step
from f2llm.objective.distillation import check_teacher_width

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """Too many non-finite losses in a row: the run stops instead of training on garbage."""


def _embedding_lr_scale(groups: list[dict[str, Any]], scale: float | None = None
                        ) -> float | None:
    """The embedding table's lr over the rest's in optimiser param groups (named by
    `F2LLMModule.param_groups`; 1 without an "embedding" group), or `scale` where the groups
    carry no lrs yet; None for groups this module did not make."""
    names = [g.get("name") for g in groups]
    if "embedding" not in names:
        return 1.0 if set(names) <= {None, "model"} and len(groups) <= 1 else None
    if scale is not None:
        return scale
    lr = {g["name"]: g.get("initial_lr", g.get("lr")) for g in groups}
    if "model" not in lr or not lr["model"]:
        return None
    return lr["embedding"] / lr["model"]


class F2LLMModule(L.LightningModule):
    """Encoder + objective + optimiser (+ an optional frozen teacher for KD, and an optional
    frozen guide model for GISTEmbed's false-negative rule).

    `gradcache=True` trains each batch with `gradcache_step` under manual optimisation, so the
    batch size is not bound by activation memory. Lightning then refuses
    `Trainer(gradient_clip_val=...)` and `accumulate_grad_batches`, so the clipping norm comes
    from `gradient_clip_val` here (None: no clipping); a larger batch replaces accumulation.
    GradCache stays a step of its own rather than a hook inside the loss (as
    sentence-transformers' cached losses do it): under DDP such a hook all-reduces only the
    first chunk's gradients (`scripts/gradcache_hook_ddp.py` measures it), while
    `block_backward_sync` here holds the all-reduce until the last chunk.

    A NaN or Inf loss skips the step (on every rank together) and is logged with the batch's
    dataset, language and position; `max_nonfinite_in_a_row` of them stop the run.

    `scheduler` (e.g. `f2llm.schedule.cosine_with_warmup`, partial) is called with the
    optimiser, `total_steps` and the datamodule's `stage_starts` (`DataPlan.starts`).
    """

    def __init__(
        self,
        encoder: Encoder,
        objective: F2LLMObjective,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[..., LRScheduler] | None = None,
        gradcache: bool = False,
        gradient_clip_val: float | None = None,
        teacher: FrozenEncoder | None = None,
        max_nonfinite_in_a_row: int = 5,
        embedding_lr_scale: float = 1.0,
        guide: FrozenEncoder | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        if not embedding_lr_scale > 0:
            raise ValueError(f"module.embedding_lr_scale must be > 0, got {embedding_lr_scale}")
        if gradient_clip_val is not None and not gradcache:
            raise ValueError("gradient_clip_val is for gradcache=True; otherwise set "
                             "Trainer(gradient_clip_val=...)")
        self.encoder = encoder
        self.objective = objective
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.gradcache = gradcache
        self.gradient_clip_val = gradient_clip_val
        # GradCache runs one backward per chunk, which automatic optimisation cannot express.
        self.automatic_optimization = not gradcache
        self.set_teacher(teacher)
        self.set_guide(guide)
        self.max_nonfinite_in_a_row = max_nonfinite_in_a_row
        self.embedding_lr_scale = embedding_lr_scale
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        # Weights to start from (a checkpoint file or sharded folder), loaded once the model is
        # placed: under a sharded strategy each rank reads only its rows.
        self.init_from = init_from
        self._initialised = init_from is None

    def configure_model(self) -> None:
        # A strategy that shards the model (f2llm.parallel.FSDP2Strategy) does it here, where
        # Lightning calls it once the processes and the device mesh exist.
        parallelize = getattr(self.trainer.strategy, "parallelize", None)
        if parallelize is not None:
            parallelize(self)
        if not self._initialised:  # once: `trainer.validate` after fit calls this again
            load_weights(self, self.init_from)
            self._initialised = True

    def set_teacher(self, teacher: FrozenEncoder | None) -> None:
        """The frozen KD teacher (None: no KD term from the next step on)."""
        if teacher is not None:
            check_teacher_width(teacher.hidden_size, self.encoder.hidden_size)
        # Not a submodule: the teacher is neither trained nor saved in checkpoints.
        object.__setattr__(self, "teacher", teacher)

    def set_guide(self, guide: FrozenEncoder | None) -> None:
        """The frozen guide of GISTEmbed's rule (None: the rule is off). It reads the batch's
        token ids, so it must share the encoder's tokenizer; its width is free."""
        if guide is not None:
            check_same_tokenizer(guide.encoder.tokenizer, self.encoder.tokenizer, "guide.path")
        # Not a submodule, as the teacher: neither trained nor saved in checkpoints.
        object.__setattr__(self, "guide", guide)

    def _frozen(self) -> list[FrozenEncoder]:
        return [m for m in (self.teacher, self.guide) if m is not None]

    @property
    def mrl_dims(self) -> list[int]:
        return self.objective.dims_and_weights(self.encoder.hidden_size)[0]

    def on_fit_start(self) -> None:
        for frozen in self._frozen():
            frozen.to(self.device)

    def _frozen_embeddings(self, frozen: FrozenEncoder | None, batch: TrainBatch) -> Tensor | None:
        """The teacher's or the guide's embeddings of the batch's texts (None: not set)."""
        if frozen is None:
            return None
        return frozen.embed(batch.chunks, batch.restore, rank=self.global_rank)

    def _finite(self, loss: Tensor, batch: TrainBatch) -> bool:
        """Whether to take the step; every rank decides the same (a skipped step on one rank
        only would leave the others waiting in the gradient all-reduce)."""
        finite = torch.isfinite(loss.detach()).float()
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce(finite, reduce_op="min")
        if bool(finite > 0):
            self.nonfinite_in_a_row = 0
            return True
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        where = f"step {self.global_step}, {batch.where()}"
        log.warning("non-finite loss (%s) at %s: step skipped (%d in a row)",
                    float(loss.detach()), where, self.nonfinite_in_a_row)
        self.log("train/nonfinite_steps", float(self.nonfinite_total), batch_size=1)
        if self.nonfinite_in_a_row >= self.max_nonfinite_in_a_row:
            raise NonFiniteLoss(
                f"{self.nonfinite_in_a_row} non-finite losses in a row, the last at {where}. "
                "Lower optimizer.lr, check this batch's records, or use bf16/32-bit precision; "
                "resume from the last checkpoint (ckpt_path=<run folder>) once fixed.")
        return False

    def _log_step(self, loss: Tensor, logs: dict[str, Tensor], batch: TrainBatch) -> None:
        b = batch.batch_size
        logs = dict(logs)
        self.log("train/loss", logs.pop("loss"), batch_size=b, prog_bar=True)
        # Per format too: a clustering batch's loss is not comparable to a retrieval batch's,
        # nor are its false-negative counts (`dropped/<rule>`).
        self.log_dict({f"train/{batch.format}/{name}" if name.startswith("dropped/")
                       else f"train/{name}": value for name, value in logs.items()}, batch_size=b)
        self.log(f"train/{batch.format}/loss", loss.detach(), batch_size=b)
        if self.teacher is not None and self.teacher.mode == "cached":
            cache = self.teacher.cache(self.global_rank)
            seen = cache.hits + cache.misses
            self.log("teacher/cache_hit_rate", cache.hits / seen if seen else 0.0, batch_size=1)

    def training_step(self, batch: TrainBatch, batch_idx: int) -> Tensor | None:
        teacher = self._frozen_embeddings(self.teacher, batch)
        guide = self._frozen_embeddings(self.guide, batch)
        if self.gradcache:
            return self._gradcache_training_step(batch, teacher, guide)
        emb = self.encoder.forward_chunks(batch.chunks, batch.restore, layers=self.objective.layers)
        loss, logs = self.objective.on_batch(emb, batch, teacher, guide)
        if not self._finite(loss, batch):
            return None  # Lightning skips backward and the optimiser step
        self._log_step(loss, logs, batch)
        return loss

    def _gradcache_training_step(self, batch: TrainBatch, teacher: Tensor | None,
                                 guide: Tensor | None = None) -> Tensor | None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        strategy = self.trainer.strategy
        block_sync = getattr(strategy, "block_backward_sync", nullcontext)

        def backward(emb: Tensor, grad: Tensor, last: bool) -> None:
            # manual_backward applies the precision plugin; under DDP the gradients are
            # all-reduced once, in the last chunk's backward, over the sum of all chunks.
            with nullcontext() if last else block_sync():
                self.manual_backward(emb, grad)

        verdict: list[bool] = []

        def proceed(loss: Tensor) -> bool:
            verdict.append(self._finite(loss, batch))
            return verdict[-1]

        loss, logs = gradcache_step(self.encoder, self.objective, batch, backward, teacher,
                                    proceed, guide)
        if not verdict[-1]:
            return None
        if self.gradient_clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val,
                                gradient_clip_algorithm="norm")
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        self._log_step(loss, logs, batch)
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Kept beside the optimiser state, which a sharded checkpoint does not hold in the file
        # that `check_resume` reads before the optimiser is restored.
        checkpoint["embedding_lr_scale"] = self._effective_embedding_lr_scale()
        # Teacher (and guide) embeddings computed so far survive a crash after this checkpoint.
        for frozen in self._frozen():
            frozen.flush()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this before it restores the optimiser of a checkpoint file. (A
        # sharded folder restores its optimiser first: `train()` checks its metadata before.)
        self.check_resume(checkpoint)

    def _effective_embedding_lr_scale(self) -> float | None:
        """The scale the parameter groups carry (1 where the table is frozen, as with LoRA)."""
        return _embedding_lr_scale([g for g in self.param_groups() if isinstance(g, dict)],
                                   self.embedding_lr_scale)

    def check_resume(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume `checkpoint` (a checkpoint file's contents or a sharded folder's
        metadata) with another `module.embedding_lr_scale`: it changes the parameter groups;
        torch refuses another group count with a bare ValueError and, for the same count,
        keeps the checkpoint's lrs."""
        saved = checkpoint.get("embedding_lr_scale")
        states = checkpoint.get("optimizer_states") or []
        if saved is None and states:  # a checkpoint written before the scale was stored
            saved = _embedding_lr_scale(states[0].get("param_groups", []))
        if saved is None:
            return
        current = self._effective_embedding_lr_scale()
        if current is not None and not math.isclose(saved, current, rel_tol=1e-6):
            raise UserError(
                f"module.embedding_lr_scale={current:g}, but the checkpoint was trained with "
                f"{saved:g} (its optimiser state holds other parameter groups): resume with "
                f"module.embedding_lr_scale={saved:g}, or start a new run from its weights with "
                "init_from=<checkpoint>")

    def on_train_batch_end(self, outputs: Any, batch: TrainBatch, batch_idx: int) -> None:
        # The step the training ended at, in the metrics fit hands back (`train/step`, not sent
        # to the loggers, which have their own step): what `train()` compares with the held-out
        # scores' `val/step`, also from processes a spawned launcher started.
        self.log("train/step", float(self.trainer.global_step), logger=False, batch_size=1)

    def on_fit_end(self) -> None:
        for frozen in self._frozen():
            frozen.flush()

    def validation_step(self, batch: None, batch_idx: int) -> None:
        """Nothing per item: `callbacks.MatryoshkaEval` evaluates the held-out sets when the
        validation loop ends. Lightning runs that loop only for a model with this step."""

    def param_groups(self) -> list[Tensor] | list[dict[str, Any]]:
        """The trainable parameters; with `embedding_lr_scale` != 1, two groups: the rest
        first (the scheduler's floor is set by group 0's lr), then the input embedding's
        trainable tensors at `embedding_lr_scale` x the optimiser's lr. In a model trained from
        scratch the embedding table is most of the parameters and each row trains only in the
        steps whose texts hold its token, so it gains from a larger lr than the layers, which a
        larger lr for everything destabilises (docs/benchmarks.md: how the default was chosen)."""
        params = [p for p in self.parameters() if p.requires_grad]
        if self.embedding_lr_scale == 1.0:
            return params
        lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
        if lr is None:
            raise ValueError("module.embedding_lr_scale needs the optimizer config's lr "
                             "(a partial optimiser with `lr:`)")
        table = {id(p) for p in self.encoder.backbone.get_input_embeddings().parameters()}
        # Named: TensorBoard shows `lr-<optimizer>/model` and `lr-<optimizer>/embedding`.
        groups = [{"params": [p for p in params if id(p) not in table], "name": "model"},
                  {"params": [p for p in params if id(p) in table], "name": "embedding",
                   "lr": lr * self.embedding_lr_scale}]
        return [g for g in groups if g["params"]]  # LoRA: the table is frozen

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.param_groups())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        # The stages' starts let the schedule restart per stage (`f2llm.schedule`).
        datamodule = self.trainer.datamodule
        starts = datamodule.plan.starts if isinstance(datamodule, F2LLMDataModule) else None
        scheduler = self.scheduler_factory(
            optimizer=optimizer, total_steps=int(self.trainer.estimated_stepping_batches),
            stage_starts=starts,
        )
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
