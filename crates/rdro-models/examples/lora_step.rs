//! One LoRA training step (forward + backward, adapter on) on a Qwen2.5-0.5B-shaped model with
//! random weights: the Rust side of `cargo xtask bench`, which runs it next to the PyTorch + PEFT
//! yardstick (`xtask/bench/pytorch_lora_step.py`).
//!
//! `cargo run --release -p rdro-models --example lora_step -- [--quant q8_0] [--checkpointing]
//! [--seq 512] [--steps 3] [--layers 24]` prints one JSON line; `--kernels` instead times the
//! two ways of running a quantized frozen linear at training sizes, and `--gemm` the f32 GEMM speed.
//! `--system-malloc` leaves the allocator's defaults alone (see `rdro_models::memory`).

use std::path::Path;
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Device, Module, Tensor};
use rdro_lora::{ForwardMode, FrozenLinear, LoraConfig, QuantType};
use rdro_models::config::{Architecture, ModelConfig};
use rdro_models::load::{build, RawWeight, WeightReader};
use rdro_models::{Batch, LoadOptions};

/// Deterministic random weights for any requested name.
struct RandomWeights {
    state: u64,
    config: ModelConfig,
}

impl RandomWeights {
    fn tensor(&mut self, shape: &[usize], scale: f32) -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        let mut s = self.state;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect();
        self.state = s;
        Tensor::from_vec(v, shape, &Device::Cpu)
    }
}

impl WeightReader for RandomWeights {
    fn path(&self) -> &Path {
        Path::new("<random>")
    }

    fn get(&mut self, name: &str, _: &Device) -> rdro_models::Result<Option<RawWeight>> {
        let c = &self.config;
        let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (q, kv) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let shape: Vec<usize> = if name.ends_with("norm.weight") {
            return Ok(Some(RawWeight::Dense(Tensor::ones(
                h,
                DType::F32,
                &Device::Cpu,
            )?)));
        } else if name == "model.embed_tokens.weight" {
            vec![v, h]
        } else if name == "lm_head.weight" {
            return Ok(None);
        } else if name.ends_with("q_proj.weight") {
            vec![q, h]
        } else if name.ends_with("k_proj.weight") || name.ends_with("v_proj.weight") {
            vec![kv, h]
        } else if name.ends_with("q_proj.bias") {
            vec![q]
        } else if name.ends_with("k_proj.bias") || name.ends_with("v_proj.bias") {
            vec![kv]
        } else if name.ends_with("o_proj.weight") {
            vec![h, q]
        } else if name.ends_with("gate_proj.weight") || name.ends_with("up_proj.weight") {
            vec![i, h]
        } else if name.ends_with("down_proj.weight") {
            vec![h, i]
        } else {
            return Ok(None);
        };
        let fan_in = *shape.last().unwrap_or(&1) as f32;
        Ok(Some(RawWeight::Dense(
            self.tensor(&shape, 1.0 / fan_in.sqrt())?,
        )))
    }
}

fn qwen_05b(layers: usize) -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Qwen2,
        hidden_size: 896,
        intermediate_size: 4864,
        num_hidden_layers: layers,
        num_attention_heads: 14,
        num_key_value_heads: 2,
        head_dim: 64,
        vocab_size: 151_936,
        rms_norm_eps: 1e-6,
        rope_theta: 1e6,
        rope_scaling: None,
        rope_freq_factors: None,
        tie_word_embeddings: true,
        attention_bias: true,
        max_position_embeddings: 32768,
    }
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of 5 runs of `f`, after one warm-up run.
fn time(f: &dyn Fn() -> candle_core::Result<Tensor>) -> candle_core::Result<f64> {
    f()?;
    let mut v = Vec::new();
    for _ in 0..5 {
        let s = Instant::now();
        f()?;
        v.push(s.elapsed().as_secs_f64());
    }
    Ok(median(v))
}

