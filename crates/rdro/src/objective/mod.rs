//! Alignment objectives over summed sequence log-probabilities.
//!
//! Every objective sees, for one micro-batch of `n` rows, the policy log-probs (tracked, the graph
//! leads to the LoRA parameters), the reference log-probs (detached) and the row labels, and returns
//! a scalar loss with its graph plus host-side metrics. The log-ratio is
//! `T = log pi_theta(y|x) - log pi_ref(y|x)` (no beta, no temperature).
//!
//! - [`Objective::Rdro`]: relative density ratio optimisation, `l+ = (1+alpha) softplus(T) - T`,
//!   `l- = (1-alpha) softplus(T)`.
//! - [`Objective::Ddro`]: the `alpha -> 0` limit, `l+ = softplus(-T)`, `l- = softplus(T)`, with an
//!   optional clamp `T <= clip`.
//! - [`Objective::Kto`]: TRL's KTO (`loss_type = "kto"`).
//! - [`Objective::Dpo`]: sigmoid DPO on paired rows.
//!
//! Computation happens in `f32` (or in `f64` when the policy log-probs are `f64`), with tensor ops
//! only, so it runs on any device.
//!
//! ## Reductions and gradient accumulation
//! Per-row losses are weighted (class-balanced weights for RDRO/DDRO, `lambda_D`/`lambda_U` for KTO)
//! and summed. The sum is divided by [`ObjectiveInputs::normalizer`] when it is given, otherwise by
//! the number of loss units in the micro-batch (rows, or pairs for DPO; see
//! [`Objective::loss_units`]). Passing as normalizer the number of units of the whole accumulated
//! optimizer step makes the micro-batch losses (and their gradients) add up to the loss of the full
//! step.

mod ddro;
mod dpo;
mod kto;
pub mod numerics;
mod rdro;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use numerics::{log_sigmoid, sigmoid, sigmoid_f64, softplus, softplus_f64};
pub use rdro::{
    ddro_loss_non_preferred, ddro_loss_preferred, optimal_log_ratio, rdro_grad_non_preferred,
    rdro_grad_preferred, rdro_loss_non_preferred, rdro_loss_preferred, relative_density_ratio,
};

/// The beta used to display implicit rewards (`beta * T`) for objectives that have no beta of their
/// own (RDRO and DDRO).
pub const DISPLAY_REWARD_BETA: f64 = 0.1;

/// Errors raised by objective validation and loss computation.
#[derive(Debug, Error)]
pub enum ObjectiveError {
    /// A configuration value is out of its allowed range; `key` names the configuration key.
    #[error("invalid value for `{key}`: expected {expected}, got {got}")]
    InvalidConfig {
        /// The configuration key, e.g. `objective.alpha`.
        key: &'static str,
        /// What the key accepts.
        expected: &'static str,
        /// The rejected value, as text.
        got: String,
    },
    /// KTO was given a micro-batch of fewer than two rows.
    #[error(
        "kto needs a batch size > 1: its reference point is the mean log-ratio of mismatched \
         (prompt, completion) pairs rotated inside the batch; got a batch of {n} row(s)"
    )]
    BatchTooSmall {
        /// Rows in the offending micro-batch.
        n: usize,
    },
    /// KTO was called without the log-probs of the mismatched (KL) pairs.
    #[error(
        "kto needs the policy and reference log-probs of the mismatched (KL) pairs \
         (`kl_policy_logps` and `kl_reference_logps`); {missing} missing"
    )]
    MissingKlLogps {
        /// Which of the two inputs is missing.
        missing: &'static str,
    },
    /// DPO rows are not laid out as (chosen, rejected) pairs.
    #[error("dpo needs paired rows (row 2i chosen, row 2i+1 rejected): {reason}")]
    NotPaired {
        /// What is wrong with the layout.
        reason: String,
    },
    /// The inputs are inconsistent (shapes, lengths, normalizer).
    #[error("invalid objective inputs: {0}")]
    InvalidInput(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// How per-row losses of RDRO/DDRO are reduced over the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    /// Weight preferred rows by `1/(2 pi_hat)` and non-preferred rows by `1/(2 (1 - pi_hat))`, then
    /// average: an unbiased estimate of (half) the population loss, whose minimiser is `r_alpha`.
    #[default]
    ClassBalanced,
    /// Plain mean of the per-row losses.
    Mean,
}

