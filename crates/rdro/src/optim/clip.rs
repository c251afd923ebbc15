//! Gradient clipping by global L2 norm with PyTorch's `clip_grad_norm_` semantics: the norm of the
//! per-tensor norms is computed in `f32`; when `max_norm / (norm + 1e-6) < 1`, every gradient is
//! multiplied by that coefficient. Non-finite gradients are detected and reported, never scaled.

use candle_core::{DType, Result, Tensor};

/// What [`clip_grad_norm`] found and did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipOutcome {
    /// Global L2 norm of the gradients before clipping (computed in `f32`).
    pub norm: f64,
    /// Whether the gradients were scaled down.
    pub clipped: bool,
    /// Whether every gradient element is finite (no NaN, no inf) and the norm did not overflow;
    /// when false nothing was scaled and the step should be skipped.
    pub finite: bool,
}

/// Global L2 norm of a list of gradient tensors: `||(||g_1||, ..., ||g_k||)||`, in `f32` (as
/// `torch.nn.utils.get_total_norm`), returned as `f64`. An empty list has norm 0.
pub fn global_grad_norm(grads: &[Tensor]) -> Result<f64> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    let norms = grads
        .iter()
        .map(|g| g.detach().to_dtype(DType::F32)?.sqr()?.sum_all()?.sqrt())
        .collect::<Result<Vec<_>>>()?;
    let total = Tensor::stack(&norms, 0)?.sqr()?.sum_all()?.sqrt()?;
    Ok(total.to_scalar::<f32>()? as f64)
}

/// Whether every element of every gradient is finite (`0 * x` is NaN exactly for NaN and inf).
pub fn all_finite(grads: &[Tensor]) -> Result<bool> {
    for g in grads {
        let s = (g * 0.0)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        if !s.is_finite() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Computes the global norm and, when `max_norm > 0` and the gradients are finite, scales them in
/// place by `max_norm / (norm + 1e-6)` if that is below 1. `max_norm <= 0` (or not finite) only
/// measures.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<ClipOutcome> {
    let norm = global_grad_norm(grads)?;
    let finite = norm.is_finite() && all_finite(grads)?;
    let mut clipped = false;
    if finite && max_norm > 0.0 && max_norm.is_finite() {
        let coef = max_norm as f32 / (norm as f32 + 1e-6f32);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef as f64)?;
            }
            clipped = true;
        }
    }
    Ok(ClipOutcome {
        norm,
        clipped,
        finite,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn grads() -> Vec<Tensor> {
        let dev = Device::Cpu;
        vec![
            Tensor::new(&[[3.0f32, 0.0], [0.0, 4.0]], &dev).unwrap(), // norm 5
            Tensor::new(&[12.0f32], &dev).unwrap(),                   // norm 12
        ]
    }

    #[test]
    fn norm_of_norms() {
        assert!((global_grad_norm(&grads()).unwrap() - 13.0).abs() < 1e-6);
        assert_eq!(global_grad_norm(&[]).unwrap(), 0.0);
    }

    #[test]
    fn clips_above_max_norm() {
        let mut g = grads();
        let out = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!(out.clipped && out.finite);
        assert!((out.norm - 13.0).abs() < 1e-6);
        let coef = 1.0 / (13.0 + 1e-6);
        let v = g[0].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((v[0] as f64 - 3.0 * coef).abs() < 1e-7);
        assert!((v[3] as f64 - 4.0 * coef).abs() < 1e-7);
        assert!((global_grad_norm(&g).unwrap() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn leaves_small_gradients_alone() {
        let mut g = grads();
        let out = clip_grad_norm(&mut g, 20.0).unwrap();
        assert!(!out.clipped);
        assert_eq!(g[1].to_vec1::<f32>().unwrap(), vec![12.0]);
        let out = clip_grad_norm(&mut g, 0.0).unwrap();
        assert!(!out.clipped && (out.norm - 13.0).abs() < 1e-6);
    }

    #[test]
    fn reports_non_finite_without_scaling() {
        let dev = Device::Cpu;
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut g = vec![
                Tensor::new(&[1.0f32, bad], &dev).unwrap(),
                Tensor::new(&[100.0f32], &dev).unwrap(),
            ];
            let out = clip_grad_norm(&mut g, 1.0).unwrap();
            assert!(!out.finite && !out.clipped, "{bad}");
            assert_eq!(g[1].to_vec1::<f32>().unwrap(), vec![100.0]);
        }
        let ok = [Tensor::new(&[1e30f32, -1e30], &dev).unwrap()];
        assert!(all_finite(&ok).unwrap());
    }
}
