"""Scale-out on accelerate, checked on CPU: 2 processes (gloo) train what 1 process trains.

A 2-process run with ``batch_size`` prompts per process and a 1-process run with twice that
batch see the same global batches (the prompt stream is global; rank r takes slice r); with
the same samples, the same judge scores and DDP's gradient averaging (the loss is a mean over
equally sized slices), their loss curves and final weights agree to float rounding. The
samples agree because the trainer draws them per sample, from a generator keyed by the
sample's index in the run (``nlhf.train.policy.sample_generators``), and the learning-rate
schedule takes one step per optimizer step whatever the number of processes.

FSDP2 runs on CPU only through ``scale_worker.fsdp2_on_cpu`` (accelerate itself falls back to
DDP on CPU); the policy and the reference are really sharded there (``fully_shard``, DTensor
parameters) and the checkpoints go through accelerate's FSDP save and load.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import scale_worker
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

WORKER = Path(scale_worker.__file__)
CURVE_KEYS = ("lr", "loss/total", "pref/mean", "kl/ref", "grad/norm", "policy/entropy")
CURVE_KEYS += ("policy/length", "alternative/length")
# Nash-MD-PG with plain SGD and no clipping (an error in the gradient averaging would show in
# the weights), Nash-EMA-PG with AdamW and clipping (the EMA is compared too)
RUNS = {
    "md": dict(alternative="mixture", optimizer="sgd", max_grad_norm=0.0, lr=0.05),
    "ema": dict(alternative="ema", optimizer="adamw", max_grad_norm=1.0),
}
SCHEDULE = dict(lr_schedule="linear", warmup_steps=1)
# Largest gaps allowed between the runs. Metrics and SGD weights differ by float rounding
# (measured <= 3e-7). AdamW divides each coordinate's step by that coordinate's own gradient
# scale, so a weight whose gradient is float noise takes noise-driven steps (measured up to
# 1.2e-5 after 4 steps at lr 3e-3, ~0.1% of a step).
ATOL = {"curve": 1e-5, "sgd": 1e-5, "adamw": 1e-4}


def _launch(tmp_path: Path, runs: list[dict], fsdp2: bool = False) -> None:
    """``runs`` in 2 CPU processes (torch.distributed.run, gloo), one after the other."""
    job = tmp_path / f"job{len(list(tmp_path.glob('job*.json')))}.json"
    job.write_text(json.dumps({"runs": runs, "fsdp2_on_cpu": fsdp2}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(port), str(WORKER), str(job)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(WORKER.parent), *sys.path])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _one_process(spec: dict) -> None:
    """The same run in this process, one process with the global batch."""
    scale_worker.run({**spec, "batch_size": 2 * spec["batch_size"]})


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    return max((x[k].double() - y[k].double()).abs().max().item() for k in x)


def _curves(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _check_parity(two: Path, one: Path, spec: dict) -> dict[str, float]:
    """The 2-process run ends where the 1-process run ends; returns the measured gaps."""
    rows2, rows1 = _curves(two), _curves(one)
    assert [r["step"] for r in rows2] == [r["step"] for r in rows1] == [1, 2, 3, 4]
    gaps, atol = {}, {}
    for key in CURVE_KEYS:
        if key in rows1[0]:
            gaps[key] = max(abs(a[key] - b[key]) for a, b in zip(rows2, rows1))
            atol[key] = ATOL.get(key, ATOL["curve"])
    names = ["model.safetensors"]
    if spec["alternative"] == "ema":
        names.append("ema/model.safetensors")
    for name in names:
        gaps[name] = _max_diff(two / name, one / name)
        atol[name] = ATOL[spec["optimizer"]]
    assert all(gaps[k] <= atol[k] for k in gaps), (gaps, atol)
    # ... and the comparison is not vacuous: the runs learned, the curves move
    init = scale_worker.tiny_model(scale_worker.tokenizer(), spec["model"]).state_dict()
    final = load_file(one / "model.safetensors")
    moved = max((final[k] - init[k]).abs().max().item() for k in final)
    assert moved > 1e-3, moved
    assert len({round(r["loss/total"], 6) for r in rows1}) == 4
    return gaps


CONFIGS = [("ddp", "MULTI_GPU"), ("fsdp2", "FSDP"), ("zero2", "DEEPSPEED"), ("zero3", "DEEPSPEED")]


@pytest.mark.parametrize("name,kind", CONFIGS)
def test_accelerate_configs_load(name, kind):
    """configs/accelerate/*.yaml are launch configurations accelerate reads as documented."""
    from accelerate.commands.config.config_args import load_config_from_file

    path = Path(__file__).parents[1] / "configs" / "accelerate" / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert config.distributed_type.name == kind and config.mixed_precision == "no"
    if name == "fsdp2":
        assert config.fsdp_config["fsdp_version"] == 2
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
        assert config.deepspeed_config["gradient_accumulation_steps"] == 1


def test_ddp_two_processes_match_one_process(tmp_path):
    """DDP as users run it: Nash-MD-PG (SGD, no clipping: an error in the gradient averaging
    would show in the weights) and Nash-EMA-PG (AdamW, clipping, the EMA compared too), with a
    warm-up and a linear decay of the learning rate."""
    runs = [
        {**RUNS[name], **SCHEDULE, "model": "llama", "batch_size": 4,
         "output_dir": str(tmp_path / f"{name}-2")}
        for name in RUNS
    ]  # fmt: skip
    _launch(tmp_path, runs)
    for spec, name in zip(runs, RUNS):
        one = tmp_path / f"{name}-1"
        _one_process({**spec, "output_dir": str(one)})
        gaps = _check_parity(tmp_path / f"{name}-2", one, spec)
        print("ddp", name, json.dumps(gaps))


def test_fsdp2_on_two_cpu_processes(tmp_path):
    """FSDP2 on 2 CPU processes with a Llama and Nash-EMA-PG: the same run as one process, a
    checkpoint in accelerate's FSDP format, a run stopped after 2 steps and resumed that ends
    bit for bit where the uninterrupted one ends, a final policy that loads as a plain Hugging
    Face model, and a clear error for plain SGD with checkpoints."""
    # AdamW: torch cannot load a full optimizer state into an FSDP2 optimizer that has no
    # state tensors (plain SGD), "Expected device to be set" in set_optimizer_state_dict; the
    # trainer refuses SGD with checkpoints under FSDP2
    spec = {**RUNS["ema"], **SCHEDULE, "model": "llama", "batch_size": 4, "checkpoint_every": 2}
    full, split = tmp_path / "full-2", tmp_path / "split-2"
    runs = [
        {**spec, "output_dir": str(full)},
        {**spec, "output_dir": str(split), "stop_after": 2},
        {**spec, "output_dir": str(split), "resume": True},
        {**spec, **RUNS["md"], "output_dir": str(tmp_path / "sgd"),
         "expect_error": "sgd under FSDP2 cannot resume"},
    ]  # fmt: skip
    _launch(tmp_path, runs, fsdp2=True)
    assert not (tmp_path / "sgd").exists()  # refused before anything was written
    ckpt = full / "checkpoint"
    assert (ckpt / "pytorch_model_fsdp.bin").is_file()  # accelerate's FSDP checkpoint
    assert (ckpt / "nlhf_state_rank0.pt").is_file() and (ckpt / "nlhf_state_rank1.pt").is_file()
    one = tmp_path / "one"
    _one_process({**spec, "output_dir": str(one)})
    gaps = _check_parity(full, one, spec)
    print("fsdp2", json.dumps(gaps))
    # resumed == uninterrupted, bit for bit
    for name in ("model.safetensors", "ema/model.safetensors"):
        assert _max_diff(split / name, full / name) == 0.0, name
    assert [r["step"] for r in _curves(split)] == [1, 2, 3, 4]
    # the saved policy is whole: it loads and scores like the weights it was saved from
    loaded = AutoModelForCausalLM.from_pretrained(full)
    state = load_file(full / "model.safetensors")
    assert sum(v.numel() for v in state.values()) >= sum(p.numel() for p in loaded.parameters())
    ids = torch.tensor([[5, 6, 7, 8]])
    logits = loaded(input_ids=ids).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == len(scale_worker.tokenizer())
