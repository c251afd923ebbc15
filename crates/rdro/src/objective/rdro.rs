//! RDRO: relative density ratio fitting with the logistic Bregman divergence, and the shared
//! density-ratio loss that DDRO reuses with `alpha = 0`.
//!
//! Per-row losses, written without cancellation:
//! `l+(T) = (1+alpha) softplus(T) - T = softplus(-T) + alpha softplus(T)`,
//! `l-(T) = (1-alpha) softplus(T)`.

use super::numerics::{sigmoid_f64, softplus, softplus_f64};
use super::{
    class_metrics, finish, Batch, LossOutput, ObjectiveError, ObjectiveInputs, RdroConfig,
    Reduction,
};
use candle_core::Tensor;

/// `r_alpha = p+ / (alpha p+ + (1 - alpha) p-)`, the relative density ratio (bounded by `1/alpha`).
pub fn relative_density_ratio(p_plus: f64, p_minus: f64, alpha: f64) -> f64 {
    p_plus / (alpha * p_plus + (1.0 - alpha) * p_minus)
}

/// `log(1/alpha)`: the minimiser of `l+`, i.e. the value RDRO drives `T` towards on samples that
/// only the preferred distribution produces.
pub fn optimal_log_ratio(alpha: f64) -> f64 {
    (1.0 / alpha).ln()
}

/// Scalar RDRO preferred-row loss `l+(T) = (1+alpha) softplus(T) - T`.
pub fn rdro_loss_preferred(t: f64, alpha: f64) -> f64 {
    softplus_f64(-t) + alpha * softplus_f64(t)
}

/// Scalar RDRO non-preferred-row loss `l-(T) = (1-alpha) softplus(T)`.
pub fn rdro_loss_non_preferred(t: f64, alpha: f64) -> f64 {
    (1.0 - alpha) * softplus_f64(t)
}

/// Scalar `dl+/dT = (1+alpha) sigmoid(T) - 1`, in `(-1, alpha)`.
pub fn rdro_grad_preferred(t: f64, alpha: f64) -> f64 {
    (1.0 + alpha) * sigmoid_f64(t) - 1.0
}

/// Scalar `dl-/dT = (1-alpha) sigmoid(T)`, in `(0, 1-alpha)`.
pub fn rdro_grad_non_preferred(t: f64, alpha: f64) -> f64 {
    (1.0 - alpha) * sigmoid_f64(t)
}

/// Scalar DDRO preferred-row loss `softplus(-T)`.
pub fn ddro_loss_preferred(t: f64) -> f64 {
    softplus_f64(-t)
}

/// Scalar DDRO non-preferred-row loss `softplus(T)`.
pub fn ddro_loss_non_preferred(t: f64) -> f64 {
    softplus_f64(t)
}

/// Per-class weights of a reduction: `(w+, w-)`.
pub(super) fn class_weights(reduction: Reduction, preferred_fraction: f64) -> (f64, f64) {
    match reduction {
        Reduction::ClassBalanced => (
            1.0 / (2.0 * preferred_fraction),
            1.0 / (2.0 * (1.0 - preferred_fraction)),
        ),
        Reduction::Mean => (1.0, 1.0),
    }
}

/// The density-ratio loss `sum_i w_i (c_i softplus(-T_i) + d_i softplus(T_i)) / normalizer` with
/// `(c, d) = (1, alpha)` for preferred and `(0, 1 - alpha)` for non-preferred rows, on the given
/// (possibly clamped) `t`.
pub(super) fn density_ratio_sum(
    batch: &Batch,
    t: &Tensor,
    labels: &[bool],
    alpha: f64,
    reduction: Reduction,
    preferred_fraction: f64,
) -> Result<Tensor, ObjectiveError> {
    let (w_pos, w_neg) = class_weights(reduction, preferred_fraction);
    let c: Vec<f64> = labels
        .iter()
        .map(|&l| if l { w_pos } else { 0.0 })
        .collect();
    let d: Vec<f64> = labels
        .iter()
        .map(|&l| {
            if l {
                w_pos * alpha
            } else {
                w_neg * (1.0 - alpha)
            }
        })
        .collect();
    let pull_up = (softplus(&t.neg()?)? * batch.constant(c)?)?;
    let push_down = (softplus(t)? * batch.constant(d)?)?;
    Ok((pull_up + push_down)?.sum_all()?)
}

pub(super) fn loss(c: &RdroConfig, inputs: &ObjectiveInputs) -> Result<LossOutput, ObjectiveError> {
    let batch = Batch::new(inputs)?;
    let sum = density_ratio_sum(
        &batch,
        &batch.t,
        inputs.labels,
        c.alpha,
        c.reduction,
        c.preferred_fraction,
    )?;
    let (loss, value) = finish(sum, inputs, inputs.labels.len())?;
    let mut metrics = class_metrics(&batch, inputs.labels, super::DISPLAY_REWARD_BETA, value);
    metrics.target_t_preferred = Some(optimal_log_ratio(c.alpha));
    Ok(LossOutput { loss, metrics })
}