/// Times `x [512, 896] · Wᵀ [896, 4864]` per quantized type: dequantize + f32 GEMM against
/// candle's quantized matmul kernel.
fn kernels() -> Result<(), Box<dyn std::error::Error>> {
    let mut rw = RandomWeights {
        state: 7,
        config: qwen_05b(1),
    };
    let w = rw.tensor(&[4864, 896], 0.03)?;
    let x = rw.tensor(&[512, 896], 1.0)?;
    for t in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q5_0] {
        let (layer, _) = FrozenLinear::from_dense(w.clone(), None, QuantType::Ggml(t))?;
        let rdro_lora::FrozenWeight::Quantized(q) = layer.weight().clone() else {
            continue;
        };
        let qmm = QMatMul::from_arc(q)?;
        let deq = time(&|| layer.forward(&x))?;
        let ker = time(&|| qmm.forward(&x))?;
        let flops = 2.0 * 512.0 * 896.0 * 4864.0;
        println!(
            "{{\"kernel\":\"{t:?}\",\"dequantize_gemm_ms\":{:.1},\"qmatmul_ms\":{:.1},\"dequantize_gemm_gflops\":{:.1},\"qmatmul_gflops\":{:.1}}}",
            deq * 1e3, ker * 1e3, flops / deq / 1e9, flops / ker / 1e9
        );
    }
    Ok(())
}

/// Times the f32 GEMMs of a frozen linear at training sizes (`x [512, 896] · Wᵀ`, W `[4864, 896]`,
/// and the input gradient `g [512, 4864] · W`), the yardstick for how close a step gets to the
/// machine's GEMM speed.
fn gemms() -> Result<(), Box<dyn std::error::Error>> {
    let mut rw = RandomWeights {
        state: 7,
        config: qwen_05b(1),
    };
    let w = rw.tensor(&[4864, 896], 0.03)?;
    let x = rw.tensor(&[512, 896], 1.0)?;
    let g = rw.tensor(&[512, 4864], 1.0)?;
    let gflop = 2.0 * 512.0 * 896.0 * 4864.0 / 1e9;
    let forward = time(&|| x.matmul(&w.t()?))?;
    let backward = time(&|| g.matmul(&w))?;
    println!(
        "{{\"gemm\":\"x·Wᵀ\",\"gflops\":{:.1}}}\n{{\"gemm\":\"g·W\",\"gflops\":{:.1}}}",
        gflop / forward,
        gflop / backward
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--gemm") {
        return gemms();
    }
    if args.iter().any(|a| a == "--kernels") {
        return kernels();
    }
    let seq: usize = arg(&args, "--seq", 512);
    let steps: usize = arg(&args, "--steps", 3);
    let layers: usize = arg(&args, "--layers", 24);
    let quant: QuantType = arg(&args, "--quant", "none".to_string()).parse()?;
    let checkpointing = args.iter().any(|a| a == "--checkpointing");
    // As the `rdro` binary does; `--system-malloc` keeps glibc's defaults, for comparison.
    let retained =
        !args.iter().any(|a| a == "--system-malloc") && rdro_models::memory::retain_freed_memory();

    let config = qwen_05b(layers);
    let mut weights = RandomWeights {
        state: 0x9E37_79B9_7F4A_7C15,
        config: config.clone(),
    };
    let options = LoadOptions {
        quantization: quant,
        ..Default::default()
    };
    let mut model = build(config.clone(), &mut weights, &options)?.model;
    model.attach_adapters(
        &LoraConfig {
            r: 16,
            alpha: 32.0,
            ..Default::default()
        },
        0,
    )?;

    let prompt_len = seq / 4;
    let ids: Vec<u32> = (0..seq as u32)
        .map(|i| (i * 7919 + 13) % config.vocab_size as u32)
        .collect();
    let batch = Batch::from_prompt_completion(&[(&ids[..prompt_len], &ids[prompt_len..])], 0)?;
    let mut times = Vec::new();
    for step in 0..=steps {
        let start = Instant::now();
        let (_, grads) =
            model.value_and_grad(&batch, ForwardMode::POLICY_EVAL, checkpointing, |lp| {
                Ok((lp.per_sequence()?.sum_all()?, ()))
            })?;
        drop(grads);
        if step > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let t = median(times);
    println!(
        "{{\"impl\":\"rdro\",\"quant\":\"{quant}\",\"checkpointing\":{checkpointing},\"seq\":{seq},\"layers\":{layers},\"retain_freed_memory\":{retained},\"step_s_median\":{t:.4},\"tokens_per_s\":{:.3},\"peak_rss_mb\":{:.1}}}",
        seq as f64 / t,
        peak_rss_mb()
    );
    Ok(())
}
