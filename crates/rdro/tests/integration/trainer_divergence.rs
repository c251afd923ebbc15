//! The paper's central claim in miniature: on data whose preferred completions lie where
//! non-preferred ones never occur (the generated task: even against odd token ids), DDRO's log-ratio
//! on preferred samples keeps growing, while RDRO's mean preferred log-ratio settles near its bound
//! log(1/alpha).
//!
//! What is not asserted, and why: that DDRO's gradient norm keeps *growing* in a stable run. In the
//! logistic form of METHOD.md, DDRO's preferred-sample loss gradient is -sigmoid(-T): it always
//! pulls T up, but its size decays like e^-T as T grows, and on these models the parameter gradient
//! norm falls with it (measured: from ~0.8 to ~0.003 over 300 steps at lr 1e-2; the same fall at
//! learning rates 1e-3 to 2e-2, completions of 3 to 16 tokens, 24 to 512 prompts and 1 or 4
//! completions per prompt; flat, not growing, when 8 or 14 one-token completions per prompt compete
//! for probability mass). Nor do exploding gradients separate the two here: at lr 3e-2 both turn
//! unstable in some seeds (gradient-norm spikes of 10-80x their early level: DDRO in 4 of 8 seeds
//! and RDRO in 2 of 8, seeds 0 to 7), and which seeds do changes with float-level differences in
//! the kernels, so no such test would be meaningful.
//!
//! Both runs' gradient norms are printed (`-- --nocapture`).

use crate::trainer_common;

use rdro::trainer::{self, EvalRecord, Outcome, RunOptions};
use trainer_common::Recorder;

/// Trains the generated task for 300 steps of 8 rows at lr 1e-2 without clipping.
fn train(kind: &str) -> (Vec<EvalRecord>, Vec<f64>, Option<f64>) {
    let tmp = tempfile::tempdir().unwrap();
    let kind_set = format!("objective.kind=\"{kind}\"");
    let mut settings = vec![
        kind_set.as_str(),
        "train.max_steps=300",
        "train.batch_size=8",
        "train.lr=1e-2",
        "train.max_grad_norm=0.0",
        "output.eval_steps=50",
        "train.reference_cache=\"\"",
    ];
    if kind == "rdro" {
        settings.push("objective.alpha=0.5");
    }
    let config = trainer_common::small_task(tmp.path(), &settings);
    let mut rec = Recorder::default();
    let out = trainer::run(&config, RunOptions::default(), &mut rec).unwrap();
    let Outcome::Finished(summary) = out else {
        panic!("{out:?}")
    };
    let norms = rec.steps.iter().map(|s| s.grad_norm).collect();
    (rec.evals, norms, summary.alpha)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn ddro_diverges_where_rdro_settles_near_log_one_over_alpha() {
    let (rdro, rdro_norms, alpha) = train("rdro");
    let (ddro, ddro_norms, _) = train("ddro");
    let target = (1.0 / alpha.unwrap_or(0.5)).ln();
    let t = |e: &[EvalRecord]| -> Vec<f64> { e.iter().map(|r| r.t_preferred.unwrap()).collect() };
    let (tr, td) = (t(&rdro), t(&ddro));
    eprintln!("target {target:.3}\nrdro T+ {tr:?}\nddro T+ {td:?}");
    let n = rdro_norms.len();
    eprintln!(
        "grad norm (first/last 50 steps): rdro {:.3} / {:.3}, ddro {:.3} / {:.3}",
        mean(&rdro_norms[..50]),
        mean(&rdro_norms[n - 50..]),
        mean(&ddro_norms[..50]),
        mean(&ddro_norms[n - 50..])
    );
    // Both learn the preference (from chance).
    let acc = |e: &[EvalRecord]| e.last().unwrap().preference_accuracy.unwrap();
    eprintln!("accuracy: rdro {}, ddro {}", acc(&rdro), acc(&ddro));
    assert!(acc(&rdro) > 0.6 && acc(&ddro) > 0.6);
    // RDRO: the mean preferred T ends near log(1/alpha) and stops moving much.
    let last = *tr.last().unwrap();
    assert!(
        last > 0.3 * target && last < 3.0 * target,
        "RDRO mean preferred T {last} not near log(1/alpha) = {target}"
    );
    // DDRO: the preferred T keeps growing, past RDRO's bound and still rising at the end.
    let (mid, end) = (td[td.len() / 2], *td.last().unwrap());
    assert!(end > 3.0 * target, "DDRO preferred T {end} stayed bounded");
    assert!(
        end > mid,
        "DDRO preferred T stopped growing: {mid} -> {end}"
    );
    assert!(end > 2.0 * last);
}
