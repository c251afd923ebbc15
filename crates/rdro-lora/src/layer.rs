//! A frozen linear layer with an optional trainable low-rank update: `y = W x + s · B A x`.

use candle_core::{DType, Result, Tensor, Var};
use rand::{Rng, SeedableRng};

use crate::{FrozenLinear, LoraConfig};

/// Per-forward switches shared by every adapted layer of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardMode {
    /// Run the adapters. Off, the model is exactly the frozen base (the reference model).
    pub adapter: bool,
    /// Seed of this forward's dropout masks; `None` disables dropout (evaluation, reference).
    /// A recomputation with the same seed replays the same masks (activation checkpointing).
    pub dropout_seed: Option<u64>,
}

impl ForwardMode {
    /// Adapter on, no dropout.
    pub const POLICY_EVAL: ForwardMode = ForwardMode {
        adapter: true,
        dropout_seed: None,
    };
    /// Adapter off: the reference model.
    pub const REFERENCE: ForwardMode = ForwardMode {
        adapter: false,
        dropout_seed: None,
    };
}

/// The trainable part: `A [r, in]` and `B [out, r]` with their scale.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// Down projection, PEFT's `lora_A.weight` `[r, in_features]`.
    pub a: Var,
    /// Up projection, PEFT's `lora_B.weight` `[out_features, r]`.
    pub b: Var,
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub scaling: f64,
    /// Dropout probability on the adapter input.
    pub dropout: f64,
}

impl LoraAdapter {
    /// PEFT's default initialisation: A Kaiming-uniform (a = sqrt 5, i.e. U(±1/sqrt(in))), B zero,
    /// so that a fresh adapter leaves the model unchanged.
    pub fn init(
        in_features: usize,
        out_features: usize,
        config: &LoraConfig,
        rng: &mut impl Rng,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let bound = 1.0 / (in_features as f32).sqrt();
        let a: Vec<f32> = (0..config.r * in_features)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = Var::from_tensor(&Tensor::from_vec(a, (config.r, in_features), device)?)?;
        let b = Var::zeros((out_features, config.r), DType::F32, device)?;
        Ok(Self {
            a,
            b,
            scaling: config.scaling(),
            dropout: config.dropout,
        })
    }

    /// `s · B A x` for `x [rows, in]`, with the dropout mask of `seed` when given.
    fn delta(&self, x: &Tensor, seed: Option<u64>) -> Result<Tensor> {
        let x = match seed {
            Some(seed) if self.dropout > 0.0 => {
                let keep = 1.0 - self.dropout;
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mask: Vec<f32> = (0..x.elem_count())
                    .map(|_| {
                        if rng.random::<f64>() < keep {
                            (1.0 / keep) as f32
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
                (x * mask)?
            }
            _ => x.clone(),
        };
        let a = self.a.as_tensor().to_dtype(x.dtype())?;
        let b = self.b.as_tensor().to_dtype(x.dtype())?;
        // Scale the rank-r intermediate, not the [rows, out] result: same value, r/out the work.
        (x.matmul(&a.t()?)? * self.scaling)?.matmul(&b.t()?)
    }
}

/// A frozen linear layer, adapted or not.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    /// The frozen base layer.
    pub base: FrozenLinear,
    /// The adapter, when this module is targeted.
    pub adapter: Option<LoraAdapter>,
    /// Distinguishes this layer's dropout stream from every other layer's.
    pub dropout_key: u64,
}

impl LoraLinear {
    /// A layer without adapter.
    pub fn frozen(base: FrozenLinear, dropout_key: u64) -> Self {
        Self {
            base,
            adapter: None,
            dropout_key,
        }
    }

    /// `x [.., in] -> [.., out]`.
    pub fn forward(&self, x: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        let y = self.base.forward(x)?;
        let adapter = match &self.adapter {
            Some(adapter) if mode.adapter => adapter,
            _ => return Ok(y),
        };
        let in_features = x.dim(candle_core::D::Minus1)?;
        let x2 = x.reshape((x.elem_count() / in_features, in_features))?;
        let seed = mode
            .dropout_seed
            .map(|s| splitmix64(s ^ splitmix64(self.dropout_key)));
        let delta = adapter.delta(&x2, seed)?.reshape(y.shape())?;
        y + delta
    }
}

/// A fast, well-mixed 64-bit hash (SplitMix64's finaliser) for deriving per-layer seeds.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FrozenWeight;
    use candle_core::Device;

    fn layer(dropout: f64) -> Result<LoraLinear> {
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 12.0, &dev)?.reshape((3, 4))?;
        let cfg = LoraConfig {
            r: 2,
            alpha: 4.0,
            dropout,
            ..Default::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let adapter = LoraAdapter::init(4, 3, &cfg, &mut rng, &dev)?;
        adapter.b.set(&Tensor::ones((3, 2), DType::F32, &dev)?)?;
        Ok(LoraLinear {
            base: FrozenLinear::new(FrozenWeight::Dense(w), None),
            adapter: Some(adapter),
            dropout_key: 7,
        })
    }

    #[test]
    fn fresh_adapter_is_identity_and_init_is_bounded() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = LoraConfig {
            r: 4,
            ..Default::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let a = LoraAdapter::init(64, 8, &cfg, &mut rng, &dev)?;
        let max = a.a.as_tensor().abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(max <= 1.0 / 8.0 && max > 0.05);
        assert_eq!(a.b.as_tensor().abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn adapter_switch_and_gradients() -> Result<()> {
        let l = layer(0.0)?;
        let x = Tensor::new(&[[1f32, 2.0, 3.0, 4.0]], &Device::Cpu)?;
        let off = l.forward(&x, ForwardMode::REFERENCE)?;
        let base = l.base.forward(&x)?;
        assert_eq!(off.to_vec2::<f32>()?, base.to_vec2::<f32>()?);
        let on = l.forward(&x, ForwardMode::POLICY_EVAL)?;
        let grads = on.sum_all()?.backward()?;
        let ad = l.adapter.as_ref().expect("adapter");
        assert!(grads.get(ad.a.as_tensor()).is_some());
        assert!(grads.get(ad.b.as_tensor()).is_some());
        let off_grads = off.sum_all()?.backward();
        // The reference forward builds no graph at all.
        assert!(off_grads
            .map(|g| g.get(ad.a.as_tensor()).is_none())
            .unwrap_or(true));
        Ok(())
    }

    #[test]
    fn dropout_replays_with_the_same_seed() -> Result<()> {
        let l = layer(0.5)?;
        let x = Tensor::ones((8, 4), DType::F32, &Device::Cpu)?;
        let mode = |s| ForwardMode {
            adapter: true,
            dropout_seed: Some(s),
        };
        let a = l.forward(&x, mode(3))?.to_vec2::<f32>()?;
        let b = l.forward(&x, mode(3))?.to_vec2::<f32>()?;
        let c = l.forward(&x, mode(4))?.to_vec2::<f32>()?;
        assert_eq!(a, b);
        assert_ne!(a, c);
        Ok(())
    }
}
