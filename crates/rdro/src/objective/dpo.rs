//! DPO with the sigmoid loss: `-log sigmoid(beta (T_chosen - T_rejected)) = softplus(-beta (...))`,
//! averaged over pairs. Rows come in pairs: row `2i` chosen (label `true`), row `2i+1` rejected.

use super::numerics::softplus;
use super::{class_metrics, finish, Batch, DpoConfig, LossOutput, ObjectiveError, ObjectiveInputs};
use candle_core::IndexOp;

fn check_pairs(labels: &[bool]) -> Result<(), ObjectiveError> {
    if !labels.len().is_multiple_of(2) {
        return Err(ObjectiveError::NotPaired {
            reason: format!("got an odd number of rows ({})", labels.len()),
        });
    }
    for (i, pair) in labels.chunks(2).enumerate() {
        if pair != [true, false] {
            return Err(ObjectiveError::NotPaired {
                reason: format!(
                    "pair {i} (rows {}, {}) has labels ({}, {}), expected (true, false)",
                    2 * i,
                    2 * i + 1,
                    pair[0],
                    pair[1]
                ),
            });
        }
    }
    Ok(())
}

pub(super) fn loss(c: &DpoConfig, inputs: &ObjectiveInputs) -> Result<LossOutput, ObjectiveError> {
    check_pairs(inputs.labels)?;
    let batch = Batch::new(inputs)?;
    let pairs = inputs.labels.len() / 2;
    let t = batch.t.reshape((pairs, 2))?;
    let margin = (t.i((.., 0))? - t.i((.., 1))?)?;
    let per_pair = softplus(&(margin * (-c.beta))?)?;
    let (loss, value) = finish(per_pair.sum_all()?, inputs, pairs)?;
    let mut metrics = class_metrics(&batch, inputs.labels, c.beta, value);
    let wins = batch.t_host.chunks(2).filter(|p| p[0] > p[1]).count();
    metrics.count_pairs = pairs;
    metrics.pair_accuracy = Some(wins as f64 / pairs as f64);
    Ok(LossOutput { loss, metrics })
}

#[cfg(test)]
mod tests {
    use super::super::{DpoConfig, Objective, ObjectiveError, ObjectiveInputs};
    use candle_core::{Device, Tensor};

    #[test]
    fn hand_computed_values_and_accuracy() {
        let dev = Device::Cpu;
        // pairs: (T_c, T_r) = (1, -1), (0.5, 2)
        let pol = Tensor::new(&[-4.0f64, -6.0, -3.5, -1.0], &dev).unwrap();
        let reference = Tensor::new(&[-5.0f64, -5.0, -4.0, -3.0], &dev).unwrap();
        let out = Objective::Dpo(DpoConfig { beta: 0.1 })
            .loss(&ObjectiveInputs::new(
                &pol,
                &reference,
                &[true, false, true, false],
            ))
            .unwrap();
        // -log sigmoid(0.2) = 0.5981388693815918, -log sigmoid(-0.15) = 0.7709570477895321
        let want = (0.5981388693815918 + 0.7709570477895321) / 2.0;
        assert!(
            (out.metrics.loss - want).abs() < 1e-13,
            "{}",
            out.metrics.loss
        );
        assert_eq!(out.metrics.count_pairs, 2);
        assert_eq!(out.metrics.pair_accuracy, Some(0.5));
        assert!((out.metrics.rewards_chosen.unwrap() - 0.075).abs() < 1e-12);
        assert!((out.metrics.rewards_rejected.unwrap() - 0.05).abs() < 1e-12);
    }

    #[test]
    fn pairing_errors() {
        let dev = Device::Cpu;
        let obj = Objective::Dpo(DpoConfig::default());
        let t3 = Tensor::new(&[0.0f32, 0.0, 0.0], &dev).unwrap();
        let err = obj
            .loss(&ObjectiveInputs::new(&t3, &t3, &[true, false, true]))
            .unwrap_err();
        assert!(matches!(err, ObjectiveError::NotPaired { .. }));
        assert!(err.to_string().contains("odd"), "{err}");
        let t4 = Tensor::new(&[0.0f32, 0.0, 0.0, 0.0], &dev).unwrap();
        for labels in [
            [false, true, true, false],
            [true, false, true, true],
            [true, false, false, false],
        ] {
            let err = obj
                .loss(&ObjectiveInputs::new(&t4, &t4, &labels))
                .unwrap_err();
            assert!(
                matches!(err, ObjectiveError::NotPaired { .. }),
                "{labels:?}"
            );
        }
        let err = obj
            .loss(&ObjectiveInputs::new(&t4, &t4, &[false, true, true, false]))
            .unwrap_err();
        assert!(err.to_string().contains("pair 0"), "{err}");
    }
}
