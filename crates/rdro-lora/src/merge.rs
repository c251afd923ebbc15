//! Folding a LoRA update into its base weight: `W' = W + s · B · A`.
//!
//! The sum is formed in f32 whatever the storage dtype of `W`, then cast once to the target dtype,
//! so that a bf16 or f16 merge rounds only once.

use candle_core::{DType, Tensor};

use crate::{LoraConfig, LoraError, Result};

/// The scale PEFT applies to `B · A` for an adapter of rank `r`: `alpha / r`, or `alpha / sqrt(r)`
/// with rsLoRA.
pub fn scaling(config: &LoraConfig, r: usize) -> f64 {
    if config.use_rslora {
        config.alpha / (r as f64).sqrt()
    } else {
        config.alpha / r as f64
    }
}

/// Checks that `A [r, in]` and `B [out, r]` fit a weight of shape `weight_dims` (`[out, in]`).
/// The error message names `module` and every shape involved.
pub fn check_fits(
    module: &str,
    weight_dims: &[usize],
    a_dims: &[usize],
    b_dims: &[usize],
) -> std::result::Result<(), String> {
    let fits = match (weight_dims, a_dims, b_dims) {
        ([out_w, in_w], [r_a, in_a], [out_b, r_b]) => in_w == in_a && out_w == out_b && r_a == r_b,
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "{module}: lora_A {a_dims:?} and lora_B {b_dims:?} do not fit the base weight {weight_dims:?} \
             (expected lora_A [r, in] and lora_B [out, r] for a weight [out, in])"
        ))
    }
}

/// The update `s · B · A` as an f32 `[out, in]` tensor.
pub fn delta_weight(a: &Tensor, b: &Tensor, scaling: f64) -> Result<Tensor> {
    let a = a.to_dtype(DType::F32)?;
    let b = b.to_dtype(DType::F32)?;
    Ok((b.matmul(&a)? * scaling)?)
}

/// `W + s · B · A`, computed in f32 and returned in `dtype`.
pub fn merge_weight(
    weight: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scaling: f64,
    dtype: DType,
) -> Result<Tensor> {
    check_fits("weight", weight.dims(), a.dims(), b.dims()).map_err(|message| {
        LoraError::InvalidConfig {
            key: "adapter".into(),
            message,
        }
    })?;
    let merged = (weight.to_dtype(DType::F32)? + delta_weight(a, b, scaling)?)?;
    Ok(merged.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn merge_matches_hand_computation() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &dev)?; // [2, 3]
        let a = Tensor::new(&[[1f32, 0.0, -1.0]], &dev)?; // [1, 3]
        let b = Tensor::new(&[[2f32], [0.5]], &dev)?; // [2, 1]
        let merged = merge_weight(&w, &a, &b, 3.0, DType::F32)?.to_vec2::<f32>()?;
        assert_eq!(merged, vec![vec![7.0, 2.0, -3.0], vec![5.5, 5.0, 4.5]]);
        let bf = merge_weight(&w.to_dtype(DType::BF16)?, &a, &b, 3.0, DType::BF16)?;
        assert_eq!(bf.dtype(), DType::BF16);
        Ok(())
    }

    #[test]
    fn shapes_are_checked() {
        assert!(check_fits("m", &[4, 8], &[2, 8], &[4, 2]).is_ok());
        let e = check_fits("model.layers.0.mlp.up_proj", &[4, 8], &[2, 6], &[4, 2]).unwrap_err();
        assert!(
            e.contains("up_proj") && e.contains("[2, 6]") && e.contains("[4, 8]"),
            "{e}"
        );
        assert!(check_fits("m", &[4, 8], &[2, 8], &[4, 3]).is_err());
    }

    #[test]
    fn rslora_scaling() {
        let c = LoraConfig {
            r: 4,
            alpha: 8.0,
            use_rslora: true,
            ..Default::default()
        };
        assert_eq!(scaling(&c, 4), 4.0);
        let c = LoraConfig {
            use_rslora: false,
            ..c
        };
        assert_eq!(scaling(&c, 4), 2.0);
    }
}
