"""The distributed conformance matrix: every strategy x feature on two gloo ranks whose texts
differ in length, so that the ranks pack different numbers of chunks (asserted).

Strategies: DDP and the sharded strategy (FSDP2, `f2llm.parallel.FSDP2Strategy`), both through
Lightning as `trainer=ddp` / `trainer=fsdp` build them. Features: plain, GradCache, KD with a
cached teacher, Matryoshka over layers, vocabulary trimming, LoRA. Each case trains `STEPS`
steps with SGD and gradient clipping; its per-step losses (the mean over ranks) and its final
weights must equal one process trained on the concatenated batches: equal weights after SGD
steps mean equal gradients. Also: under DDP + GradCache each step all-reduces the gradients
exactly once; a sharded run resumed from its step-1 checkpoint ends bitwise equal to the
uninterrupted one; a sharded run's export embeds like its training model.

Below Lightning, the objective's gathered loss and a GradCache step across the ranks equal one
process on the concatenated batch. Convention, as under DDP: each rank's loss is the mean over
its own B queries (scored against the positives of all ranks), and DDP averages parameter
gradients over the W ranks. The one-process loss over the W * B queries is then the mean of the
rank losses, and the rank-mean of the parameter gradients equals the one-process gradient. The
gradient a rank gets for its own embeddings is W times the one-process gradient for those rows:
the autograd all_gather sums every rank's gradient for a positive back to its owner, and the
1 / W comes from DDP's average.

One spawn runs every case (spawning costs more than the cases); a case that hangs (ranks
issuing different collectives) fails the test by the deadline, naming the case.
"""

from __future__ import annotations

import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.utils.data import DataLoader
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

from f2llm.checkpoints import load_weights, read_checkpoint
from f2llm.data.batch import TrainBatch, text_keys
from f2llm.errors import UserError
from f2llm.export import export_sentence_transformers
from f2llm.model import Encoder, build_encoder
from f2llm.model.frozen import FrozenEncoder
from f2llm.model.packing import pack_by_length
from f2llm.model.vocab import trim_input_embeddings
from f2llm.model.weights import materialize
from f2llm.module import F2LLMModule
from f2llm.objective import F2LLMObjective, gradcache_step
from f2llm.parallel import FSDP2Strategy, gathered_encoder
from tests.conftest import TINY_SHAPE, tiny_encoder
from tests.distributed.ranks import start_ranks
from tests.distributed.tiny import fresh_encoder

TINY = {**{k.removeprefix("model.shape."): v for k, v in TINY_SHAPE.items()},
        "vocab_size": 151_936, "num_hidden_layers": 2}  # fresh_encoder's shape

WORLD = 2
B, K = 4, 3  # queries per rank, hard negatives
D_IN, D = 16, 32  # the objective's linear layer: input and output width
STEPS = 2
CLIP = 0.05  # small enough to clip every step: the clipping norm is global across ranks
MAX_TOKENS = 48  # padded tokens per chunk: short texts fit in 2 chunks, long ones need 6
VOCAB = 2000  # token ids drawn below this (the tiny model keeps the real vocabulary)
STRATEGIES = ("ddp", "fsdp")
FEATURES = ("plain", "gradcache", "kd_cached", "layers", "vocab_trim", "lora")
RESUMED = ("fsdp/plain", "fsdp/gradcache")  # resumed from their step-1 checkpoints
DEADLINE_S = 420


# ---- inputs, identical in every process (fixed seeds) ----------------------------------------


def objective_inputs() -> tuple[nn.Linear, Tensor]:
    """A linear layer and the inputs whose outputs are the embeddings: rows are queries,
    positives, then negatives [W * B, K] in query-major order."""
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(D_IN, D).double()
    with torch.no_grad():
        linear.weight.copy_(torch.randn(D, D_IN, generator=generator, dtype=torch.float64))
        linear.bias.copy_(torch.randn(D, generator=generator, dtype=torch.float64))
    x = torch.randn(WORLD * B * (2 + K), D_IN, generator=generator, dtype=torch.float64)
    return linear, x


