"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for the encoder: the one sharded strategy
(`trainer=fsdp`), the same code for GPUs (NCCL) and for CPU processes over gloo
(`trainer=fsdp_sim`), so the sharded path is tested where CI runs.

Lightning's `FSDPStrategy` (FSDP1) is not used: it refuses a CPU, so it could never be tested
here, and it cannot clip gradients by norm under mixed precision, rounds buffers (the rotary
frequencies) to bf16 and gathers for `save_pretrained` from one rank. Lightning's
`ModelParallelStrategy` runs FSDP2 on any device but leaves the sharding to the
LightningModule's `configure_model`. `FSDP2Strategy` is
that strategy with the sharding of our encoder built in: every decoder layer is its own FSDP
unit (gathered whole for its forward and backward, resharded after), the rest (the token
embedding table, the final norm) forms the root unit, and checkpoints are sharded (one file per
rank, `torch.distributed.checkpoint`). Activation checkpointing stays the model's own setting
(`model.gradient_checkpointing=true`): it recomputes each decoder layer inside its FSDP unit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from f2llm.model import Encoder
from f2llm.model.weights import materialize

log = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of `module` is a DTensor (sharded by FSDP2)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def shard_encoder(encoder: Encoder, mesh: Any, layer_classes: Sequence[type],
                  reshard_after_forward: bool = True, param_dtype: torch.dtype | None = None
                  ) -> int:
    """`fully_shard` every module of `layer_classes` in `encoder`, then the encoder as the root
    unit. Returns the number of layer units. A second call changes nothing."""
    from torch.distributed.fsdp import (
        FSDPModule,
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    if isinstance(encoder, FSDPModule):
        return sum(isinstance(m, FSDPModule) for m in encoder.modules()) - 1
    # param_dtype None: parameters stay float32 in the all-gather and `trainer.precision`
    # (bf16-mixed: autocast) casts per op; bfloat16 gathers bf16 copies (half the traffic) and
    # reduces gradients in float32.
    policy = MixedPrecisionPolicy(param_dtype=param_dtype,
                                  reduce_dtype=torch.float32 if param_dtype else None)
    layers = [m for m in encoder.modules() if isinstance(m, tuple(layer_classes))]
    if not layers:
        raise ValueError(f"no {[c.__name__ for c in layer_classes]} in the encoder to shard")
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward,
                    mp_policy=policy)
    fully_shard(encoder, mesh=mesh, mp_policy=policy)
    encoder.match_chunks_across_ranks = True
    # The module calls `forward_chunks` (one embedding lookup for all chunks, then `forward`
    # per chunk) and evaluation `encode`: both must gather the root unit first.
    for method in ("forward_chunks", "encode"):
        register_fsdp_forward_method(encoder, method)
    return len(layers)


def shard_and_fill(encoder: Encoder, mesh: Any, layer_classes: Sequence[type],
                   device: torch.device, reshard_after_forward: bool = True,
                   param_dtype: torch.dtype | None = None) -> int:
    """`shard_encoder`, then, for a backbone built on the meta device
    (`build_encoder(empty_init=True)`), this rank's rows of its weights (`f2llm.model.weights`).
    The layers are sharded where they are: fully_shard moves each parameter to the mesh's
    device as it cuts it, so the whole model never sits on one device. Returns the number of
    layer units."""
    units = shard_encoder(encoder, mesh, layer_classes, reshard_after_forward, param_dtype)
    if encoder.pending_weights is not None:
        materialize(encoder, encoder.backbone, encoder.pending_weights, device)
        encoder.pending_weights = None
    return units


def gathered_encoder(encoder: Encoder) -> Encoder | None:
    """A plain (unsharded, CPU, float32) copy of a sharded encoder on rank zero, None on the
    other ranks; the encoder itself when it is not sharded. Collective: every rank calls it."""
    if not is_sharded(encoder):
        return encoder
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # full_state_dict + cpu_offload: the full tensors land on rank zero only.
    state = get_model_state_dict(
        encoder, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    prefix = "backbone."
    weights = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    plain = plain_copy(encoder.backbone)
    plain.load_state_dict(weights)
    return Encoder(plain.float(), encoder.tokenizer, encoder.max_length, encoder.query_template,
                   encoder.pooling)


def plain_copy(backbone: nn.Module) -> nn.Module:
    """An unsharded backbone of the same structure as `backbone` (a sharded one), with fresh
    weights: the base model of its class and config, trimmed to the same vocabulary rows and
    wrapped in the same LoRA adapters where `backbone` is, so that its full state dict loads."""
    from f2llm.model.vocab import TrimmedEmbedding, trim_input_embeddings

    peft = hasattr(backbone, "get_base_model")
    base = backbone.get_base_model() if peft else backbone
    # The base model's own class is unchanged (only its layers and the encoder are FSDP units).
    plain = type(base)(base.config)
    table = base.get_input_embeddings()
    if isinstance(table, TrimmedEmbedding):
        trim_input_embeddings(plain, table.keep.detach().cpu())
    if peft:
        from peft import get_peft_model

        plain = get_peft_model(plain, backbone.peft_config[backbone.active_adapter])
    return plain


class FSDP2Strategy(ModelParallelStrategy):
    """Data parallel over every process with FSDP2 sharding of the encoder (module docstring).

    `layer_classes`: the modules that become FSDP units (Qwen3's decoder layer).
    `param_dtype`: null (gather float32, autocast per `trainer.precision`) or "bfloat16".
    `reshard_after_forward`: false keeps each layer gathered from forward to backward (more
    memory, one all-gather fewer per layer and step).
    """

    def __init__(
        self,
        layer_classes: Sequence[type],
        reshard_after_forward: bool = True,
        param_dtype: str | None = None,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, **kwargs)
        if param_dtype is not None and param_dtype not in _DTYPES:
            raise ValueError(f"param_dtype={param_dtype!r}: one of {sorted(_DTYPES)} or null")
        self.layer_classes = tuple(layer_classes)
        self.reshard_after_forward = reshard_after_forward
        self.param_dtype = _DTYPES[param_dtype] if param_dtype else None

    def setup_environment(self) -> None:
        # Every process is one data-parallel shard (ModelParallelStrategy's "auto" would make
        # the processes of a node a tensor-parallel group).
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def parallelize(self, pl_module: L.LightningModule) -> None:
        """Shard `pl_module.encoder` (`shard_and_fill`); called from the module's
        `configure_model`."""
        units = shard_and_fill(pl_module.encoder, self.device_mesh["data_parallel"],
                               self.layer_classes, self.root_device,
                               self.reshard_after_forward, self.param_dtype)
        log.info("FSDP2: %d layer units + the root over %d ranks", units, self.world_size)
