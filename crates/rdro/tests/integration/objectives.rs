//! Properties of the objectives (METHOD.md section 6), gradients against finite differences,
//! numerical stability at |T| = 1e4, reductions and normalizers, and configuration errors.

use candle_core::{DType, Device, Tensor, Var};
use rdro::objective::{
    optimal_log_ratio, rdro_grad_non_preferred, rdro_grad_preferred, rdro_loss_non_preferred,
    rdro_loss_preferred, relative_density_ratio, Alpha, DdroConfig, DpoConfig, KtoConfig,
    LossMetrics, Objective, ObjectiveError, ObjectiveInputs, RdroConfig, Reduction,
};

// ---------------------------------------------------------------------------------------------
// helpers

fn rdro(alpha: f64, reduction: Reduction, pi: f64) -> Objective {
    Objective::Rdro(RdroConfig {
        alpha,
        reduction,
        preferred_fraction: pi,
    })
}

fn ddro(clip: Option<f64>, reduction: Reduction, pi: f64) -> Objective {
    Objective::Ddro(DdroConfig {
        clip,
        reduction,
        preferred_fraction: pi,
    })
}

fn kto() -> Objective {
    Objective::Kto(KtoConfig {
        beta: 0.3,
        desirable_weight: 1.5,
        undesirable_weight: 0.7,
    })
}

fn dpo() -> Objective {
    Objective::Dpo(DpoConfig { beta: 0.25 })
}

/// Fixed reference log-probs, so that `policy = T + reference` exercises the subtraction.
fn reference_for(n: usize) -> Vec<f64> {
    (0..n).map(|i| -20.0 - 3.5 * i as f64).collect()
}

