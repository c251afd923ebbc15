//! AdamW with decoupled weight decay, following `torch.optim.AdamW` step for step, with a moment
//! state that is saved to and restored from a safetensors file (bit-identical resume).
//!
//! One step with learning rate `lr`, for every parameter `p` with gradient `g`:
//! ```text
//! t  <- t + 1
//! p  <- p * (1 - lr * weight_decay)
//! m  <- m + (1 - beta1) (g - m)                 (torch's lerp)
//! v  <- v * beta2 + (1 - beta2) g g
//! p  <- p - (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//! ```
//! The moments are kept in `f32` whatever the parameter dtype; the update is computed in `f32` and
//! written into the `Var` in place. The order of operations and roundings follows torch's CPU
//! kernels (the moment updates round their multiply-add once, as torch's fused `lerp_`/`addcmul_`
//! do); against PyTorch 2.x on CPU the parameters agree bit for bit except for the occasional
//! last-place difference of torch's vectorised `sqrt`.

use super::OptimError;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Format tag written to the metadata of optimizer state files.
pub const ADAMW_STATE_FORMAT: &str = "rdro-adamw-v1";

/// AdamW hyper-parameters (defaults: beta1 0.9, beta2 0.999, eps 1e-8, weight decay 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Decay rate of the first moment.
    pub beta1: f64,
    /// Decay rate of the second moment.
    pub beta2: f64,
    /// Term added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay coefficient (`p <- p (1 - lr wd)`).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl AdamWConfig {
    /// Checks the ranges: betas in `[0, 1)`, eps and weight decay finite and `>= 0`.
    pub fn validate(&self) -> Result<(), OptimError> {
        let check = |key: &'static str, ok: bool, v: f64, expected: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(OptimError::InvalidConfig {
                    key,
                    expected,
                    got: v.to_string(),
                })
            }
        };
        check(
            "beta1",
            (0.0..1.0).contains(&self.beta1),
            self.beta1,
            "a number in [0, 1)",
        )?;
        check(
            "beta2",
            (0.0..1.0).contains(&self.beta2),
            self.beta2,
            "a number in [0, 1)",
        )?;
        check(
            "eps",
            self.eps >= 0.0 && self.eps.is_finite(),
            self.eps,
            "a finite number >= 0",
        )?;
        check(
            "train.weight_decay",
            self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
            self.weight_decay,
            "a finite number >= 0",
        )
    }
}

/// `a + x * s` for f32 tensors `a`, `x` and an f32-representable scalar `s`, rounded once like the
/// fused multiply-add in torch's vectorised CPU `lerp_` kernel: the product of two f32 values is
/// exact in f64, so the sum is formed in f64 and rounded to f32. Devices without f64 (Metal) use
/// plain f32 arithmetic.
fn fused_add_scaled(a: &Tensor, x: &Tensor, s: f64) -> candle_core::Result<Tensor> {
    if a.device().is_metal() {
        return a + (x * s)?;
    }
    (a.to_dtype(DType::F64)? + (x.to_dtype(DType::F64)? * s)?)?.to_dtype(DType::F32)
}

/// `a + x * y` for f32 tensors, rounded once (as torch's vectorised CPU `addcmul_`); see
/// [`fused_add_scaled`].
fn fused_add_mul(a: &Tensor, x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    if a.device().is_metal() {
        return a + (x * y)?;
    }
    let f = |t: &Tensor| t.to_dtype(DType::F64);
    (f(a)? + (f(x)? * f(y)?)?)?.to_dtype(DType::F32)
}

