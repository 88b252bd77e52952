"""scripts/gpu_check.py at its toy shape on the CPU, as a user runs it: every section runs and
its JSON holds the fields a GPU run reports. The FSDP2 section is the sharded path on two CPU
processes over gloo: sharded checkpoints, SIGKILL of both ranks, resume with bitwise-equal
losses, and the export gathered from the shards."""

from __future__ import annotations

import json
import sys

import pytest
from transformers import Qwen3Config, Qwen3Model

from tests.conftest import ROOT, run_python, user_env

sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("gpu_check")
    done = run_python([sys.executable, "scripts/gpu_check.py", "--toy", "--out-dir",
                       str(tmp / "out"), "--work", str(tmp / "work")], ROOT, user_env(), 900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "## FSDP2" in (tmp / "out" / "gpu_check.md").read_text()
    return json.loads((tmp / "out" / "gpu_check.json").read_text())


def test_precision_section(report: dict) -> None:
    precision = report["precision"]
    assert precision["auto"] == {"bf16-mixed": "sdpa", "32-true": "sdpa"}  # no CUDA here
    assert precision["encode"]["ok"] and precision["encode"]["calibration_finite"]
    assert precision["encode"]["min_cosine_vs_sdpa"] > 0.9999  # sdpa against itself here
    assert precision["rotary"]["inv_freq_dtype"] == "torch.float32"
    assert precision["rotary"]["max_abs_cos_diff_vs_float32"] == 0
    assert precision["ok"]


def test_peak_and_speed_levers(report: dict) -> None:
    assert report["mode"] == "toy (CPU)"
    assert report["peak"]["flops_per_s"] > 0
    assert "6*N*T" in report["mfu_formula"]
    levers = report["speed"]["levers"]
    for name in ("sdpa", "fused_adamw", "gradient_checkpointing"):
        lever = levers[name]
        assert lever["status"] == "ok", lever
        assert lever["tokens_per_s"] > 0 and 0 < lever["mfu"] < 1
        assert lever["padding_fraction"] == 0  # every text truncates to max_length
        assert lever["mean_batch_size"] == report["shape"]["batch"]
    assert levers["flash_attention_2"]["status"] == "skipped"  # no CUDA here
    assert levers["padding_free_packing"]["status"] == "skipped"
    # Fused AdamW runs without clipping (Lightning refuses both under bf16-mixed): reported,
    # never the headline or the winner.
    assert levers["fused_adamw"]["recipe"] is False
    assert report["speed"]["winner"] != "fused_adamw"
    measured = [*levers.values(), *(r for rows in report["speed"]["sweep"].values()
                                    for r in rows.values())]
    best = report["speed"]["best"]  # the fastest of everything measured that keeps the recipe
    assert best["tokens_per_s"] == max(r["tokens_per_s"] for r in measured
                                       if r["status"] == "ok" and r.get("recipe", True))
    # N of the MFU: every parameter but the embedding table (vocabulary x hidden 32).
    assert best["non_embedding_params"] == levers["sdpa"]["params"] - 151936 * 32
    assert report["speed"]["largest_batch"]["gradient_checkpointing_on"]["batch"] >= 4


def test_fsdp2_two_cpu_processes_kill_resume_and_export(report: dict) -> None:
    fsdp = report["fsdp"]
    assert "error" not in fsdp, fsdp.get("error")
    assert fsdp["world_size"] == 2 and fsdp["trainer"] == "fsdp_sim"
    assert fsdp["killed_exit"] == -9 and fsdp["resumed_exit"] == 0
    assert fsdp["checkpoint"]["sharded"]
    assert {"__0_0.distcp", "__1_0.distcp", "meta.pt"} <= set(fsdp["checkpoint"]["files"])
    assert fsdp["killed_after_step"] == 3 and fsdp["resumed_from_step"] == 2
    resume = fsdp["resume"]
    # Toy: step 3, replayed after the resume from step 2, against the killed run's step 3.
    assert resume["compared_steps"] == 1 * 2  # one step on both ranks
    assert resume["equal_bitwise"] and resume["ok"]  # float32 on a CPU: the same bits
    assert resume["losses_resumed"][0] == resume["losses_reference"][2]
    assert len(resume["losses_resumed"]) == 2  # steps 3 and 4: the resumed run ran to the end
    export = fsdp["export"]
    assert export["loads"] and export["step"] == fsdp["steps"]
    assert export["max_abs_diff"] <= 1e-5 and export["min_cosine"] > 0.99999
    assert export["ok"]


def test_prune_and_kd_step_times(report: dict) -> None:
    prune = report["prune"]
    target = {**{k.split("=")[0].rsplit(".", 1)[1]: int(k.split("=")[1])
                 for k in gpu_check.TOY.prune_overrides}}
    config = Qwen3Config(**{**dict(vocab_size=151936, tie_word_embeddings=True), **target})
    assert prune["parameters"] == sum(p.numel() for p in Qwen3Model(config).parameters())
    assert prune["source_parameters"] > prune["parameters"]
    kd = prune["kd"]
    assert all(kd[m]["status"] == "ok" and kd[m]["step_s"] > 0
               for m in ("no_kd", "online", "cached_fill", "cached"))
    assert kd["cached_fill"]["teacher_cache_hit_rate"] == 0.0
    assert kd["cached"]["teacher_cache_hit_rate"] == 1.0  # the timed run reads the cache
    assert set(prune["step_time_vs_no_kd"]) == {"online", "cached"}


def test_compile_lever_compiles_every_decoder_layer() -> None:
    """The wiring of `++model.compile=true` (the compiled run itself needs a GPU to be worth
    timing; the script measures it there)."""
    from f2llm.model import build_encoder

    shape = {"vocab_size": 151936, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
             "intermediate_size": 64}
    compiled = build_encoder("tiny", shape=shape, compile=True).backbone.layers
    plain = build_encoder("tiny", shape=shape).backbone.layers
    assert all(layer._compiled_call_impl is not None for layer in compiled)
    assert all(layer._compiled_call_impl is None for layer in plain)
    assert gpu_check.lever_overrides("compile")[-1] == "++model.compile=true"


def test_fused_adamw_with_clipping_under_mixed_precision_fails_fast(tmp_path) -> None:
    """The default experiment's fused AdamW on `trainer=gpu` (bf16-mixed, clipping 1.0) would
    stop at the first step inside Lightning; the config check says what to change."""
    from f2llm.config_checks import ConfigError, check_config
    from tests.conftest import compose_train

    cfg = compose_train(["trainer=gpu", f"paths.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="optimizer=adamw"):
        check_config(cfg)
    check_config(compose_train(["trainer=gpu", "optimizer=adamw",
                                f"paths.output_dir={tmp_path}"]))
    check_config(compose_train(["trainer=gpu", "trainer.gradient_clip_val=null",
                                f"paths.output_dir={tmp_path}"]))