#[cfg(test)]
mod tests {
    use super::super::{Objective, ObjectiveInputs, RdroConfig, Reduction};
    use super::*;
    use candle_core::{DType, Device, Var};

    fn rdro(alpha: f64, reduction: Reduction, pi: f64) -> Objective {
        Objective::Rdro(RdroConfig {
            alpha,
            reduction,
            preferred_fraction: pi,
        })
    }

    fn run(obj: &Objective, t: &[f64], labels: &[bool], dtype: DType) -> (f64, Vec<f64>) {
        let dev = Device::Cpu;
        let pol =
            Var::from_tensor(&Tensor::new(t, &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
        let reference = Tensor::zeros(t.len(), dtype, &dev).unwrap();
        let out = obj
            .loss(&ObjectiveInputs::new(pol.as_tensor(), &reference, labels))
            .unwrap();
        let g = out.loss.backward().unwrap();
        let g = g
            .get(pol.as_tensor())
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap();
        (out.metrics.loss, g)
    }

    #[test]
    fn hand_computed_mean_reduction() {
        // alpha 0.5, T = [1 (preferred), -2 (non-preferred)]:
        // l+(1) = 1.5 ln(1+e) - 1 = 0.96989253127733, l-(-2) = 0.5 ln(1+e^-2) = 0.06346400552148625.
        let (v, g) = run(
            &rdro(0.5, Reduction::Mean, 0.5),
            &[1.0, -2.0],
            &[true, false],
            DType::F64,
        );
        assert!((v - 0.5166782683994103).abs() < 1e-12, "{v}");
        // d/dT_i of the mean: 1/2 [1.5 sigmoid(1) - 1, 0.5 sigmoid(-2)]
        assert!((g[0] - 0.5 * (1.5 * 0.7310585786300049 - 1.0)).abs() < 1e-12);
        assert!((g[1] - 0.5 * 0.5 * 0.11920292202211755).abs() < 1e-12);
        let (v32, _) = run(
            &rdro(0.5, Reduction::Mean, 0.5),
            &[1.0, -2.0],
            &[true, false],
            DType::F32,
        );
        assert!((v32 - 0.5166782683994103).abs() < 1e-6);
    }

    #[test]
    fn hand_computed_class_balanced() {
        // alpha 0.39, pi_hat 0.25: w+ = 2, w- = 2/3. T = [0.5 (+), 0 (-), 2 (-)]
        // l+(0.5) = 1.39 ln(1+e^0.5) - 0.5, l-(0) = 0.61 ln 2, l-(2) = 0.61 ln(1+e^2)
        // loss = (2 l+(0.5) + 2/3 (l-(0) + l-(2))) / 3
        let obj = rdro(0.39, Reduction::ClassBalanced, 0.25);
        let (v, _) = run(&obj, &[0.5, 0.0, 2.0], &[true, false, false], DType::F64);
        let lp = 1.39 * (1.0 + 0.5f64.exp()).ln() - 0.5;
        let lm0 = 0.61 * 2f64.ln();
        let lm2 = 0.61 * (1.0 + 2f64.exp()).ln();
        let want = (2.0 * lp + 2.0 / 3.0 * (lm0 + lm2)) / 3.0;
        assert!((v - want).abs() < 1e-12, "{v} vs {want}");
        assert!((want - 0.9515881979797388).abs() < 1e-12, "{want}");
    }

    #[test]
    fn metrics_report_target_and_rewards() {
        let dev = Device::Cpu;
        let pol = Tensor::new(&[-10.0f32, -12.0, -9.0], &dev).unwrap();
        let reference = Tensor::new(&[-11.0f32, -11.0, -9.5], &dev).unwrap();
        let labels = [true, false, true];
        let out = rdro(0.39, Reduction::Mean, 0.5)
            .loss(&ObjectiveInputs::new(&pol, &reference, &labels))
            .unwrap();
        let m = out.metrics;
        assert_eq!((m.rows, m.count_chosen, m.count_rejected), (3, 2, 1));
        assert!((m.mean_t_preferred.unwrap() - 0.75).abs() < 1e-6);
        assert!((m.rewards_chosen.unwrap() - 0.075).abs() < 1e-6);
        assert!((m.rewards_rejected.unwrap() + 0.1).abs() < 1e-6);
        assert!((m.rewards_margins.unwrap() - 0.175).abs() < 1e-6);
        assert!((m.logps_chosen.unwrap() + 9.5).abs() < 1e-6);
        assert!((m.logps_rejected.unwrap() + 12.0).abs() < 1e-6);
        assert!((m.target_t_preferred.unwrap() - 0.941608539858445).abs() < 1e-12);
        assert_eq!(m.kl, None);
    }
}