#[derive(Debug)]
struct Param {
    name: String,
    var: Var,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW over a list of named `Var`s.
#[derive(Debug)]
pub struct AdamW {
    params: Vec<Param>,
    config: AdamWConfig,
    step: u64,
}

impl AdamW {
    /// Creates the optimizer with zero moments and step count 0. Names must be unique.
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self, OptimError> {
        config.validate()?;
        let mut seen = HashSet::new();
        let params = params
            .into_iter()
            .map(|(name, var)| {
                if !seen.insert(name.clone()) {
                    return Err(OptimError::DuplicateName(name));
                }
                let zeros = Tensor::zeros(var.shape(), DType::F32, var.device())?;
                Ok(Param {
                    name,
                    var,
                    exp_avg: zeros.clone(),
                    exp_avg_sq: zeros,
                })
            })
            .collect::<Result<Vec<_>, OptimError>>()?;
        Ok(Self {
            params,
            config,
            step: 0,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Number of steps taken so far (the `t` of the bias correction).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Number of parameters (tensors).
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Whether the optimizer holds no parameter.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// The parameters, in order, with their names.
    pub fn params(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params.iter().map(|p| (p.name.as_str(), &p.var))
    }

    /// The `(exp_avg, exp_avg_sq)` moments of the named parameter (always `f32`).
    pub fn moments(&self, name: &str) -> Option<(&Tensor, &Tensor)> {
        self.params
            .iter()
            .find(|p| p.name == name)
            .map(|p| (&p.exp_avg, &p.exp_avg_sq))
    }

    /// The gradients of all parameters from a `GradStore`, in parameter order (detached). Errors
    /// naming the first parameter that has no gradient.
    pub fn grads_from_store(&self, store: &GradStore) -> Result<Vec<Tensor>, OptimError> {
        self.params
            .iter()
            .map(|p| {
                store
                    .get(p.var.as_tensor())
                    .map(|g| g.detach())
                    .ok_or_else(|| OptimError::MissingGradient(p.name.clone()))
            })
            .collect()
    }

    /// One AdamW step with gradients given by parameter name (every parameter needs one).
    pub fn step_named(
        &mut self,
        grads: &HashMap<String, Tensor>,
        lr: f64,
    ) -> Result<(), OptimError> {
        let ordered = self
            .params
            .iter()
            .map(|p| {
                grads
                    .get(&p.name)
                    .cloned()
                    .ok_or_else(|| OptimError::MissingGradient(p.name.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.step(&ordered, lr)
    }

    /// One AdamW step with one gradient per parameter, in parameter order.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<(), OptimError> {
        if grads.len() != self.params.len() {
            return Err(OptimError::GradientCount {
                expected: self.params.len(),
                got: grads.len(),
            });
        }
        if !(lr >= 0.0 && lr.is_finite()) {
            return Err(OptimError::InvalidConfig {
                key: "lr",
                expected: "a finite number >= 0",
                got: lr.to_string(),
            });
        }
        for (p, g) in self.params.iter().zip(grads) {
            if g.dims() != p.var.dims() {
                return Err(OptimError::ShapeMismatch {
                    name: p.name.clone(),
                    expected: p.var.dims().to_vec(),
                    got: g.dims().to_vec(),
                });
            }
        }
        let c = self.config;
        let t = self.step + 1;
        let bias_correction1 = 1.0 - c.beta1.powf(t as f64);
        let bias_correction2 = 1.0 - c.beta2.powf(t as f64);
        let step_size = lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.powf(0.5);
        for (p, g) in self.params.iter_mut().zip(grads) {
            let g = g.detach().to_dtype(DType::F32)?;
            let mut w = p.var.as_tensor().detach().to_dtype(DType::F32)?;
            if c.weight_decay != 0.0 {
                w = (w * (1.0 - lr * c.weight_decay))?;
            }
            // m.lerp_(g, 1 - beta1): m + w (g - m) with one rounding of the multiply-add
            let lerp_weight = (1.0 - c.beta1) as f32 as f64;
            let m = fused_add_scaled(&p.exp_avg, &(&g - &p.exp_avg)?, lerp_weight)?;
            // v.mul_(beta2).addcmul_(g, g, value = 1 - beta2)
            let v = fused_add_mul(&(&p.exp_avg_sq * c.beta2)?, &(&g * (1.0 - c.beta2))?, &g)?;
            // (sqrt(v) / sqrt(bc2) + eps), a true division as torch does
            let bc2 = Tensor::new(bias_correction2_sqrt as f32, v.device())?;
            let denom = (v.sqrt()?.broadcast_div(&bc2)? + c.eps)?;
            // p.addcdiv_(m, denom, value = -step_size)
            let w = (w + ((&m * (-step_size))? / denom)?)?;
            p.var.set(&w.to_dtype(p.var.dtype())?)?;
            p.exp_avg = m;
            p.exp_avg_sq = v;
        }
        self.step = t;
        Ok(())
    }

    /// Writes the state (moments as `{name}.exp_avg` / `{name}.exp_avg_sq` f32 tensors, the step
    /// count and hyper-parameters in the metadata) to a safetensors file, atomically (temporary file
    /// in the same folder, then rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), OptimError> {
        let path = path.as_ref();
        let mut blobs: Vec<(String, Vec<usize>, Vec<u8>)> =
            Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            for (suffix, t) in [("exp_avg", &p.exp_avg), ("exp_avg_sq", &p.exp_avg_sq)] {
                let bytes: Vec<u8> = t
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect();
                blobs.push((format!("{}.{suffix}", p.name), t.dims().to_vec(), bytes));
            }
        }
        let views = blobs
            .iter()
            .map(|(name, shape, bytes)| {
                TensorView::new(StDtype::F32, shape.clone(), bytes).map(|v| (name.as_str(), v))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let c = self.config;
        let metadata: HashMap<String, String> = [
            ("format", ADAMW_STATE_FORMAT.to_string()),
            ("step", self.step.to_string()),
            ("beta1", c.beta1.to_string()),
            ("beta2", c.beta2.to_string()),
            ("eps", c.eps.to_string()),
            ("weight_decay", c.weight_decay.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let bytes = safetensors::serialize(views, Some(metadata))?;
        let file_name = path
            .file_name()
            .ok_or_else(|| OptimError::State(format!("not a file path: {}", path.display())))?;
        let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
        std::fs::write(&tmp, bytes).map_err(|e| OptimError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| OptimError::io(path, e))?;
        Ok(())
    }

    /// Restores moments and step count from a file written by [`AdamW::save`] for the same parameter
    /// names and shapes (anything else is an error; the optimizer is left unchanged then). The
    /// hyper-parameters stay those this optimizer was built with.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<(), OptimError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| OptimError::io(path, e))?;
        let st = SafeTensors::deserialize(&bytes)?;
        let (_, header) = SafeTensors::read_metadata(&bytes)?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(ADAMW_STATE_FORMAT) {
            return Err(OptimError::State(format!(
                "{} is not an AdamW state file (metadata format {:?}, expected {ADAMW_STATE_FORMAT:?})",
                path.display(),
                meta.get("format")
            )));
        }
        let step: u64 = meta
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                OptimError::State(format!("{}: missing or bad `step`", path.display()))
            })?;
        let mut expected = HashSet::new();
        let mut restored = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let mut pair = Vec::with_capacity(2);
            for suffix in ["exp_avg", "exp_avg_sq"] {
                let key = format!("{}.{suffix}", p.name);
                let view = st.tensor(&key).map_err(|_| {
                    OptimError::State(format!("{}: no tensor `{key}`", path.display()))
                })?;
                if view.dtype() != StDtype::F32 || view.shape() != p.var.dims() {
                    return Err(OptimError::State(format!(
                        "{}: `{key}` is {:?} {:?}, expected F32 {:?}",
                        path.display(),
                        view.dtype(),
                        view.shape(),
                        p.var.dims()
                    )));
                }
                let data: Vec<f32> = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                pair.push(Tensor::from_vec(data, view.shape(), p.var.device())?);
                expected.insert(key);
            }
            restored.push(pair);
        }
        if let Some(extra) = st.names().into_iter().find(|n| !expected.contains(*n)) {
            return Err(OptimError::State(format!(
                "{}: state for unknown parameter tensor `{extra}`",
                path.display()
            )));
        }
        for (p, mut pair) in self.params.iter_mut().zip(restored) {
            p.exp_avg_sq = pair.pop().expect("two moments");
            p.exp_avg = pair.pop().expect("two moments");
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The AdamW recursion in plain f64 for one scalar parameter.
    fn reference_steps(
        p0: f64,
        grads: impl Fn(f64) -> f64,
        lrs: &[f64],
        c: AdamWConfig,
    ) -> Vec<f64> {
        let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
        let mut out = vec![];
        for (i, &lr) in lrs.iter().enumerate() {
            let t = (i + 1) as f64;
            let g = grads(p);
            p *= 1.0 - lr * c.weight_decay;
            m = c.beta1 * m + (1.0 - c.beta1) * g;
            v = c.beta2 * v + (1.0 - c.beta2) * g * g;
            let m_hat = m / (1.0 - c.beta1.powf(t));
            let v_hat = v / (1.0 - c.beta2.powf(t));
            p -= lr * m_hat / (v_hat.sqrt() + c.eps);
            out.push(p);
        }
        out
    }

    /// Loss 0.5 * sum(a_i (x_i - b_i)^2): gradient a_i (x_i - b_i).
    fn quadratic_grad(x: &Var, a: &[f64], b: &[f64]) -> Tensor {
        let dev = x.device();
        let a = Tensor::new(a, dev).unwrap().to_dtype(DType::F32).unwrap();
        let b = Tensor::new(b, dev).unwrap().to_dtype(DType::F32).unwrap();
        let loss = ((x.as_tensor() - &b).unwrap().sqr().unwrap() * &a)
            .unwrap()
            .sum_all()
            .unwrap()
            * 0.5;
        let grads = loss.unwrap().backward().unwrap();
        grads.get(x.as_tensor()).unwrap().clone()
    }

    #[test]
    fn three_steps_on_a_quadratic_match_the_formula() {
        let a = [1.0, 4.0, 0.25];
        let b = [0.5, -1.0, 2.0];
        let x0 = [1.0, 2.0, -3.0];
        for wd in [0.0, 0.1] {
            let c = AdamWConfig {
                weight_decay: wd,
                ..Default::default()
            };
            let x = Var::new(&[1.0f32, 2.0, -3.0], &Device::Cpu).unwrap();
            let mut opt = AdamW::new(vec![("x".into(), x.clone())], c).unwrap();
            let lrs = [0.1, 0.05, 0.2];
            for &lr in &lrs {
                let g = quadratic_grad(&x, &a, &b);
                opt.step(&[g], lr).unwrap();
            }
            assert_eq!(opt.step_count(), 3);
            let got = x.as_tensor().to_vec1::<f32>().unwrap();
            for i in 0..3 {
                let want = reference_steps(x0[i], |p| a[i] * (p - b[i]), &lrs, c)[2];
                let rel = (got[i] as f64 - want).abs() / want.abs();
                assert!(
                    rel < 1e-6,
                    "wd {wd} x[{i}] = {} want {want} (rel {rel})",
                    got[i]
                );
            }
        }
    }

    #[test]
    fn first_step_moves_by_lr_times_sign() {
        // With m_hat = g and v_hat = g^2, the first step is -lr * g / (|g| + eps).
        let x = Var::new(&[3.0f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("x".into(), x.clone())], AdamWConfig::default()).unwrap();
        let g = Tensor::new(&[0.5f32, -4.0], &Device::Cpu).unwrap();
        opt.step(&[g], 0.01).unwrap();
        let got = x.as_tensor().to_vec1::<f32>().unwrap();
        assert!(
            (got[0] - 2.99).abs() < 1e-6 && (got[1] + 1.99).abs() < 1e-6,
            "{got:?}"
        );
    }

    #[test]
    fn save_load_resume_is_bit_identical() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let make = || {
            (
                Var::new(&[[0.1f32, -0.2], [0.3, 0.4]], &dev).unwrap(),
                Var::new(&[1.0f32, 2.0, 3.0], &dev).unwrap(),
            )
        };
        let grads_at = |k: usize| {
            vec![
                Tensor::new(&[[0.5f32, -1.0], [0.25, k as f32]], &dev).unwrap(),
                Tensor::new(&[-0.3f32, 0.7 * k as f32, 1e-3], &dev).unwrap(),
            ]
        };
        let c = AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        };
        // Uninterrupted: 5 steps.
        let (a1, b1) = make();
        let mut o1 =
            AdamW::new(vec![("a".into(), a1.clone()), ("b".into(), b1.clone())], c).unwrap();
        for k in 0..5 {
            o1.step(&grads_at(k), 1e-2).unwrap();
        }
        // Interrupted after 2, saved, new optimizer + vars restored, 3 more.
        let (a2, b2) = make();
        let mut o2 =
            AdamW::new(vec![("a".into(), a2.clone()), ("b".into(), b2.clone())], c).unwrap();
        for k in 0..2 {
            o2.step(&grads_at(k), 1e-2).unwrap();
        }
        let path = dir.path().join("optimizer.safetensors");
        o2.save(&path).unwrap();
        let (a3, b3) = make();
        a3.set(a2.as_tensor()).unwrap();
        b3.set(b2.as_tensor()).unwrap();
        let mut o3 =
            AdamW::new(vec![("a".into(), a3.clone()), ("b".into(), b3.clone())], c).unwrap();
        o3.load(&path).unwrap();
        assert_eq!(o3.step_count(), 2);
        for k in 2..5 {
            o3.step(&grads_at(k), 1e-2).unwrap();
        }
        let bits = |v: &Var| -> Vec<u32> {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        assert_eq!(bits(&a1), bits(&a3));
        assert_eq!(bits(&b1), bits(&b3));
        assert!(!dir.path().join(".optimizer.safetensors.tmp").exists());
    }

    #[test]
    fn load_rejects_mismatched_state() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let path = dir.path().join("opt.safetensors");
        let x = Var::new(&[1.0f32, 2.0], &dev).unwrap();
        AdamW::new(vec![("x".into(), x)], AdamWConfig::default())
            .unwrap()
            .save(&path)
            .unwrap();
        let y = Var::new(&[1.0f32, 2.0], &dev).unwrap();
        let mut other = AdamW::new(vec![("y".into(), y)], AdamWConfig::default()).unwrap();
        assert!(other
            .load(&path)
            .unwrap_err()
            .to_string()
            .contains("y.exp_avg"));
        let z = Var::new(&[1.0f32, 2.0, 3.0], &dev).unwrap();
        let mut other = AdamW::new(vec![("x".into(), z)], AdamWConfig::default()).unwrap();
        assert!(other.load(&path).is_err());
    }

    #[test]
    fn errors_for_bad_inputs() {
        let dev = Device::Cpu;
        let x = Var::new(&[1.0f32, 2.0], &dev).unwrap();
        assert!(matches!(
            AdamW::new(
                vec![("x".into(), x.clone()), ("x".into(), x.clone())],
                AdamWConfig::default()
            ),
            Err(OptimError::DuplicateName(_))
        ));
        let mut opt = AdamW::new(vec![("x".into(), x.clone())], AdamWConfig::default()).unwrap();
        assert!(matches!(
            opt.step(&[], 0.1),
            Err(OptimError::GradientCount { .. })
        ));
        let bad = Tensor::new(&[1.0f32], &dev).unwrap();
        assert!(matches!(
            opt.step(&[bad], 0.1),
            Err(OptimError::ShapeMismatch { .. })
        ));
        let bad_cfg = AdamWConfig {
            weight_decay: -1.0,
            ..Default::default()
        };
        let err = AdamW::new(vec![("x".into(), x)], bad_cfg).unwrap_err();
        assert!(err.to_string().contains("weight_decay"), "{err}");
        let mut named = HashMap::new();
        named.insert(
            "nope".to_string(),
            Tensor::new(&[1.0f32, 2.0], &dev).unwrap(),
        );
        assert!(matches!(
            opt.step_named(&named, 0.1),
            Err(OptimError::MissingGradient(_))
        ));
    }
}