/// The RDRO `alpha` as configured: a number in `(0, 1)` or `"auto"` (the preferred fraction of the
/// training set). Serialises as the number or the string `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Alpha {
    /// Use the preferred fraction `pi_hat` of the training set.
    #[default]
    Auto,
    /// A fixed value.
    Value(f64),
}

impl Alpha {
    /// Resolves to a number, checking it lies in `(0, 1)` (error names `objective.alpha`).
    pub fn resolve(self, preferred_fraction: f64) -> Result<f64, ObjectiveError> {
        let alpha = match self {
            Alpha::Auto => preferred_fraction,
            Alpha::Value(a) => a,
        };
        check_open_unit(
            "objective.alpha",
            alpha,
            "a number in (0, 1) (0 is DDRO) or \"auto\"",
        )?;
        Ok(alpha)
    }
}

impl Serialize for Alpha {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Alpha::Auto => s.serialize_str("auto"),
            Alpha::Value(v) => s.serialize_f64(*v),
        }
    }
}

impl<'de> Deserialize<'de> for Alpha {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Alpha;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number in (0, 1) or \"auto\"")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Alpha, E> {
                Ok(Alpha::Value(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Alpha, E> {
                Ok(Alpha::Value(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Alpha, E> {
                Ok(Alpha::Value(v as f64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Alpha, E> {
                if v == "auto" {
                    Ok(Alpha::Auto)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// RDRO configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RdroConfig {
    /// The resolved mixture weight, in `(0, 1)` (see [`Alpha::resolve`]).
    pub alpha: f64,
    /// Batch reduction.
    pub reduction: Reduction,
    /// `pi_hat`, the preferred fraction of the whole training set (used by the class-balanced
    /// reduction; must then lie in `(0, 1)`).
    pub preferred_fraction: f64,
}

/// DDRO configuration (the `alpha -> 0` limit of RDRO).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdroConfig {
    /// Clamp `T` to at most this value before the loss (`ddro_clip`; off when `None`).
    pub clip: Option<f64>,
    /// Batch reduction.
    pub reduction: Reduction,
    /// `pi_hat`, the preferred fraction of the whole training set (class-balanced reduction).
    pub preferred_fraction: f64,
}

/// KTO configuration (TRL's `KTOTrainer`, `loss_type = "kto"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KtoConfig {
    /// Temperature of the implicit reward (TRL default 0.1).
    pub beta: f64,
    /// `lambda_D`, weight of desirable rows (default 1).
    pub desirable_weight: f64,
    /// `lambda_U`, weight of undesirable rows (default 1).
    pub undesirable_weight: f64,
}

impl Default for KtoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
        }
    }
}

/// DPO configuration (sigmoid loss).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoConfig {
    /// Temperature of the implicit reward (default 0.1).
    pub beta: f64,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self { beta: 0.1 }
    }
}

/// An alignment objective with its configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// Relative density ratio optimisation.
    Rdro(RdroConfig),
    /// Density ratio optimisation (logistic form).
    Ddro(DdroConfig),
    /// Kahneman-Tversky optimisation.
    Kto(KtoConfig),
    /// Direct preference optimisation.
    Dpo(DpoConfig),
}

/// What an objective sees for one micro-batch.
#[derive(Debug, Clone, Copy)]
pub struct ObjectiveInputs<'a> {
    /// `[n]` summed completion log-probs under the policy (tracked: graph to the LoRA parameters).
    pub policy_logps: &'a Tensor,
    /// `[n]` the same under the reference (treated as constant; detached here again).
    pub reference_logps: &'a Tensor,
    /// `n` labels: preferred / desirable (`true`) or not. For DPO, row `2i` is the chosen completion
    /// (`true`) and row `2i+1` the rejected one (`false`) of pair `i`.
    pub labels: &'a [bool],
    /// KTO only: policy log-probs of the mismatched pairs `(x_i, y_{i-1})` (treated as constant).
    pub kl_policy_logps: Option<&'a Tensor>,
    /// KTO only: reference log-probs of the same mismatched pairs.
    pub kl_reference_logps: Option<&'a Tensor>,
    /// Divide the weighted loss sum by this number instead of by the micro-batch's loss units
    /// (pass the loss units of the whole accumulated step). `None`: mean over this micro-batch.
    pub normalizer: Option<f64>,
}

impl<'a> ObjectiveInputs<'a> {
    /// Inputs for an unpaired or paired batch without KL pairs and without a normalizer.
    pub fn new(policy_logps: &'a Tensor, reference_logps: &'a Tensor, labels: &'a [bool]) -> Self {
        Self {
            policy_logps,
            reference_logps,
            labels,
            kl_policy_logps: None,
            kl_reference_logps: None,
            normalizer: None,
        }
    }
}

/// The loss of one micro-batch.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// Scalar loss (rank 0) with its graph; call `backward` on it.
    pub loss: Tensor,
    /// Host-side metrics of the batch.
    pub metrics: LossMetrics,
}

