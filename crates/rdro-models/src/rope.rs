//! Rotary position embeddings, with Llama 3.1's frequency-dependent scaling.

use candle_core::{DType, Device, Result, Tensor};

use crate::ModelConfig;

/// Inverse frequencies `1 / theta^(2i/d)` for `i < d/2`, scaled as the config says.
pub fn inverse_frequencies(config: &ModelConfig) -> Vec<f64> {
    let d = config.head_dim;
    let base: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / d as f64))
        .collect();
    if let Some(factors) = &config.rope_freq_factors {
        // llama.cpp's GGUF form: each frequency divided by a stored factor.
        return base.iter().zip(factors).map(|(f, k)| f / k).collect();
    }
    let Some(s) = config.rope_scaling else {
        return base;
    };
    // transformers' `_compute_llama3_parameters`.
    let low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    let high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    base.into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < high_freq_wavelen {
                f
            } else if wavelen > low_freq_wavelen {
                f / s.factor
            } else {
                let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * f / s.factor + smooth * f
            }
        })
        .collect()
}

/// `(cos, sin)`, each `[seq_len, head_dim / 2]` in `dtype`, for positions `0..seq_len`.
pub fn cos_sin(
    config: &ModelConfig,
    seq_len: usize,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let inv = inverse_frequencies(config);
    let half = inv.len();
    // Angles in f32 as transformers computes them (f32 inverse frequencies times f32 positions).
    let inv32: Vec<f32> = inv.iter().map(|&v| v as f32).collect();
    let mut cos = Vec::with_capacity(seq_len * half);
    let mut sin = Vec::with_capacity(seq_len * half);
    for p in 0..seq_len {
        for f in &inv32 {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (seq_len, half), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (seq_len, half), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}