/// Loss value and gradient w.r.t. `T` (through the policy log-probs) for log-ratios `t`.
fn loss_grad(
    obj: &Objective,
    t: &[f64],
    labels: &[bool],
    dtype: DType,
    normalizer: Option<f64>,
) -> (f64, Vec<f64>) {
    let dev = Device::Cpu;
    let r = reference_for(t.len());
    let p: Vec<f64> = t.iter().zip(&r).map(|(t, r)| t + r).collect();
    let pol = Var::from_tensor(
        &Tensor::new(p.as_slice(), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
    let reference = Tensor::new(r.as_slice(), &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    // KL pairs for KTO: a fixed positive mean log-ratio (0.4), rotated completions.
    let klp = Tensor::new(&[-30.0f64, -31.0, -29.2, -30.0][..t.len().min(4)], &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let klr = (klp.clone() - 0.4).unwrap();
    let inputs = ObjectiveInputs {
        kl_policy_logps: obj.needs_kl_pairs().then_some(&klp),
        kl_reference_logps: obj.needs_kl_pairs().then_some(&klr),
        normalizer,
        ..ObjectiveInputs::new(pol.as_tensor(), &reference, labels)
    };
    let out = obj.loss(&inputs).unwrap();
    assert_eq!(out.loss.rank(), 0, "the loss is a scalar");
    let grads = out.loss.backward().unwrap();
    let g = grads
        .get(pol.as_tensor())
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    (out.metrics.loss, g)
}

fn loss_f64(obj: &Objective, t: &[f64], labels: &[bool]) -> f64 {
    loss_grad(obj, t, labels, DType::F64, None).0
}

/// Loss and derivative w.r.t. one log-ratio `T` shared by all rows (for minimiser searches).
fn shared_t(obj: &Objective, t: f64, labels: &[bool]) -> (f64, f64) {
    let dev = Device::Cpu;
    let n = labels.len();
    let tv = Var::new(&[t], &dev).unwrap();
    let reference = Tensor::new(reference_for(n).as_slice(), &dev).unwrap();
    let pol = (tv.as_tensor().broadcast_as(n).unwrap() + &reference).unwrap();
    let out = obj
        .loss(&ObjectiveInputs::new(&pol, &reference, labels))
        .unwrap();
    let g = out.loss.backward().unwrap();
    let d = g.get(tv.as_tensor()).unwrap().to_vec1::<f64>().unwrap()[0];
    (out.metrics.loss, d)
}

/// Minimises a convex function of one variable by bisection on its derivative's sign.
fn argmin_by_derivative(f: impl Fn(f64) -> f64, mut lo: f64, mut hi: f64) -> f64 {
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if f(mid) > 0.0 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Minimises a unimodal function by golden-section search on values only.
fn golden_section(f: impl Fn(f64) -> f64, mut a: f64, mut b: f64) -> f64 {
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    while (b - a).abs() > 1e-10 {
        if fc < fd {
            (b, d, fd) = (d, c, fc);
            c = b - g * (b - a);
            fc = f(c);
        } else {
            (a, c, fc) = (c, d, fd);
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    0.5 * (a + b)
}

/// A batch with `n_pos` preferred and `n_neg` non-preferred rows.
fn labels(n_pos: usize, n_neg: usize) -> Vec<bool> {
    let mut l = vec![true; n_pos];
    l.extend(std::iter::repeat_n(false, n_neg));
    l
}

// ---------------------------------------------------------------------------------------------
// METHOD.md section 6

#[test]
fn relative_density_ratio_is_bounded_by_one_over_alpha() {
    for alpha in [0.01, 0.1, 0.39, 0.5, 0.9, 0.99] {
        for i in 0..=40 {
            for j in 0..=40 {
                let (pp, pm) = (i as f64 / 40.0, j as f64 / 40.0 * 3.0);
                if pp == 0.0 && pm == 0.0 {
                    continue;
                }
                let r = relative_density_ratio(pp, pm, alpha);
                assert!(
                    r <= 1.0 / alpha * (1.0 + 1e-15),
                    "alpha {alpha} p+ {pp} p- {pm}: {r}"
                );
            }
        }
        // attained where p- vanishes
        assert!((relative_density_ratio(0.3, 0.0, alpha) - 1.0 / alpha).abs() < 1e-12);
    }
}

#[test]
fn preferred_loss_is_minimised_at_log_one_over_alpha() {
    for (alpha, want) in [(0.39, 0.94161), (0.5, std::f64::consts::LN_2)] {
        assert!((optimal_log_ratio(alpha) - (1.0f64 / alpha).ln()).abs() < 1e-15);
        // through the implementation: one preferred row, values only
        let obj = rdro(alpha, Reduction::Mean, 0.5);
        let t_star = golden_section(|t| loss_f64(&obj, &[t], &[true]), -5.0, 5.0);
        assert!(
            (t_star - want).abs() < 1e-5,
            "alpha {alpha}: argmin {t_star}, want {want}"
        );
        assert!((t_star - optimal_log_ratio(alpha)).abs() < 1e-6);
        // and through its gradient
        let t_star = argmin_by_derivative(|t| shared_t(&obj, t, &[true]).1, -5.0, 5.0);
        assert!(
            (t_star - optimal_log_ratio(alpha)).abs() < 1e-10,
            "{t_star}"
        );
        // scalar reference formula agrees
        let s = golden_section(|t| rdro_loss_preferred(t, alpha), -5.0, 5.0);
        assert!((s - optimal_log_ratio(alpha)).abs() < 1e-6);
    }
    assert!((optimal_log_ratio(0.39) - 0.94161).abs() < 5e-6);
}

#[test]
fn values_and_derivatives_at_zero() {
    for alpha in [0.1, 0.39, 0.5, 0.8] {
        let obj = rdro(alpha, Reduction::Mean, 0.5);
        for dtype in [DType::F32, DType::F64] {
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-15 };
            let (lp, gp) = loss_grad(&obj, &[0.0], &[true], dtype, None);
            let (lm, gm) = loss_grad(&obj, &[0.0], &[false], dtype, None);
            let ln2 = std::f64::consts::LN_2;
            assert!(
                (lp - (1.0 + alpha) * ln2).abs() < tol,
                "{alpha} {dtype:?} l+(0) = {lp}"
            );
            assert!(
                (lm - (1.0 - alpha) * ln2).abs() < tol,
                "{alpha} {dtype:?} l-(0) = {lm}"
            );
            assert!(
                (gp[0] - (alpha - 1.0) / 2.0).abs() < tol,
                "dl+/dT(0) = {}",
                gp[0]
            );
            assert!(
                (gm[0] - (1.0 - alpha) / 2.0).abs() < tol,
                "dl-/dT(0) = {}",
                gm[0]
            );
        }
    }
}

#[test]
fn derivative_bounds_over_a_sweep_including_extremes() {
    let mut ts: Vec<f64> = (-400..=400).map(|i| i as f64 * 0.05).collect();
    ts.extend([-1e4, -1e3, -100.0, -50.0, 50.0, 100.0, 1e3, 1e4]);
    for alpha in [0.05, 0.39, 0.5, 0.95] {
        let obj = rdro(alpha, Reduction::Mean, 0.5);
        for dtype in [DType::F32, DType::F64] {
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-14 };
            for &t in &ts {
                let (lp, gp) = loss_grad(&obj, &[t], &[true], dtype, None);
                let (lm, gm) = loss_grad(&obj, &[t], &[false], dtype, None);
                assert!(lp.is_finite() && lm.is_finite() && gp[0].is_finite() && gm[0].is_finite());
                // closed interval in floating point: sigmoid saturates to exactly 0 or 1; the
                // bounds are the coefficients as the compute dtype represents them
                let (hi_p, hi_m) = if dtype == DType::F32 {
                    (alpha as f32 as f64, (1.0 - alpha) as f32 as f64)
                } else {
                    (alpha, 1.0 - alpha)
                };
                assert!(
                    (-1.0..=hi_p).contains(&gp[0]),
                    "alpha {alpha} T {t}: dl+ = {}",
                    gp[0]
                );
                assert!(
                    (0.0..=hi_m).contains(&gm[0]),
                    "alpha {alpha} T {t}: dl- = {}",
                    gm[0]
                );
                if t.abs() <= 10.0 {
                    assert!(gp[0] > -1.0 && gp[0] < hi_p && gm[0] > 0.0 && gm[0] < hi_m);
                }
                assert!((gp[0] - rdro_grad_preferred(t, alpha)).abs() < tol);
                assert!((gm[0] - rdro_grad_non_preferred(t, alpha)).abs() < tol);
                let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1.0);
                assert!(
                    rel(lp, rdro_loss_preferred(t, alpha)) < tol * 10.0,
                    "l+({t}) = {lp}"
                );
                assert!(
                    rel(lm, rdro_loss_non_preferred(t, alpha)) < tol * 10.0,
                    "l-({t})"
                );
            }
        }
    }
    // DDRO: the preferred-row gradient always pulls T up, however large T already is.
    let d = ddro(None, Reduction::Mean, 0.5);
    let r = rdro(0.39, Reduction::Mean, 0.5);
    for t in [-5.0, 0.0, 1.0, 5.0, 10.0, 20.0, 30.0] {
        let (_, gd) = loss_grad(&d, &[t], &[true], DType::F64, None);
        assert!(gd[0] < 0.0, "DDRO dl+/dT({t}) = {}", gd[0]);
        let (_, gr) = loss_grad(&r, &[t], &[true], DType::F64, None);
        assert_eq!(
            gr[0] > 0.0,
            t > optimal_log_ratio(0.39),
            "RDRO pushes back above its optimum"
        );
    }
}

/// (pi_hat, p+(y), p-(y), N): with N pi_hat p+ preferred and N (1 - pi_hat) p- non-preferred rows
/// sharing one T, the batch loss is the empirical expected loss at y.
const POINTS: [(f64, f64, f64, usize); 5] = [
    (0.3, 0.5, 0.2, 100),
    (0.5, 0.1, 0.6, 100),
    (0.8, 0.25, 0.5, 100),
    (0.2, 0.6, 0.05, 200),
    (0.5, 0.4, 0.4, 50),
];

fn counts(pi: f64, pp: f64, pm: f64, n: usize) -> (usize, usize) {
    let a = (n as f64 * pi * pp).round() as usize;
    let b = (n as f64 * (1.0 - pi) * pm).round() as usize;
    assert!((a as f64 - n as f64 * pi * pp).abs() < 1e-9);
    assert!((b as f64 - n as f64 * (1.0 - pi) * pm).abs() < 1e-9);
    (a, b)
}

#[test]
fn class_balanced_minimiser_is_the_relative_density_ratio() {
    for alpha in [0.1, 0.39, 0.5, 0.9] {
        for (pi, pp, pm, n) in POINTS {
            let (np, nm) = counts(pi, pp, pm, n);
            let obj = rdro(alpha, Reduction::ClassBalanced, pi);
            let lab = labels(np, nm);
            let t_star = argmin_by_derivative(|t| shared_t(&obj, t, &lab).1, -30.0, 30.0);
            let want = relative_density_ratio(pp, pm, alpha);
            assert!(
                (t_star.exp() - want).abs() < 1e-9 * want,
                "alpha {alpha} pi {pi} p+ {pp} p- {pm}: exp(T*) = {} want {want}",
                t_star.exp()
            );
            // the value search agrees
            let t_val = golden_section(|t| shared_t(&obj, t, &lab).0, -10.0, 10.0);
            assert!((t_val - t_star).abs() < 1e-5, "{t_val} vs {t_star}");
        }
    }
}

#[test]
fn mean_reduction_minimiser_formula() {
    for alpha in [0.1, 0.39, 0.5, 0.9] {
        for (pi, pp, pm, n) in POINTS {
            let (np, nm) = counts(pi, pp, pm, n);
            let obj = rdro(alpha, Reduction::Mean, pi);
            let lab = labels(np, nm);
            let t_star = argmin_by_derivative(|t| shared_t(&obj, t, &lab).1, -30.0, 30.0);
            let want = pi * pp / (pi * alpha * pp + (1.0 - pi) * (1.0 - alpha) * pm);
            assert!(
                (t_star.exp() - want).abs() < 1e-9 * want,
                "alpha {alpha} pi {pi}: exp(T*) = {} want {want}",
                t_star.exp()
            );
            if pi == 0.5 {
                // 50/50 data: equals r_alpha
                assert!((want - relative_density_ratio(pp, pm, alpha)).abs() < 1e-12);
            }
        }
    }
}

#[test]
fn consistency_reference_equal_to_mixture_gives_preferred_distribution() {
    // Outcomes y_k with p+ and p-; alpha = pi_hat = 0.4; the data (and the reference) follow
    // q_alpha = alpha p+ + (1 - alpha) p-. The per-outcome minimiser T*_k of the class-balanced
    // empirical loss gives the optimal policy pi_ref exp(T*) which must equal p+.
    let alpha = 0.4;
    let p_plus = [0.4, 0.3, 0.2, 0.1, 0.0];
    let p_minus = [0.05, 0.15, 0.2, 0.3, 0.3];
    let n = 1000;
    let obj = rdro(alpha, Reduction::ClassBalanced, alpha);
    let mut total = 0.0;
    for k in 0..p_plus.len() {
        let (np, nm) = counts(alpha, p_plus[k], p_minus[k], n);
        let pi_ref = alpha * p_plus[k] + (1.0 - alpha) * p_minus[k];
        let lab = labels(np, nm);
        let t_star = argmin_by_derivative(|t| shared_t(&obj, t, &lab).1, -40.0, 40.0);
        let policy = pi_ref * t_star.exp();
        assert!(
            (policy - p_plus[k]).abs() < 1e-9,
            "y{k}: {policy} vs {}",
            p_plus[k]
        );
        // and pi_ref r_alpha = p+ in closed form
        let closed = pi_ref * relative_density_ratio(p_plus[k], p_minus[k], alpha);
        assert!((closed - p_plus[k]).abs() < 1e-15);
        total += policy;
    }
    assert!(
        (total - 1.0).abs() < 1e-9,
        "the optimal policy is normalised: {total}"
    );
}

// ---------------------------------------------------------------------------------------------
// gradients against central finite differences

fn check_fd(obj: &Objective, t: &[f64], labels: &[bool], normalizer: Option<f64>) {
    let (_, g64) = loss_grad(obj, t, labels, DType::F64, normalizer);
    let (_, g32) = loss_grad(obj, t, labels, DType::F32, normalizer);
    let h = 1e-5;
    for i in 0..t.len() {
        let mut tp = t.to_vec();
        tp[i] += h;
        let mut tm = t.to_vec();
        tm[i] -= h;
        let fp = loss_grad(obj, &tp, labels, DType::F64, normalizer).0;
        let fm = loss_grad(obj, &tm, labels, DType::F64, normalizer).0;
        let fd = (fp - fm) / (2.0 * h);
        assert!(
            (g64[i] - fd).abs() < 1e-8 * fd.abs().max(1.0),
            "{} row {i}: backward {} vs fd {fd}",
            obj.name(),
            g64[i]
        );
        assert!(
            (g32[i] - fd).abs() < 2e-6 * fd.abs().max(1.0),
            "{} f32 row {i}: backward {} vs fd {fd}",
            obj.name(),
            g32[i]
        );
    }
}

const T_UNPAIRED: [f64; 6] = [1.3, -0.7, 0.0, 2.5, -3.1, 0.45];
const L_UNPAIRED: [bool; 6] = [true, false, true, false, false, true];

#[test]
fn gradients_match_finite_differences() {
    for reduction in [Reduction::ClassBalanced, Reduction::Mean] {
        for normalizer in [None, Some(15.0)] {
            check_fd(
                &rdro(0.39, reduction, 0.3),
                &T_UNPAIRED,
                &L_UNPAIRED,
                normalizer,
            );
            check_fd(
                &rdro(0.8, reduction, 0.6),
                &T_UNPAIRED,
                &L_UNPAIRED,
                normalizer,
            );
            check_fd(
                &ddro(None, reduction, 0.3),
                &T_UNPAIRED,
                &L_UNPAIRED,
                normalizer,
            );
            // clip 2: row 3 (T 2.5) is clamped, its gradient is 0 on both sides
            check_fd(
                &ddro(Some(2.0), reduction, 0.3),
                &T_UNPAIRED,
                &L_UNPAIRED,
                normalizer,
            );
        }
    }
    for normalizer in [None, Some(9.0)] {
        check_fd(&kto(), &T_UNPAIRED[..4], &L_UNPAIRED[..4], normalizer);
        check_fd(
            &dpo(),
            &T_UNPAIRED,
            &[true, false, true, false, true, false],
            normalizer,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// stability

#[test]
fn stable_at_extreme_log_ratios() {
    let t = [1e4, -1e4, 1e4, -1e4];
    let unpaired = [true, true, false, false];
    let objectives = [
        rdro(0.39, Reduction::ClassBalanced, 0.5),
        rdro(0.39, Reduction::Mean, 0.5),
        ddro(None, Reduction::ClassBalanced, 0.5),
        ddro(Some(5.0), Reduction::Mean, 0.5),
        kto(),
    ];
    for dtype in [DType::F32, DType::F64] {
        for obj in &objectives {
            let (l, g) = loss_grad(obj, &t, &unpaired, dtype, None);
            assert!(l.is_finite(), "{} {dtype:?} loss {l}", obj.name());
            assert!(
                g.iter().all(|g| g.is_finite()),
                "{} {dtype:?} grad {g:?}",
                obj.name()
            );
        }
        let t_pairs = [1e4, -1e4, -1e4, 1e4];
        let (l, g) = loss_grad(&dpo(), &t_pairs, &[true, false, true, false], dtype, None);
        assert!(
            l.is_finite() && g.iter().all(|g| g.is_finite()),
            "dpo {l} {g:?}"
        );
        // DPO pair 1: margin +2e4 (loss 0), pair 2: margin -2e4 (loss beta * 2e4)
        assert!((l - 0.25 * 2e4 / 2.0).abs() < 1e-3 * l, "dpo {l}");
        // RDRO values at the extremes: l+(1e4) = alpha 1e4, l+(-1e4) = 1e4, l-(1e4) = (1-alpha) 1e4
        let (l, g) = loss_grad(
            &rdro(0.39, Reduction::Mean, 0.5),
            &t,
            &unpaired,
            dtype,
            None,
        );
        let want = (0.39e4 + 1e4 + 0.61e4) / 4.0;
        assert!((l - want).abs() < 1e-6 * want, "{l} vs {want}");
        let want_g = [0.39 / 4.0, -1.0 / 4.0, 0.61 / 4.0, 0.0];
        for (a, b) in g.iter().zip(want_g) {
            assert!((a - b).abs() < 1e-7, "{g:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// reductions, normalizer, metrics

#[test]
fn class_balanced_weights_and_one_class_batches() {
    let pi = 0.25;
    let obj = rdro(0.39, Reduction::ClassBalanced, pi);
    let t = [0.3, -0.2, 1.1, 0.7];
    let lab = [true, false, false, true];
    let l = loss_f64(&obj, &t, &lab);
    let want = (rdro_loss_preferred(0.3, 0.39) / (2.0 * pi)
        + rdro_loss_non_preferred(-0.2, 0.39) / (2.0 * (1.0 - pi))
        + rdro_loss_non_preferred(1.1, 0.39) / (2.0 * (1.0 - pi))
        + rdro_loss_preferred(0.7, 0.39) / (2.0 * pi))
        / 4.0;
    assert!((l - want).abs() < 1e-14, "{l} vs {want}");
    // a batch holding one class only is fine
    let l = loss_f64(&obj, &[0.3, 0.7], &[true, true]);
    let want = (rdro_loss_preferred(0.3, 0.39) + rdro_loss_preferred(0.7, 0.39)) / (2.0 * pi) / 2.0;
    assert!((l - want).abs() < 1e-14);
    let (_, g) = loss_grad(&obj, &[-0.4], &[false], DType::F32, None);
    assert!(g[0] > 0.0);
}

#[test]
fn micro_batches_with_step_normalizer_add_up() {
    let cases: Vec<(Objective, Vec<bool>)> = vec![
        (
            rdro(0.39, Reduction::ClassBalanced, 0.4),
            L_UNPAIRED.to_vec(),
        ),
        (rdro(0.5, Reduction::Mean, 0.4), L_UNPAIRED.to_vec()),
        (
            ddro(Some(1.0), Reduction::ClassBalanced, 0.4),
            L_UNPAIRED.to_vec(),
        ),
        (dpo(), vec![true, false, true, false, true, false]),
    ];
    for (obj, lab) in cases {
        let units = obj.loss_units(T_UNPAIRED.len()) as f64;
        let (full, gfull) = loss_grad(&obj, &T_UNPAIRED, &lab, DType::F64, None);
        let (a, ga) = loss_grad(&obj, &T_UNPAIRED[..2], &lab[..2], DType::F64, Some(units));
        let (b, gb) = loss_grad(&obj, &T_UNPAIRED[2..], &lab[2..], DType::F64, Some(units));
        assert!(
            (a + b - full).abs() < 1e-14,
            "{}: {a} + {b} vs {full}",
            obj.name()
        );
        let g: Vec<f64> = ga.into_iter().chain(gb).collect();
        for (x, y) in g.iter().zip(&gfull) {
            assert!((x - y).abs() < 1e-15, "{}", obj.name());
        }
    }
}

#[test]
fn metrics_merge_weights_by_counts() {
    let obj = rdro(0.39, Reduction::Mean, 0.5);
    let dev = Device::Cpu;
    let run = |t: &[f64], lab: &[bool]| -> LossMetrics {
        let p = Tensor::new(t, &dev).unwrap();
        let r = p.zeros_like().unwrap();
        obj.loss(&ObjectiveInputs::new(&p, &r, lab))
            .unwrap()
            .metrics
    };
    let mut m = run(&[1.0, 2.0, -1.0], &[true, true, false]);
    m.merge(&run(&[4.0], &[true]));
    let whole = run(&[1.0, 2.0, -1.0, 4.0], &[true, true, false, true]);
    assert_eq!((m.rows, m.count_chosen, m.count_rejected), (4, 3, 1));
    assert!((m.mean_t_preferred.unwrap() - whole.mean_t_preferred.unwrap()).abs() < 1e-12);
    assert!((m.rewards_margins.unwrap() - whole.rewards_margins.unwrap()).abs() < 1e-12);
    assert_eq!(m.target_t_preferred, whole.target_t_preferred);
}

// ---------------------------------------------------------------------------------------------
// configuration and input errors

fn key_of(err: ObjectiveError) -> &'static str {
    match err {
        ObjectiveError::InvalidConfig { key, .. } => key,
        other => panic!("expected a config error, got {other}"),
    }
}

#[test]
fn configuration_errors_name_the_key() {
    let dev = Device::Cpu;
    let t = Tensor::new(&[0.0f32, 0.0], &dev).unwrap();
    let inputs = ObjectiveInputs::new(&t, &t, &[true, false]);
    for alpha in [0.0, 1.0, -0.2, 1.5, f64::NAN] {
        let err = rdro(alpha, Reduction::Mean, 0.5).loss(&inputs).unwrap_err();
        assert!(err.to_string().contains("objective.alpha"), "{err}");
        assert_eq!(key_of(err), "objective.alpha");
    }
    for pi in [0.0, 1.0, f64::NAN] {
        let err = rdro(0.4, Reduction::ClassBalanced, pi)
            .validate()
            .unwrap_err();
        assert_eq!(key_of(err), "objective.preferred_fraction");
        let err = ddro(None, Reduction::ClassBalanced, pi)
            .validate()
            .unwrap_err();
        assert_eq!(key_of(err), "objective.preferred_fraction");
        // unused by the plain mean
        rdro(0.4, Reduction::Mean, pi).validate().unwrap();
    }
    for beta in [0.0, -0.1, f64::INFINITY] {
        let err = Objective::Kto(KtoConfig {
            beta,
            ..Default::default()
        })
        .validate()
        .unwrap_err();
        assert_eq!(key_of(err), "objective.beta");
        let err = Objective::Dpo(DpoConfig { beta }).validate().unwrap_err();
        assert_eq!(key_of(err), "objective.beta");
    }
    let err = Objective::Kto(KtoConfig {
        desirable_weight: -1.0,
        ..Default::default()
    })
    .validate()
    .unwrap_err();
    assert_eq!(key_of(err), "objective.desirable_weight");
    let err = ddro(Some(f64::INFINITY), Reduction::Mean, 0.5)
        .validate()
        .unwrap_err();
    assert_eq!(key_of(err), "objective.ddro_clip");
}

#[test]
fn alpha_auto_and_serde_names() {
    assert_eq!(Alpha::Auto.resolve(0.39).unwrap(), 0.39);
    assert_eq!(Alpha::Value(0.5).resolve(0.39).unwrap(), 0.5);
    assert_eq!(
        key_of(Alpha::Value(0.0).resolve(0.39).unwrap_err()),
        "objective.alpha"
    );
    assert_eq!(
        key_of(Alpha::Auto.resolve(1.0).unwrap_err()),
        "objective.alpha"
    );
    let a: Alpha = serde_json::from_str("\"auto\"").unwrap();
    assert_eq!(a, Alpha::Auto);
    let a: Alpha = serde_json::from_str("0.39").unwrap();
    assert_eq!(a, Alpha::Value(0.39));
    assert!(serde_json::from_str::<Alpha>("\"half\"").is_err());
    assert_eq!(serde_json::to_string(&Alpha::Auto).unwrap(), "\"auto\"");
    let r: Reduction = serde_json::from_str("\"class_balanced\"").unwrap();
    assert_eq!(r, Reduction::ClassBalanced);
    let r: Reduction = serde_json::from_str("\"mean\"").unwrap();
    assert_eq!(r, Reduction::Mean);
    assert_eq!(Reduction::default(), Reduction::ClassBalanced);
}

#[test]
fn input_errors() {
    let dev = Device::Cpu;
    let t2 = Tensor::new(&[0.0f32, 0.0], &dev).unwrap();
    let t3 = Tensor::new(&[0.0f32, 0.0, 0.0], &dev).unwrap();
    let obj = rdro(0.5, Reduction::Mean, 0.5);
    let err = obj
        .loss(&ObjectiveInputs::new(&t3, &t2, &[true, false]))
        .unwrap_err();
    assert!(matches!(err, ObjectiveError::InvalidInput(_)), "{err}");
    let err = obj.loss(&ObjectiveInputs::new(&t2, &t2, &[])).unwrap_err();
    assert!(matches!(err, ObjectiveError::InvalidInput(_)), "{err}");
    let bad = ObjectiveInputs {
        normalizer: Some(0.0),
        ..ObjectiveInputs::new(&t2, &t2, &[true, false])
    };
    assert!(matches!(
        obj.loss(&bad),
        Err(ObjectiveError::InvalidInput(_))
    ));
}

#[test]
fn names_and_needs() {
    let all = [
        rdro(0.5, Reduction::Mean, 0.5),
        ddro(None, Reduction::Mean, 0.5),
        kto(),
        dpo(),
    ];
    let names: Vec<_> = all.iter().map(|o| o.name()).collect();
    assert_eq!(names, ["rdro", "ddro", "kto", "dpo"]);
    let pairs: Vec<_> = all.iter().map(|o| o.needs_pairs()).collect();
    assert_eq!(pairs, [false, false, false, true]);
    let kl: Vec<_> = all.iter().map(|o| o.needs_kl_pairs()).collect();
    assert_eq!(kl, [false, false, true, false]);
    assert_eq!(all[0].reward_beta(), 0.1);
    assert_eq!(all[3].reward_beta(), 0.25);
    assert_eq!(all[3].loss_units(6), 3);
    assert_eq!(all[0].loss_units(6), 6);
}