/// Host-side metrics of one (micro-)batch, with TRL's meanings. Means over a class are `None` when
/// the batch holds no row of that class. Use [`LossMetrics::merge`] to combine micro-batches.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LossMetrics {
    /// The loss value (as returned, i.e. already divided by the normalizer).
    pub loss: f64,
    /// Rows in the batch.
    pub rows: usize,
    /// Preferred / chosen / desirable rows.
    pub count_chosen: usize,
    /// Non-preferred / rejected / undesirable rows.
    pub count_rejected: usize,
    /// The beta used for the reward metrics (objective's beta, or 0.1 for RDRO/DDRO).
    pub reward_beta: f64,
    /// `beta * mean T` over chosen rows (`rewards/chosen`).
    pub rewards_chosen: Option<f64>,
    /// `beta * mean T` over rejected rows (`rewards/rejected`).
    pub rewards_rejected: Option<f64>,
    /// `rewards_chosen - rewards_rejected` (`rewards/margins`), when both classes are present.
    pub rewards_margins: Option<f64>,
    /// Mean policy log-prob of chosen rows (`logps/chosen`).
    pub logps_chosen: Option<f64>,
    /// Mean policy log-prob of rejected rows (`logps/rejected`).
    pub logps_rejected: Option<f64>,
    /// Mean `T` over preferred rows (RDRO's target for it is [`LossMetrics::target_t_preferred`]).
    pub mean_t_preferred: Option<f64>,
    /// Mean `T` over non-preferred rows.
    pub mean_t_non_preferred: Option<f64>,
    /// RDRO only: `log(1/alpha)`, the minimiser of the preferred-row loss.
    pub target_t_preferred: Option<f64>,
    /// KTO only: the reference point `z0 = max(0, mean KL-pair log-ratio)` (`kl`).
    pub kl: Option<f64>,
    /// DDRO only: rows whose `T` exceeded the clip and was clamped.
    pub n_clamped: usize,
    /// DPO only: number of pairs.
    pub count_pairs: usize,
    /// DPO only: fraction of pairs with `T_chosen > T_rejected` (`rewards/accuracies`).
    pub pair_accuracy: Option<f64>,
}

fn weighted_mean(a: Option<f64>, na: usize, b: Option<f64>, nb: usize) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if na + nb > 0 => {
            Some((a * na as f64 + b * nb as f64) / (na + nb) as f64)
        }
        (Some(a), _) => Some(a),
        (None, b) => b,
    }
}

impl LossMetrics {
    /// Folds another micro-batch's metrics into these: losses add (correct when every micro-batch
    /// used the step-wide normalizer), counts add, means are re-weighted by their counts (`kl` by
    /// rows, `pair_accuracy` by pairs) and the margin is recomputed.
    pub fn merge(&mut self, other: &LossMetrics) {
        let (c, r) = (self.count_chosen, self.count_rejected);
        let (oc, or) = (other.count_chosen, other.count_rejected);
        self.rewards_chosen = weighted_mean(self.rewards_chosen, c, other.rewards_chosen, oc);
        self.rewards_rejected = weighted_mean(self.rewards_rejected, r, other.rewards_rejected, or);
        self.logps_chosen = weighted_mean(self.logps_chosen, c, other.logps_chosen, oc);
        self.logps_rejected = weighted_mean(self.logps_rejected, r, other.logps_rejected, or);
        self.mean_t_preferred = weighted_mean(self.mean_t_preferred, c, other.mean_t_preferred, oc);
        self.mean_t_non_preferred =
            weighted_mean(self.mean_t_non_preferred, r, other.mean_t_non_preferred, or);
        self.kl = weighted_mean(self.kl, self.rows, other.kl, other.rows);
        self.pair_accuracy = weighted_mean(
            self.pair_accuracy,
            self.count_pairs,
            other.pair_accuracy,
            other.count_pairs,
        );
        self.rewards_margins = match (self.rewards_chosen, self.rewards_rejected) {
            (Some(a), Some(b)) => Some(a - b),
            _ => None,
        };
        self.target_t_preferred = self.target_t_preferred.or(other.target_t_preferred);
        if self.rows == 0 {
            self.reward_beta = other.reward_beta;
        }
        self.loss += other.loss;
        self.rows += other.rows;
        self.count_chosen += oc;
        self.count_rejected += or;
        self.n_clamped += other.n_clamped;
        self.count_pairs += other.count_pairs;
    }
}

