#!/usr/bin/env python3
"""PyTorch + PEFT yardstick for one LoRA training step on the CPU.

Builds a Qwen2.5-0.5B-shaped model (hidden 896, 24 layers, 14 heads / 2 kv heads,
intermediate 4864, vocabulary 151936, tied embeddings, rope_theta 1e6) with random
float32 weights (no download), attaches LoRA r 16 / alpha 32 to all linear
modules with PEFT, and times one forward + backward of the summed completion
log-prob of a single sequence (first quarter prompt, rest completion). No
optimizer step. Prints one JSON line.

Usage (from the repository root):

    python3 xtask/bench/pytorch_lora_step.py                      # seq 512, 3 steps
    python3 xtask/bench/pytorch_lora_step.py --checkpointing
    python3 xtask/bench/pytorch_lora_step.py --layers 2 --steps 1  # quick try

Requires torch, transformers and peft (measured with torch 2.15, transformers 5.24,
peft 0.21). Run each setting in its own process: peak RSS is per process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
import warnings

warnings.filterwarnings("ignore", category=FutureWarning)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", type=int, default=512, help="sequence length (default 512)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (default 3)")
    ap.add_argument("--layers", type=int, default=24, help="number of decoder layers (default 24)")
    ap.add_argument("--checkpointing", action="store_true", help="enable gradient checkpointing")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def build_model(layers: int, attn: str):
    config = Qwen2Config(
        hidden_size=896,
        num_hidden_layers=layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        use_sliding_window=False,
        attention_dropout=0.0,
        hidden_act="silu",
    )
    config._attn_implementation = attn
    return Qwen2ForCausalLM(config).to(torch.float32)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    transformers.utils.logging.set_verbosity_error()

    model = build_model(args.layers, args.attn)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=TARGET_MODULES,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    # Train mode so that gradient checkpointing is active; there is no dropout anywhere.
    model.train()

    seq = args.seq
    prompt = seq // 4
    gen = torch.Generator().manual_seed(args.seed + 1)
    input_ids = torch.randint(1, model.config.vocab_size, (1, seq), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    # Token j (j >= prompt) is predicted by the logits at position j - 1.
    targets = input_ids[:, prompt:]  # [1, seq - prompt]

    def step():
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        pred = logits[:, prompt - 1: seq - 1, :].float()
        logp = torch.log_softmax(pred, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        loss = -logp.sum()
        loss.backward()
        return loss.item()

    step()  # warm-up
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)

    med = statistics.median(times)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print(json.dumps({
        "impl": "pytorch+peft",
        "checkpointing": bool(args.checkpointing),
        "seq": seq,
        "layers": args.layers,
        "step_s_median": round(med, 4),
        "tokens_per_s": round(seq / med, 3),
        "peak_rss_mb": round(peak_rss_mb, 1),
    }))


if __name__ == "__main__":
    main()
