//! candle's fast kernels (rms-norm, rope, softmax) with the backward they lack, and a fused SwiGLU.
//!
//! Each candle kernel runs on detached inputs and gets a backward written in tensor ops (so it
//! works on every device). Frozen parameters (the norm weight, cos/sin) get no gradient.

use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;
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

/// `silu(gate) * up`, the gate of a SwiGLU MLP.
///
/// On the CPU in f32 it is one fused pass forward and one backward: composed of candle ops, the
/// backward of `silu` alone walks `[tokens, intermediate]`-sized tensors about ten times (measured
/// ~38 ms against ~5 ms fused at 512 x 4864, per layer and step). Elsewhere it is the composition.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let fused = gate.device().is_cpu()
        && gate.dtype() == DType::F32
        && up.dtype() == DType::F32
        && gate.shape() == up.shape();
    if !fused {
        return gate.silu()? * up;
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// Elements per parallel work item of the fused element-wise loops.
const CHUNK: usize = 1 << 14;

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        bail!("swiglu: expected f32 storage")
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => bail!("swiglu: expected a contiguous tensor"),
    }
}

/// `1 / (1 + e^-x)` with [`exp`] below, so that the loops over it vectorize.
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `e^x` in arithmetic the compiler vectorizes (the libm call it replaces does not, and dominated
/// the fused loops): `e^x = 2^n e^r` with `|r| <= ln 2 / 2` and a degree-6 Taylor polynomial for
/// `e^r`. Relative error below 3e-7 over the clamped range; inputs below -87 give ~1e-38 (not 0),
/// above 88 saturate near `f32::MAX` instead of infinity.
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that `n * LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer n and leaves it in the low mantissa bits:
    // the sum's bit pattern is 0x4B40_0000 + n.
    const ROUND: f32 = 12_582_912.0;
    const ROUND_BITS: i32 = 0x4B40_0000;
    // Comparisons rather than f32::max/min, whose NaN rules keep the loop from vectorizing.
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let two_n = (t.to_bits() as i32 - ROUND_BITS + 127) << 23;
    p * f32::from_bits(two_n as u32)
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gate_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (
            contiguous_f32(gate, gate_layout)?,
            contiguous_f32(up, up_layout)?,
        );
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = g * sigmoid(g) * u;
                }
            });
        Ok((CpuStorage::F32(out), gate_layout.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Both input gradients in one pass, stacked as [2, n]: rows are views, not copies.
        let both = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwiGluBackward)?;
        let part = |i| both.narrow(0, i, 1)?.reshape(gate.shape());
        Ok((Some(part(0)?), Some(part(1)?)))
    }
}

/// `(d gate, d up)` of [`SwiGlu`], stacked.
struct SwiGluBackward;

impl CustomOp3 for SwiGluBackward {
    fn name(&self) -> &'static str {
        "swiglu-backward"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gate_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u, dh) = (
            contiguous_f32(gate, gate_layout)?,
            contiguous_f32(up, up_layout)?,
            contiguous_f32(grad, grad_layout)?,
        );
        let n = g.len();
        let mut out = vec![0f32; 2 * n];
        let (dg, du) = out.split_at_mut(n);
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .zip(dh.par_chunks(CHUNK))
            .for_each(|(((dg, du), (g, u)), dh)| {
                for i in 0..g.len() {
                    // silu'(g) = s (1 + g (1 - s)) with s = sigmoid(g).
                    let s = sigmoid(g[i]);
                    dg[i] = dh[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                    du[i] = dh[i] * g[i] * s;
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((2, n))))
    }
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
    fn vectorizable_exp_matches_libm() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (fast, exact) = (exp(x), x.exp());
            worst = worst.max(((fast - exact) / exact).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert!(exp(-1e4) >= 0.0 && exp(-1e4) < 1e-37);
        assert!(exp(1e4).is_finite());
        assert!((sigmoid(-1e4)).abs() < 1e-30 && sigmoid(1e4) == 1.0);
    }

    #[test]
    fn swiglu_gradient() -> Result<()> {
        let up = Var::from_tensor(&Tensor::from_vec(vals(30, 11), (2, 3, 5), &Device::Cpu)?)?;
        let fused_up = |x: &Tensor| swiglu(x, up.as_tensor());
        check(&[2, 3, 5], fused_up, |x| x.silu()? * up.as_tensor())?;
        // The gradient of `up`, too.
        let gate = Tensor::from_vec(vals(30, 13), (2, 3, 5), &Device::Cpu)?;
        check(&[2, 3, 5], |x| swiglu(&gate, x), |x| gate.silu()? * x)
    }

    #[test]
    fn softmax_gradient() -> Result<()> {
        check(&[2, 3, 7], softmax_last_dim, |x| {
            candle_nn::ops::softmax(x, D::Minus1)
        })
    }
}