impl Objective {
    /// Short name: `"rdro"`, `"ddro"`, `"kto"` or `"dpo"`.
    pub fn name(&self) -> &'static str {
        match self {
            Objective::Rdro(_) => "rdro",
            Objective::Ddro(_) => "ddro",
            Objective::Kto(_) => "kto",
            Objective::Dpo(_) => "dpo",
        }
    }

    /// Whether the objective needs paired rows (DPO).
    pub fn needs_pairs(&self) -> bool {
        matches!(self, Objective::Dpo(_))
    }

    /// Whether the objective needs the log-probs of mismatched (KL) pairs (KTO).
    pub fn needs_kl_pairs(&self) -> bool {
        matches!(self, Objective::Kto(_))
    }

    /// The beta used for reward metrics: the objective's own, or 0.1 for RDRO/DDRO.
    pub fn reward_beta(&self) -> f64 {
        match self {
            Objective::Rdro(_) | Objective::Ddro(_) => DISPLAY_REWARD_BETA,
            Objective::Kto(c) => c.beta,
            Objective::Dpo(c) => c.beta,
        }
    }

    /// The number of units the loss averages over for a batch of `rows` rows: pairs (`rows / 2`) for
    /// DPO, rows otherwise. Sum this over the micro-batches of a step to get the `normalizer`.
    pub fn loss_units(&self, rows: usize) -> usize {
        if self.needs_pairs() {
            rows / 2
        } else {
            rows
        }
    }

    /// Checks the configuration; errors name the offending key.
    pub fn validate(&self) -> Result<(), ObjectiveError> {
        match self {
            Objective::Rdro(c) => {
                check_open_unit(
                    "objective.alpha",
                    c.alpha,
                    "a number in (0, 1) (0 is DDRO) or \"auto\"",
                )?;
                if c.reduction == Reduction::ClassBalanced {
                    check_preferred_fraction(c.preferred_fraction)?;
                }
            }
            Objective::Ddro(c) => {
                if let Some(clip) = c.clip {
                    if !clip.is_finite() {
                        return Err(invalid("objective.ddro_clip", "a finite number", clip));
                    }
                }
                if c.reduction == Reduction::ClassBalanced {
                    check_preferred_fraction(c.preferred_fraction)?;
                }
            }
            Objective::Kto(c) => {
                check_positive("objective.beta", c.beta)?;
                check_non_negative("objective.desirable_weight", c.desirable_weight)?;
                check_non_negative("objective.undesirable_weight", c.undesirable_weight)?;
            }
            Objective::Dpo(c) => check_positive("objective.beta", c.beta)?,
        }
        Ok(())
    }

    /// Computes the loss of one micro-batch (validating the configuration and the inputs first).
    pub fn loss(&self, inputs: &ObjectiveInputs) -> Result<LossOutput, ObjectiveError> {
        self.validate()?;
        match self {
            Objective::Rdro(c) => rdro::loss(c, inputs),
            Objective::Ddro(c) => ddro::loss(c, inputs),
            Objective::Kto(c) => kto::loss(c, inputs),
            Objective::Dpo(c) => dpo::loss(c, inputs),
        }
    }
}

fn invalid(key: &'static str, expected: &'static str, got: f64) -> ObjectiveError {
    ObjectiveError::InvalidConfig {
        key,
        expected,
        got: got.to_string(),
    }
}

fn check_open_unit(
    key: &'static str,
    v: f64,
    expected: &'static str,
) -> Result<(), ObjectiveError> {
    if v > 0.0 && v < 1.0 {
        Ok(())
    } else {
        Err(invalid(key, expected, v))
    }
}

fn check_preferred_fraction(v: f64) -> Result<(), ObjectiveError> {
    check_open_unit(
        "objective.preferred_fraction",
        v,
        "a preferred fraction in (0, 1) for reduction \"class_balanced\" (the training set needs \
         both preferred and non-preferred rows; use reduction \"mean\" otherwise)",
    )
}

