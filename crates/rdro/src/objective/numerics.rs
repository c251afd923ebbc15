//! Numerically stable softplus / sigmoid built only from tensor ops (so they run on any device and
//! carry a correct backward), plus their `f64` scalar counterparts for reference computations.
//!
//! `softplus(t) = max(t, 0) + log1p(exp(-|t|))`. candle has no `log1p`; `log(1 + exp(-|t|))` is
//! accurate enough because its argument lies in `(1, 2]`. The `max(t, 0)` is a `relu`, whose backward
//! (mask `t >= 0`) together with `abs`'s backward (sign with `+1` at 0) gives exactly `sigmoid(t)` as
//! the derivative everywhere, including at `t = 0`. (`maximum(t, 0)` would not: its backward splits the
//! gradient in half at a tie and yields a derivative of 0 at `t = 0`.)

use candle_core::{Result, Tensor};

/// Stable element-wise `softplus(t) = log(1 + e^t)` with a finite value and gradient for every
/// finite `t` (checked down to |t| = 1e4 and beyond).
pub fn softplus(t: &Tensor) -> Result<Tensor> {
    let tail = (t.abs()?.neg()?.exp()? + 1.0)?.log()?;
    t.relu()? + tail
}

/// Stable element-wise logistic sigmoid `1 / (1 + e^-x) = exp(-softplus(-x))`.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    softplus(&x.neg()?)?.neg()?.exp()
}

/// Stable element-wise `log(sigmoid(x)) = -softplus(-x)`.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    softplus(&x.neg()?)?.neg()
}

/// Scalar `f64` softplus, computed stably (reference implementation for checks and metrics).
pub fn softplus_f64(t: f64) -> f64 {
    t.max(0.0) + (-t.abs()).exp().ln_1p()
}

/// Scalar `f64` logistic sigmoid, computed stably.
pub fn sigmoid_f64(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    const POINTS: [f64; 13] = [
        -1e4, -1e3, -50.0, -10.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 10.0, 50.0, 1e3, 1e4,
    ];

    fn grad_of(f: impl Fn(&Tensor) -> Result<Tensor>, dtype: DType) -> (Vec<f64>, Vec<f64>) {
        let x = Var::from_tensor(
            &Tensor::new(&POINTS, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        )
        .unwrap();
        let y = f(x.as_tensor()).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap();
        (
            y.to_dtype(DType::F64).unwrap().to_vec1().unwrap(),
            g.to_dtype(DType::F64).unwrap().to_vec1().unwrap(),
        )
    }

    #[test]
    fn softplus_values_and_gradient_match_reference() {
        for dtype in [DType::F32, DType::F64] {
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-14 };
            let (v, g) = grad_of(softplus, dtype);
            for (i, &t) in POINTS.iter().enumerate() {
                let want = softplus_f64(t);
                assert!(v[i].is_finite() && g[i].is_finite(), "t={t}");
                assert!(
                    (v[i] - want).abs() <= tol * want.abs().max(1.0),
                    "softplus({t}) = {} want {want}",
                    v[i]
                );
                assert!(
                    (g[i] - sigmoid_f64(t)).abs() <= tol,
                    "softplus'({t}) = {} want {}",
                    g[i],
                    sigmoid_f64(t)
                );
            }
        }
    }

    #[test]
    fn softplus_derivative_at_zero_is_one_half() {
        // The relu/abs backward conventions must combine to sigmoid(0) = 0.5 exactly.
        let x = Var::new(&[0f32], &Device::Cpu).unwrap();
        let g = softplus(x.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, vec![0.5]);
    }

    #[test]
    fn sigmoid_and_log_sigmoid_are_stable() {
        for dtype in [DType::F32, DType::F64] {
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-14 };
            let (v, g) = grad_of(sigmoid, dtype);
            for (i, &x) in POINTS.iter().enumerate() {
                let s = sigmoid_f64(x);
                assert!((v[i] - s).abs() <= tol, "sigmoid({x})");
                assert!((g[i] - s * (1.0 - s)).abs() <= tol, "sigmoid'({x})");
            }
            let (v, g) = grad_of(log_sigmoid, dtype);
            for (i, &x) in POINTS.iter().enumerate() {
                let want = -softplus_f64(-x);
                assert!(v[i].is_finite() && g[i].is_finite());
                assert!(
                    (v[i] - want).abs() <= tol * want.abs().max(1.0),
                    "logsig({x})"
                );
                assert!((g[i] - sigmoid_f64(-x)).abs() <= tol, "logsig'({x})");
            }
        }
    }

    #[test]
    fn scalar_reference_matches_naive_formula_where_safe() {
        for t in [-5.0, -0.5, 0.0, 0.5, 5.0] {
            assert!((softplus_f64(t) - (1.0 + f64::exp(t)).ln()).abs() < 1e-15);
            assert!((sigmoid_f64(t) - 1.0 / (1.0 + f64::exp(-t))).abs() < 1e-15);
        }
        assert_eq!(softplus_f64(1e4), 1e4);
        assert_eq!(softplus_f64(-1e4), 0.0);
    }
}
