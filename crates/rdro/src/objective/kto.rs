//! KTO as TRL's `KTOTrainer` computes it (`loss_type = "kto"`):
//! reference point `z0 = max(0, mean_j (policy_KL_j - reference_KL_j))`, detached, from mismatched
//! pairs `(x_j, y_{j-1})` rotated inside the batch; desirable rows lose
//! `lambda_D (1 - sigmoid(beta (T - z0)))`, undesirable rows `lambda_U (1 - sigmoid(beta (z0 - T)))`;
//! the per-row losses are averaged over the whole batch (TRL concatenates both classes and takes the
//! mean). `1 - sigmoid(x)` is evaluated as `sigmoid(-x)`.

use super::numerics::sigmoid;
use super::{class_metrics, finish, Batch, KtoConfig, LossOutput, ObjectiveError, ObjectiveInputs};
use candle_core::DType;

pub(super) fn loss(c: &KtoConfig, inputs: &ObjectiveInputs) -> Result<LossOutput, ObjectiveError> {
    let n = inputs.labels.len();
    if n < 2 {
        return Err(ObjectiveError::BatchTooSmall { n });
    }
    let (kl_pol, kl_ref) = match (inputs.kl_policy_logps, inputs.kl_reference_logps) {
        (Some(p), Some(r)) => (p, r),
        (None, Some(_)) => {
            return Err(ObjectiveError::MissingKlLogps {
                missing: "kl_policy_logps is",
            })
        }
        (Some(_), None) => {
            return Err(ObjectiveError::MissingKlLogps {
                missing: "kl_reference_logps is",
            })
        }
        (None, None) => {
            return Err(ObjectiveError::MissingKlLogps {
                missing: "both are",
            })
        }
    };
    let batch = Batch::new(inputs)?;
    match (kl_pol.dims(), kl_ref.dims()) {
        ([a], [b]) if a == b && *a > 0 => {}
        (a, b) => {
            return Err(ObjectiveError::InvalidInput(format!(
                "kl_policy_logps and kl_reference_logps must be non-empty vectors of one length, \
                 got {a:?} and {b:?}"
            )))
        }
    }
    let kl = (kl_pol.detach().to_dtype(batch.dtype)? - kl_ref.detach().to_dtype(batch.dtype)?)?
        .mean_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    let z0 = kl.max(0.0);
    // u = beta (T - z0); desirable rows lose lambda_D sigmoid(-u), undesirable lambda_U sigmoid(u).
    let u = ((&batch.t - z0)? * c.beta)?;
    let sign: Vec<f64> = inputs
        .labels
        .iter()
        .map(|&l| if l { -1.0 } else { 1.0 })
        .collect();
    let weight: Vec<f64> = inputs
        .labels
        .iter()
        .map(|&l| {
            if l {
                c.desirable_weight
            } else {
                c.undesirable_weight
            }
        })
        .collect();
    let per_row = (sigmoid(&(u * batch.constant(sign)?)?)? * batch.constant(weight)?)?;
    let (loss, value) = finish(per_row.sum_all()?, inputs, n)?;
    let mut metrics = class_metrics(&batch, inputs.labels, c.beta, value);
    metrics.kl = Some(z0);
    Ok(LossOutput { loss, metrics })
}

#[cfg(test)]
mod tests {
    use super::super::{KtoConfig, Objective, ObjectiveError, ObjectiveInputs};
    use candle_core::{Device, Tensor};

    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    fn kto_value(t: &[f64], labels: &[bool], kl_t: &[f64], cfg: KtoConfig) -> (f64, Option<f64>) {
        let dev = Device::Cpu;
        let pol = Tensor::new(t, &dev).unwrap();
        let reference = pol.zeros_like().unwrap();
        let klp = Tensor::new(kl_t, &dev).unwrap();
        let klr = klp.zeros_like().unwrap();
        let inputs = ObjectiveInputs {
            kl_policy_logps: Some(&klp),
            kl_reference_logps: Some(&klr),
            ..ObjectiveInputs::new(&pol, &reference, labels)
        };
        let m = Objective::Kto(cfg).loss(&inputs).unwrap().metrics;
        (m.loss, m.kl)
    }

    #[test]
    fn hand_computed_with_positive_reference_point() {
        // beta 0.1, T = [2, -1, 0.5, 3], labels [D, U, D, U], KL log-ratios mean 0.25 -> z0 = 0.25
        let (v, kl) = kto_value(
            &[2.0, -1.0, 0.5, 3.0],
            &[true, false, true, false],
            &[0.3, -0.1, 0.6, 0.2],
            KtoConfig::default(),
        );
        let want = ((1.0 - sig(0.1 * (2.0 - 0.25)))
            + (1.0 - sig(0.1 * (0.25 + 1.0)))
            + (1.0 - sig(0.1 * (0.5 - 0.25)))
            + (1.0 - sig(0.1 * (0.25 - 3.0))))
            / 4.0;
        assert!((v - want).abs() < 1e-14, "{v} vs {want}");
        assert!((want - 0.49680556209197557).abs() < 1e-14, "{want}");
        assert_eq!(kl, Some(0.25));
    }

    #[test]
    fn reference_point_is_clamped_at_zero_and_weights_apply() {
        let cfg = KtoConfig {
            beta: 0.5,
            desirable_weight: 2.0,
            undesirable_weight: 0.5,
        };
        let (v, kl) = kto_value(
            &[1.0, -1.0, 0.0],
            &[true, false, false],
            &[-1.0, -2.0, 0.5],
            cfg,
        );
        let want = (2.0 * (1.0 - sig(0.5)) + 0.5 * (1.0 - sig(0.5)) + 0.5 * (1.0 - sig(0.0))) / 3.0;
        assert!((v - want).abs() < 1e-14, "{v} vs {want}");
        assert_eq!(kl, Some(0.0));
    }

    #[test]
    fn batch_of_one_is_a_clear_error() {
        let dev = Device::Cpu;
        let t = Tensor::new(&[1.0f32], &dev).unwrap();
        let inputs = ObjectiveInputs {
            kl_policy_logps: Some(&t),
            kl_reference_logps: Some(&t),
            ..ObjectiveInputs::new(&t, &t, &[true])
        };
        let err = Objective::Kto(KtoConfig::default())
            .loss(&inputs)
            .unwrap_err();
        assert!(matches!(err, ObjectiveError::BatchTooSmall { n: 1 }));
        assert!(err.to_string().contains("batch size > 1"), "{err}");
    }

    #[test]
    fn missing_kl_inputs_are_a_clear_error() {
        let dev = Device::Cpu;
        let t = Tensor::new(&[1.0f32, 2.0], &dev).unwrap();
        let obj = Objective::Kto(KtoConfig::default());
        let err = obj
            .loss(&ObjectiveInputs::new(&t, &t, &[true, false]))
            .unwrap_err();
        assert!(
            matches!(err, ObjectiveError::MissingKlLogps { .. }),
            "{err}"
        );
        let half = ObjectiveInputs {
            kl_policy_logps: Some(&t),
            ..ObjectiveInputs::new(&t, &t, &[true, false])
        };
        let err = obj.loss(&half).unwrap_err();
        assert!(err.to_string().contains("kl_reference_logps"), "{err}");
    }
}