fn check_positive(key: &'static str, v: f64) -> Result<(), ObjectiveError> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(invalid(key, "a finite number > 0", v))
    }
}

fn check_non_negative(key: &'static str, v: f64) -> Result<(), ObjectiveError> {
    if v >= 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(invalid(key, "a finite number >= 0", v))
    }
}

/// Validated common view of a batch: the log-ratio `T` (with graph), and host copies.
struct Batch {
    /// `[n]` `T = policy - reference` in the compute dtype, tracked.
    t: Tensor,
    /// Host copy of `T`.
    t_host: Vec<f64>,
    /// Host copy of the policy log-probs.
    policy_host: Vec<f64>,
    /// The compute dtype (F64 when the policy log-probs are F64, F32 otherwise).
    dtype: DType,
}

fn check_vector(name: &str, t: &Tensor, n: usize) -> Result<(), ObjectiveError> {
    match t.dims() {
        [m] if *m == n => Ok(()),
        dims => Err(ObjectiveError::InvalidInput(format!(
            "`{name}` must have shape [{n}] (one value per label), got {dims:?}"
        ))),
    }
}

fn host(t: &Tensor) -> Result<Vec<f64>, ObjectiveError> {
    Ok(t.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

impl Batch {
    fn new(inputs: &ObjectiveInputs) -> Result<Self, ObjectiveError> {
        let n = inputs.labels.len();
        if n == 0 {
            return Err(ObjectiveError::InvalidInput("empty batch".into()));
        }
        check_vector("policy_logps", inputs.policy_logps, n)?;
        check_vector("reference_logps", inputs.reference_logps, n)?;
        if let Some(z) = inputs.normalizer {
            if !(z > 0.0 && z.is_finite()) {
                return Err(ObjectiveError::InvalidInput(format!(
                    "normalizer must be a finite number > 0, got {z}"
                )));
            }
        }
        let dtype = if inputs.policy_logps.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let policy = inputs.policy_logps.to_dtype(dtype)?;
        let reference = inputs.reference_logps.detach().to_dtype(dtype)?;
        let t = (&policy - &reference)?;
        Ok(Self {
            t_host: host(&t)?,
            policy_host: host(&policy)?,
            t,
            dtype,
        })
    }

    /// A `[n]` constant tensor on the batch's device in the compute dtype.
    fn constant(&self, values: Vec<f64>) -> Result<Tensor, ObjectiveError> {
        let n = values.len();
        Ok(Tensor::from_vec(values, n, self.t.device())?.to_dtype(self.dtype)?)
    }
}

fn mean_where(values: &[f64], labels: &[bool], want: bool) -> Option<f64> {
    let (s, c) = values
        .iter()
        .zip(labels)
        .filter(|(_, &l)| l == want)
        .fold((0.0, 0usize), |(s, c), (v, _)| (s + v, c + 1));
    (c > 0).then(|| s / c as f64)
}

/// Per-class metrics shared by all objectives.
fn class_metrics(batch: &Batch, labels: &[bool], beta: f64, loss: f64) -> LossMetrics {
    let count_chosen = labels.iter().filter(|&&l| l).count();
    let mean_t_preferred = mean_where(&batch.t_host, labels, true);
    let mean_t_non_preferred = mean_where(&batch.t_host, labels, false);
    let rewards_chosen = mean_t_preferred.map(|t| beta * t);
    let rewards_rejected = mean_t_non_preferred.map(|t| beta * t);
    LossMetrics {
        loss,
        rows: labels.len(),
        count_chosen,
        count_rejected: labels.len() - count_chosen,
        reward_beta: beta,
        rewards_chosen,
        rewards_rejected,
        rewards_margins: rewards_chosen.zip(rewards_rejected).map(|(a, b)| a - b),
        logps_chosen: mean_where(&batch.policy_host, labels, true),
        logps_rejected: mean_where(&batch.policy_host, labels, false),
        mean_t_preferred,
        mean_t_non_preferred,
        ..Default::default()
    }
}

/// Divides a scalar weighted sum by the normalizer (or `default_units`) and reads its value.
fn finish(
    sum: Tensor,
    inputs: &ObjectiveInputs,
    default_units: usize,
) -> Result<(Tensor, f64), ObjectiveError> {
    let denom = inputs.normalizer.unwrap_or(default_units as f64);
    let loss = (sum / denom)?;
    let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok((loss, value))
}
