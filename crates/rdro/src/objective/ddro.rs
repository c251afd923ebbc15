//! DDRO in logistic form: the `alpha -> 0` limit of RDRO, `l+ = softplus(-T)`, `l- = softplus(T)`,
//! with an optional clamp `T <= clip` (rows above it are counted in `n_clamped` and get no gradient).

use super::rdro::density_ratio_sum;
use super::{
    class_metrics, finish, Batch, DdroConfig, LossOutput, ObjectiveError, ObjectiveInputs,
};

pub(super) fn loss(c: &DdroConfig, inputs: &ObjectiveInputs) -> Result<LossOutput, ObjectiveError> {
    let batch = Batch::new(inputs)?;
    let (t, n_clamped) = match c.clip {
        None => (batch.t.clone(), 0),
        Some(clip) => {
            let limit = (batch.t.zeros_like()? + clip)?.detach();
            // where_cond keeps the full gradient for rows at or below the clip (PyTorch's clamp).
            let t = batch.t.le(&limit)?.where_cond(&batch.t, &limit)?;
            (t, batch.t_host.iter().filter(|&&v| v > clip).count())
        }
    };
    let sum = density_ratio_sum(
        &batch,
        &t,
        inputs.labels,
        0.0,
        c.reduction,
        c.preferred_fraction,
    )?;
    let (loss, value) = finish(sum, inputs, inputs.labels.len())?;
    let mut metrics = class_metrics(&batch, inputs.labels, super::DISPLAY_REWARD_BETA, value);
    metrics.n_clamped = n_clamped;
    Ok(LossOutput { loss, metrics })
}

#[cfg(test)]
mod tests {
    use super::super::{DdroConfig, Objective, ObjectiveInputs, Reduction};
    use candle_core::{DType, Device, Tensor, Var};

    fn ddro(clip: Option<f64>) -> Objective {
        Objective::Ddro(DdroConfig {
            clip,
            reduction: Reduction::Mean,
            preferred_fraction: 0.5,
        })
    }

    #[test]
    fn hand_computed_values() {
        // T = [1 (+), -2 (-)]: softplus(-1) = 0.31326168751822286, softplus(-2) = 0.12692801104297263
        let dev = Device::Cpu;
        let pol = Tensor::new(&[1.0f64, -2.0], &dev).unwrap();
        let reference = Tensor::zeros(2, DType::F64, &dev).unwrap();
        let out = ddro(None)
            .loss(&ObjectiveInputs::new(&pol, &reference, &[true, false]))
            .unwrap();
        let want = (0.31326168751822286 + 0.12692801104297263) / 2.0;
        assert!((out.metrics.loss - want).abs() < 1e-14);
        assert_eq!(out.metrics.n_clamped, 0);
    }

    #[test]
    fn clip_counts_and_cuts_gradient() {
        let dev = Device::Cpu;
        let pol = Var::new(&[5.0f32, 1.0, 2.0, 3.5, -1.0], &dev).unwrap();
        let reference = Tensor::new(&[0.0f32, 0.0, 0.0, 0.5, 0.0], &dev).unwrap();
        let labels = [true, true, false, true, false];
        // T = [5, 1, 2, 3, -1], clip 2: rows 0 and 3 clamped, row 2 sits exactly at the clip.
        let out = ddro(Some(2.0))
            .loss(&ObjectiveInputs::new(pol.as_tensor(), &reference, &labels))
            .unwrap();
        assert_eq!(out.metrics.n_clamped, 2);
        let sp = |x: f64| (1.0 + x.exp()).ln();
        let want = (sp(-2.0) + sp(-1.0) + sp(2.0) + sp(-2.0) + sp(-1.0)) / 5.0;
        assert!(
            (out.metrics.loss - want).abs() < 1e-6,
            "{}",
            out.metrics.loss
        );
        let g = out.loss.backward().unwrap();
        let g = g.get(pol.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        assert_eq!(g[0], 0.0);
        assert_eq!(g[3], 0.0);
        assert!((g[1] as f64 + sig(-1.0) / 5.0).abs() < 1e-6);
        assert!(
            (g[2] as f64 - sig(2.0) / 5.0).abs() < 1e-6,
            "at the clip: full gradient"
        );
        assert!((g[4] as f64 - sig(-1.0) / 5.0).abs() < 1e-6);
        // Mean T is reported unclamped.
        assert!((out.metrics.mean_t_preferred.unwrap() - 3.0).abs() < 1e-6);
    }
}
