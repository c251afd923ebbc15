//! candle's fast kernels (rms-norm, rope, softmax) with the backward they lack.
//!
//! Each op runs the fused kernel on detached inputs and attaches a backward written in tensor ops
//! (so it works on every device). Frozen parameters (the norm weight, cos/sin) get no gradient.

use candle_core::{Result, Tensor, D};
use rdro_lora::attach_backward;

/// `x / rms(x) * w` over the last dimension.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let w = weight.to_dtype(x.dtype())?;
    let y = candle_nn::ops::rms_norm(&x.detach().contiguous()?, &w, eps as f32)?;
    attach_backward("rms-norm", x, y, move |x, _, g| {
        // y = w ⊙ x · r with r = (mean(x²) + eps)^-½:
        // dx = r (w ⊙ g) − x r³ mean(x ⊙ w ⊙ g).
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
        let wg = g.broadcast_mul(&w)?;
        let proj = (x * &wg)?.mean_keepdim(D::Minus1)?;
        let r3 = r.powf(3.0)?;
        wg.broadcast_mul(&r)? - x.broadcast_mul(&(proj * r3)?)?
    })
}

/// Rotary embedding in the Hugging Face (half-split) layout on `x [b, h, t, d]`, with
/// `cos`, `sin` of shape `[t, d/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let y = candle_nn::rotary_emb::rope(&x.detach().contiguous()?, cos, sin)?;
    let (cos, sin) = (cos.clone(), sin.clone());
    attach_backward("rope", x, y, move |_, _, g| {
        // A rotation's adjoint is the rotation by the opposite angle.
        candle_nn::rotary_emb::rope(&g.contiguous()?, &cos, &sin.neg()?)
    })
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let y = candle_nn::ops::softmax_last_dim(&x.detach().contiguous()?)?;
    attach_backward("softmax", x, y, |_, y, g| {
        // dx = y ⊙ (g − Σ g ⊙ y)
        let dot = (g * y)?.sum_keepdim(D::Minus1)?;
        y * g.broadcast_sub(&dot)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn vals(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761u32) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// Compares the gradient of `sum(op(x) * t)` for the fast op and a slow reference.
    fn check(
        shape: &[usize],
        fast: impl Fn(&Tensor) -> Result<Tensor>,
        slow: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        let n: usize = shape.iter().product();
        let x = Var::from_tensor(&Tensor::from_vec(vals(n, 1), shape, &Device::Cpu)?)?;
        let t = Tensor::from_vec(vals(n, 7), shape, &Device::Cpu)?;
        let yf = fast(x.as_tensor())?;
        let ys = slow(x.as_tensor())?;
        let fwd = (&yf - &ys)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(fwd < 1e-5, "forward differs by {fwd}");
        let gf = (yf * &t)?.sum_all()?.backward()?;
        let gs = (ys * &t)?.sum_all()?.backward()?;
        let a = gf.get(x.as_tensor()).expect("fast gradient");
        let b = gs.get(x.as_tensor()).expect("slow gradient");
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "gradients differ by {diff}");
        Ok(())
    }

    #[test]
    fn rms_norm_gradient() -> Result<()> {
        let w = Tensor::from_vec(vals(8, 3), 8, &Device::Cpu)?;
        check(
            &[3, 5, 8],
            |x| rms_norm(x, &w, 1e-6),
            |x| candle_nn::ops::rms_norm_slow(x, &w, 1e-6),
        )
    }

    #[test]
    fn rope_gradient() -> Result<()> {
        let cos = Tensor::from_vec(vals(6 * 4, 5), (6, 4), &Device::Cpu)?;
        let sin = Tensor::from_vec(vals(6 * 4, 9), (6, 4), &Device::Cpu)?;
        check(
            &[2, 3, 6, 8],
            |x| rope(x, &cos, &sin),
            |x| candle_nn::rotary_emb::rope_slow(x, &cos, &sin),
        )
    }

    #[test]
    fn softmax_gradient() -> Result<()> {
        check(&[2, 3, 7], softmax_last_dim, |x| {
            candle_nn::ops::softmax(x, D::Minus1)
        })
    }
}