def rank_rows(rank: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Row indices of the queries, positives and negatives [b, K] of `rank` (None: all)."""
    n = WORLD * B
    q = torch.arange(n) if rank is None else torch.arange(rank * B, (rank + 1) * B)
    return q, n + q, 2 * n + (q[:, None] * K + torch.arange(K))


def objective_loss(linear: nn.Linear, x: Tensor, rank: int | None, use_negatives: bool,
                   gather: bool) -> Tensor:
    q, p, n = rank_rows(rank)
    emb = linear(x)
    negatives = emb[n] if use_negatives else None
    objective = F2LLMObjective(gather_inbatch=gather)
    return objective(emb[q], emb[p], negatives, use_inbatch=True)[0]


def records(step: int) -> list[list[list[int]]]:
    """WORLD * B records of [query, positive, negative_1..K] token ids: rank 0's texts are
    short (2-4 tokens), rank 1's long (9-14), so rank 1 packs more chunks."""
    generator = torch.Generator().manual_seed(100 + step)
    out = []
    for i in range(WORLD * B):
        low, high = (2, 5) if i < B else (9, 15)
        lengths = torch.randint(low, high, (2 + K,), generator=generator).tolist()
        out.append([torch.randint(3, VOCAB, (n,), generator=generator).tolist()
                    for n in lengths])
    return out


def collate(recs: list[list[list[int]]], step: int) -> TrainBatch:
    """The datamodule's layout: queries, positives, then negatives column by column."""
    texts = [r[0] for r in recs] + [r[1] for r in recs]
    texts += [r[2 + j] for j in range(K) for r in recs]
    chunks, restore, padding = pack_by_length(texts, pad_id=0, max_tokens=MAX_TOKENS)
    return TrainBatch(chunks, restore, batch_size=len(recs), num_negatives=K, use_inbatch=True,
                      format="retrieval", dataset="toy", language="xx", group="toy/xx",
                      indices=np.arange(len(recs)), stage="train", epoch=0, position=step,
                      num_tokens=sum(map(len, texts)), num_padding=padding,
                      keys=text_keys(texts[len(recs):]))


def batch(step: int, rank: int | None) -> TrainBatch:
    recs = records(step)
    return collate(recs if rank is None else recs[rank * B : (rank + 1) * B], step)


def used_token_ids() -> Tensor:
    return torch.tensor(sorted({t for s in range(STEPS) for r in records(s) for text in r
                                for t in text}))


def build(feature: str, cache_dir: Path) -> F2LLMModule:
    """The case's module, the same weights in every process."""
    encoder = fresh_encoder(lora=feature == "lora")
    if feature == "vocab_trim":
        trim_input_embeddings(encoder.backbone, used_token_ids())
    teacher = None
    if feature == "kd_cached":
        torch.manual_seed(1)
        other = fresh_encoder()
        for p in other.parameters():  # another model than the student
            p.data.add_(0.01 * torch.randn_like(p))
        teacher = FrozenEncoder(other, mode="cached", cache_dir=cache_dir)
    objective = F2LLMObjective(layers=[1] if feature == "layers" else None,
                               kd_weight=1.0 if teacher is not None else 0.0)
    gradcache = feature == "gradcache"
    return F2LLMModule(encoder, objective, optimizer=partial(torch.optim.SGD, lr=0.5),
                       gradcache=gradcache, gradient_clip_val=CLIP if gradcache else None,
                       teacher=teacher)


class Batches(L.LightningDataModule):
    """This rank's batches in step order, resumable: the position is saved in checkpoints."""

    def __init__(self, rank: int | None) -> None:
        super().__init__()
        self.rank, self.position = rank, 0

    def train_dataloader(self) -> DataLoader:
        items = [batch(s, self.rank) for s in range(self.position, STEPS)]
        return DataLoader(items, batch_size=None, collate_fn=lambda b: b)

    def state_dict(self) -> dict[str, int]:
        return {"position": self.trainer.global_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]


class Record(L.Callback):
    """Per step: the loss, this rank's chunk count, and (DDP) the gradient elements
    all-reduced, counted by a communication hook around DDP's own all-reduce."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.chunks: list[int] = []
        self.reduced: list[int] = []
        self._pending = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = trainer.strategy.model
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            # Unannotated: DDP checks a hook's annotations against the real classes.
            def hook(state, bucket):
                self._pending += bucket.buffer().numel()
                return default_hooks.allreduce_hook(None, bucket)

            model.register_comm_hook(None, hook)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: TrainBatch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))
        self.chunks.append(len(batch.chunks))
        self.reduced.append(self._pending)
        self._pending = 0


class StartWeights(L.Callback):
    """The encoder's weights (gathered) when training starts: after the strategy has built,
    sharded and initialised them."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.weights = full_weights(pl_module.encoder)


def build_empty(init_from: str | None = None, pretrained: Path | None = None) -> F2LLMModule:
    """The plain case's module with its backbone on the meta device (as `train()` builds it
    under the sharded strategy): weights come once sharded, from `init_from`, `pretrained` or
    a random init of seed 0."""
    torch.manual_seed(0)
    encoder = build_encoder("tiny", shape=None if pretrained else TINY, pretrained=pretrained,
                            max_length=32, empty_init=True)
    return F2LLMModule(encoder, F2LLMObjective(), optimizer=partial(torch.optim.SGD, lr=0.5),
                       init_from=init_from)


class BufferDtypes(L.Callback):
    """The encoder's floating-point buffers' dtypes once the strategy has set the model up
    (sharded, converted to the precision) and after training."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, torch.dtype]] = {}

    def _record(self, when: str, pl_module: L.LightningModule) -> None:
        self.seen[when] = {name: b.dtype for name, b in pl_module.encoder.named_buffers()
                           if b.is_floating_point()}
        self.seen[when]["parameters"] = next(pl_module.encoder.parameters()).dtype

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record("setup", pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record("end", pl_module)


def strategy_of(name: str) -> Any:
    if name == "ddp":
        return DDPStrategy(process_group_backend="gloo")
    return FSDP2Strategy(layer_classes=[Qwen3DecoderLayer], process_group_backend="gloo")


def fit(module: F2LLMModule, rank: int | None, strategy: str | None,
        callbacks: list[L.Callback], ckpt_path: str | None = None,
        precision: str = "32-true", steps: int = STEPS) -> None:
    trainer = L.Trainer(
        accelerator="cpu", devices=WORLD if strategy else 1,
        strategy=strategy_of(strategy) if strategy else "auto", precision=precision,
        max_steps=steps, logger=False, enable_checkpointing=any(
            isinstance(c, ModelCheckpoint) for c in callbacks), callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        gradient_clip_val=None if module.gradcache else CLIP)
    trainer.fit(module, datamodule=Batches(rank), ckpt_path=ckpt_path, weights_only=True)


def full_weights(encoder: Encoder) -> dict[str, Tensor]:
    """Every parameter whole (a sharded one gathered: collective)."""
    out = {}
    for name, p in encoder.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name.replace("_checkpoint_wrapped_module.", "")] = full.detach().clone()
    return out


TEXTS = ["Open the file", "Datei öffnen", "ファイルを開く", "a much longer text than the others"]


# ---- the two ranks -----------------------------------------------------------------------------


def _worker(rank: int, out: str) -> None:
    torch.set_num_threads(1)  # two processes share the machine's cores
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="0", WORLD_SIZE=str(WORLD),
                      NODE_RANK="0", LOCAL_RANK=str(rank), RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank,
                            world_size=WORLD)
    folder = Path(out)
    result: dict[str, Any] = {}

    # The objective and a GradCache step, without Lightning.
    (folder / f"progress{rank}").write_text("objective")
    for use_negatives in (False, True):
        linear, x = objective_inputs()
        x.requires_grad_()
        loss = objective_loss(linear, x, rank, use_negatives, gather=True)
        loss.backward()
        result[f"objective/{use_negatives}"] = {
            "loss": loss.detach(), "x_grad": x.grad, "weight_grad": linear.weight.grad,
            "bias_grad": linear.bias.grad,
            "local_loss": objective_loss(linear, x, rank, use_negatives, gather=False).detach(),
        }
    encoder = fresh_encoder()
    loss, _ = gradcache_step(encoder, F2LLMObjective(), batch(0, rank))
    grads = {}
    for name, p in encoder.named_parameters():
        dist.all_reduce(p.grad)  # what DDP does, as a sum; divided by W in the test
        grads[name] = p.grad
    result["gradcache"] = {"loss": loss, "grads": grads}

    for strategy in STRATEGIES:
        for feature in FEATURES:
            case = f"{strategy}/{feature}"
            (folder / f"progress{rank}").write_text(case)
            module = build(feature, folder / case / "teacher")
            record = Record()
            callbacks: list[L.Callback] = [record]
            if case in RESUMED:  # saved every step: the run the resumed one must equal
                callbacks.append(ModelCheckpoint(dirpath=folder / case / "checkpoints",
                                                 every_n_train_steps=1, save_top_k=-1))
            fit(module, rank, strategy, callbacks)
            result[case] = {"losses": record.losses, "chunks": record.chunks,
                            "reduced": record.reduced, "weights": full_weights(module.encoder),
                            "trainable": sum(p.numel() for p in module.parameters()
                                             if p.requires_grad)}
            if strategy == "fsdp":
                plain = gathered_encoder(module.encoder)  # collective: every rank
                if rank == 0:
                    path = export_sentence_transformers(plain, folder / case / "export")
                    result[case]["export"] = str(path)
                    result[case]["model_embeddings"] = plain.encode(TEXTS)

    # A sharded run resumed from its step-1 checkpoint, against the uninterrupted one.
    for case in RESUMED:
        (folder / f"progress{rank}").write_text(f"{case}/resume")
        checkpoints = folder / case / "checkpoints"
        resumed = build(case.removeprefix("fsdp/"), folder / case / "teacher")
        step1 = next(p for p in checkpoints.iterdir() if "step=1" in p.name)
        fit(resumed, rank, "fsdp", [], ckpt_path=str(step1))
        result[f"{case}/resume"] = {
            "uninterrupted": result[case]["weights"], "resumed": full_weights(resumed.encoder),
            "folder": str(next(p for p in checkpoints.iterdir() if "step=2" in p.name))}

    # init_from=<a sharded folder>: into a sharded model built empty (each rank reads its
    # rows) and into a plain one on every rank.
    (folder / f"progress{rank}").write_text("fsdp/init_from")
    saved = Path(result["fsdp/plain/resume"]["folder"])
    empty = build_empty(init_from=str(saved))
    start = StartWeights()
    fit(empty, rank, "fsdp", [start], steps=1)
    plain = build("plain", folder)
    load_weights(plain, saved)
    result["fsdp/init_from"] = {"sharded": start.weights, "plain": full_weights(plain.encoder)}

    # Built empty: a random init (the same whatever the number of ranks) and a pretrained
    # folder (each rank reads its rows of the safetensors).
    (folder / f"progress{rank}").write_text("fsdp/empty")
    start = StartWeights()
    fit(build_empty(), rank, "fsdp", [start], steps=1)
    pretrained = folder / "pretrained"
    if rank == 0:
        export_sentence_transformers(fresh_encoder(), pretrained)
    dist.barrier()
    loaded = StartWeights()
    fit(build_empty(pretrained=pretrained), rank, "fsdp", [loaded], steps=1)
    result["fsdp/empty"] = {"random": start.weights, "pretrained": loaded.weights}

    # Buffers under half precision: the rotary frequencies stay float32.
    for precision in ("bf16-mixed", "bf16-true"):
        (folder / f"progress{rank}").write_text(f"fsdp/{precision}")
        dtypes = BufferDtypes()
        fit(build("plain", folder), rank, "fsdp", [dtypes], precision=precision, steps=1)
        result[f"fsdp/{precision}"] = dtypes.seen

    torch.save(result, folder / f"rank{rank}.pt")
    (folder / f"progress{rank}").write_text("done")
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("conformance")
    context = start_ranks(_worker, (str(out),), WORLD, join=False)
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            cases = {r: (out / f"progress{r}").read_text() if (out / f"progress{r}").exists()
                     else "start" for r in range(WORLD)}
            for process in context.processes:
                process.kill()
            pytest.fail(f"the ranks did not finish in {DEADLINE_S} s; they were in {cases} "
                        "(a hang: ranks issuing different collectives)")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Each feature trained in one process on the concatenated batches."""
    out = tmp_path_factory.mktemp("reference")
    found = {}
    for feature in FEATURES:
        module = build(feature, out / feature / "teacher")
        record = Record()
        fit(module, None, None, [record])
        found[feature] = {"losses": record.losses, "weights": full_weights(module.encoder)}
    return found


# ---- the tests -------------------------------------------------------------------------------


def test_the_ranks_pack_different_numbers_of_chunks() -> None:
    counts = [[len(batch(s, r).chunks) for r in range(WORLD)] for s in range(STEPS)]
    assert all(c[1] > c[0] for c in counts), counts


def test_rank_inputs_are_reproducible() -> None:
    # The ranks rebuild the inputs and the model from seeds; they must come out the same.
    a, b = tiny_encoder(), tiny_encoder()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert records(0) == records(0)


@pytest.mark.parametrize("use_negatives", [False, True], ids=["inbatch", "inbatch+hard"])
def test_gathered_objective_equals_one_process(ranks: list[dict[str, Any]],
                                               use_negatives: bool) -> None:
    linear, x = objective_inputs()
    x.requires_grad_()
    loss = objective_loss(linear, x, None, use_negatives, gather=False)
    loss.backward()
    got = [r[f"objective/{use_negatives}"] for r in ranks]

    torch.testing.assert_close(torch.stack([g["loss"] for g in got]).mean(), loss.detach())
    # The gather changed the loss: each rank scored against the other rank's positives too.
    assert all((g["loss"] - g["local_loss"]).abs() > 1e-3 for g in got)
    for name, reference in (("weight_grad", linear.weight.grad), ("bias_grad", linear.bias.grad)):
        torch.testing.assert_close(torch.stack([g[name] for g in got]).mean(0), reference)
    for rank, g in enumerate(got):
        rows = torch.cat([r.flatten() for r in rank_rows(rank)])
        torch.testing.assert_close(g["x_grad"][rows], WORLD * x.grad[rows])
        others = torch.ones(len(x), dtype=torch.bool)
        others[rows] = False
        assert (g["x_grad"][others] == 0).all()  # a rank's graph holds only its own inputs


def test_gradcache_across_ranks_equals_one_plain_step(ranks: list[dict[str, Any]]) -> None:
    encoder = fresh_encoder()
    full = batch(0, None)
    emb = encoder.forward_chunks(full.chunks, full.restore)
    loss = F2LLMObjective().on_batch(emb, full)[0]
    loss.backward()

    torch.testing.assert_close(torch.stack([r["gradcache"]["loss"] for r in ranks]).mean(),
                               loss.detach(), rtol=0, atol=1e-6)
    for name, p in encoder.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r["gradcache"]["grads"][name] / WORLD, p.grad,
                                       rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("feature", FEATURES)
def test_two_ranks_equal_one_process(ranks: list[dict[str, Any]],
                                     references: dict[str, dict[str, Any]], strategy: str,
                                     feature: str) -> None:
    case = f"{strategy}/{feature}"
    got = [r[case] for r in ranks]
    reference = references[feature]
    # The ranks saw their own batches: different chunk counts, every step.
    assert all(a < b for a, b in zip(got[0]["chunks"], got[1]["chunks"], strict=True))
    losses = torch.tensor([g["losses"] for g in got]).mean(0)
    torch.testing.assert_close(losses, torch.tensor(reference["losses"]), rtol=1e-5,
                               atol=1e-6)
    moved = False
    for name, value in reference["weights"].items():
        for g in got:
            torch.testing.assert_close(g["weights"][name], value, rtol=1e-4, atol=1e-6,
                                       msg=f"{case} {name}")
        moved |= bool((value != build_weights(feature)[name]).any())
    assert moved  # the steps changed the weights: the comparison can fail


_START: dict[str, dict[str, Tensor]] = {}


def build_weights(feature: str) -> dict[str, Tensor]:
    if feature not in _START:
        _START[feature] = full_weights(build(feature, Path("/nonexistent")).encoder)
    return _START[feature]


def test_ddp_gradcache_all_reduces_the_gradients_once_per_step(
        ranks: list[dict[str, Any]]) -> None:
    for case in ("ddp/plain", "ddp/gradcache"):
        for r in ranks:
            assert r[case]["reduced"] == [r[case]["trainable"]] * STEPS, (case, r[case])


@pytest.mark.parametrize("feature", ["plain", "gradcache"])
def test_sharded_resume_is_bitwise_equal(ranks: list[dict[str, Any]], feature: str) -> None:
    for r in ranks:
        found = r[f"fsdp/{feature}/resume"]
        for name, value in found["uninterrupted"].items():
            assert torch.equal(found["resumed"][name], value), name


@pytest.mark.parametrize("feature", FEATURES)
def test_sharded_export_embeds_like_the_trained_model(ranks: list[dict[str, Any]],
                                                      feature: str) -> None:
    from sentence_transformers import SentenceTransformer

    found = ranks[0][f"fsdp/{feature}"]
    model = SentenceTransformer(found["export"], device="cpu")
    theirs = model.encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(theirs, found["model_embeddings"], atol=1e-5, rtol=0)
    config = json.loads((Path(found["export"]) / "config.json").read_text())
    assert config["vocab_size"] == 151_936  # a trimmed vocabulary exports whole


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_sharded_half_precision_keeps_the_rotary_frequencies_float32(
        ranks: list[dict[str, Any]], precision: str) -> None:
    for r in ranks:
        seen = r[f"fsdp/{precision}"]
        for when in ("setup", "end"):
            buffers = {n: d for n, d in seen[when].items() if n != "parameters"}
            assert any(n.endswith("inv_freq") for n in buffers), seen
            assert set(buffers.values()) == {torch.float32}, (when, seen)
        # bf16-true converts the parameters themselves: the buffers were spared, not missed.
        expected = torch.bfloat16 if precision == "bf16-true" else torch.float32
        assert seen["setup"]["parameters"] == expected


def test_init_from_a_sharded_folder(ranks: list[dict[str, Any]]) -> None:
    """The step-2 sharded checkpoint of the plain case, as `init_from`: a sharded model built
    empty, a plain model on each rank, and one process with no process group all start from
    exactly the weights it holds."""
    expected = ranks[0]["fsdp/plain/resume"]["uninterrupted"]
    alone = build("plain", Path("/nonexistent"))
    load_weights(alone, ranks[0]["fsdp/plain/resume"]["folder"])
    for got in [*(r["fsdp/init_from"][k] for r in ranks for k in ("sharded", "plain")),
                full_weights(alone.encoder)]:
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            assert torch.equal(got[name], value), name


def test_resuming_a_sharded_folder_checks_the_embedding_lr(ranks: list[dict[str, Any]]) -> None:
    folder = Path(ranks[0]["fsdp/plain/resume"]["folder"])
    meta = read_checkpoint(folder / "meta.pt")
    assert meta["embedding_lr_scale"] == 1.0
    module = F2LLMModule(fresh_encoder(), F2LLMObjective(),
                         optimizer=partial(torch.optim.SGD, lr=0.5), embedding_lr_scale=4.0)
    with pytest.raises(UserError, match="embedding_lr_scale=4, but the checkpoint was "
                                        "trained with 1"):
        module.check_resume(meta)
    module.embedding_lr_scale = 1.0
    module.check_resume(meta)  # the same setting resumes


def test_built_empty_then_sharded(ranks: list[dict[str, Any]]) -> None:
    """A model built on the meta device and filled once sharded holds, on two ranks, the
    random init one process gives (not the eager init: the rows are drawn per block) and
    exactly a pretrained folder's weights."""
    one = build_empty()
    materialize(one.encoder, one.encoder.backbone, one.encoder.pending_weights,
                torch.device("cpu"))
    alone = full_weights(one.encoder)
    folder_weights = full_weights(fresh_encoder())
    for r in ranks:
        for name, value in alone.items():
            assert torch.equal(r["fsdp/empty"]["random"][name], value), name
        for name, value in folder_weights.items():
            assert torch.equal(r["fsdp/empty"]["pretrained"][name], value), name
    linear = alone["backbone.layers.0.mlp.up_proj.weight"]
    assert abs(float(linear.std()) - 0.02) < 0.002  # Qwen3's initializer_range
    norm = alone["backbone.norm.weight"]
    assert torch.equal(norm, torch.ones_like(norm))
    assert torch.equal(one.encoder.backbone.rotary_emb.inv_freq,
                       fresh_encoder().backbone.rotary_emb.inv_freq)
