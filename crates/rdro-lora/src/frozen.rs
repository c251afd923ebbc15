//! A linear layer whose weight never trains, held dense or quantized.
//!
//! The forward runs without a graph and the backward is attached by hand: it returns only the
//! input gradient `grad_y · W`, so no weight gradient is ever computed or stored.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Tensor};

use crate::{attach_backward, QuantType};

/// Storage of a frozen weight `[out_features, in_features]`.
#[derive(Debug, Clone)]
pub enum FrozenWeight {
    /// Dense, in its storage dtype (bf16, f16 or f32); widened to the compute dtype per use.
    Dense(Tensor),
    /// GGML blocks; dequantized just in time for each use (the fastest path at training sizes,
    /// see the `bench` xtask), never kept dequantized.
    Quantized(Arc<QTensor>),
}

impl FrozenWeight {
    /// The weight as a dense tensor in `dtype`, on `device`.
    pub fn materialize(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        match self {
            FrozenWeight::Dense(w) => w.to_device(device)?.to_dtype(dtype),
            FrozenWeight::Quantized(q) => q.dequantize(device)?.to_dtype(dtype),
        }
    }

    /// `(out_features, in_features)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        match self {
            FrozenWeight::Dense(w) => w.dims2(),
            FrozenWeight::Quantized(q) => q.shape().dims2(),
        }
    }

    /// Bytes the weight occupies in memory.
    pub fn size_in_bytes(&self) -> usize {
        match self {
            FrozenWeight::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            FrozenWeight::Quantized(q) => q.storage_size_in_bytes(),
        }
    }

    /// How the weight is held.
    pub fn quant_type(&self) -> QuantType {
        match self {
            FrozenWeight::Dense(_) => QuantType::None,
            FrozenWeight::Quantized(q) => QuantType::Ggml(q.dtype()),
        }
    }
}

/// A frozen `y = x Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct FrozenLinear {
    weight: FrozenWeight,
    bias: Option<Tensor>,
}

impl FrozenLinear {
    /// Wraps a weight `[out, in]` and an optional bias `[out]`.
    pub fn new(weight: FrozenWeight, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// Builds a frozen layer from a dense weight, quantizing it to `quant` (with the per-width
    /// fallback of [`QuantType::for_width`]). Returns the layer and the type actually used.
    pub fn from_dense(
        weight: Tensor,
        bias: Option<Tensor>,
        quant: QuantType,
    ) -> Result<(Self, QuantType)> {
        let (_, in_features) = weight.dims2()?;
        let used = quant.for_width(in_features);
        let stored = match used {
            QuantType::None => FrozenWeight::Dense(weight),
            QuantType::Ggml(t) => FrozenWeight::Quantized(Arc::new(quantize(&weight, t)?)),
        };
        Ok((Self::new(stored, bias), used))
    }

    /// The weight storage.
    pub fn weight(&self) -> &FrozenWeight {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `(out_features, in_features)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        self.weight.dims()
    }

    /// `x [.., in] -> [.., out]`, with an input-only backward.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out_features, in_features) = self.dims()?;
        let dims = x.dims().to_vec();
        let rows = x.elem_count() / in_features;
        let x2 = x.reshape((rows, in_features))?;
        let w = self.weight.materialize(x.dtype(), x.device())?;
        let mut y = x2.detach().matmul(&w.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.to_dtype(x.dtype())?)?;
        }
        let weight = self.weight.clone();
        let y = attach_backward("frozen-linear", &x2, y, move |x, _, g| {
            // Materialize again rather than keep a dense copy alive between forward and backward.
            let w = weight.materialize(g.dtype(), g.device())?;
            g.matmul(&w)?.to_dtype(x.dtype())
        })?;
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = out_features;
        }
        y.reshape(out_dims)
    }
}

/// Quantizes a dense `[out, in]` weight on its device (via f32, which candle's quantizer needs).
pub fn quantize(weight: &Tensor, dtype: GgmlDType) -> Result<QTensor> {
    QTensor::quantize(&weight.to_dtype(DType::F32)?, dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn rand(shape: (usize, usize), seed: u64) -> Result<Tensor> {
        // Deterministic pseudo-random values in [-1, 1).
        let n = shape.0 * shape.1;
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    #[test]
    fn dense_forward_and_input_gradient_match_plain_matmul() -> Result<()> {
        let w = rand((6, 4), 1)?;
        let b = Tensor::new(&[0.5f32, -1.0, 0.0, 1.0, 2.0, 3.0], &Device::Cpu)?;
        let layer = FrozenLinear::new(FrozenWeight::Dense(w.clone()), Some(b.clone()));
        let x = Var::from_tensor(&rand((3, 4), 2)?)?;
        let y = layer.forward(x.as_tensor())?;
        let expected = x.as_tensor().matmul(&w.t()?)?.broadcast_add(&b)?;
        let diff = (y.clone() - &expected)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-6);
        let g = y.sqr()?.sum_all()?.backward()?;
        let gx = g.get(x.as_tensor()).expect("input gradient");
        let ge = expected.sqr()?.sum_all()?.backward()?;
        let gxe = ge.get(x.as_tensor()).expect("input gradient");
        let diff = (gx - gxe)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5);
        Ok(())
    }

    #[test]
    fn quantized_input_gradient_equals_dense_with_dequantized_weight() -> Result<()> {
        for t in [
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let w = rand((8, 256), 3)?;
            let (layer, used) = FrozenLinear::from_dense(w, None, QuantType::Ggml(t))?;
            assert_eq!(used, QuantType::Ggml(t));
            let deq = layer.weight().materialize(DType::F32, &Device::Cpu)?;
            let x = Var::from_tensor(&rand((2, 5 * 256), 4)?.reshape((2, 5, 256))?)?;
            let y = layer.forward(x.as_tensor())?;
            assert_eq!(y.dims(), &[2, 5, 8]);
            let target = rand((10, 8), 5)?.reshape((2, 5, 8))?;
            let grads = (y * &target)?.sum_all()?.backward()?;
            let gx = grads.get(x.as_tensor()).expect("input gradient");
            let expected = target
                .reshape((10, 8))?
                .matmul(&deq)?
                .reshape((2, 5, 256))?;
            let diff = (gx - expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{t:?}: {diff}");
        }
        Ok(())
    }
}
