//! The training loop: from a validated [`Config`] to a PEFT adapter folder.
//!
//! [`run`] loads the base (frozen, optionally quantized), attaches or loads the adapters, prepares
//! the data, computes the reference log-probs (adapter off; cached on disk, see [`mod@reference`]),
//! evaluates once, trains with gradient accumulation, clipping, AdamW and a warmup schedule,
//! evaluates every `output.eval_steps`, checkpoints every `output.save_steps` (and on interrupt),
//! and finally evaluates again and writes the adapter.
//!
//! The run works in `<output.dir>.partial/` (metrics.jsonl, checkpoints/) and renames that folder
//! to `output.dir` only when everything is written, so a failed run never leaves a half-written
//! adapter at `output.dir`.
//!
//! Determinism: the data order of epoch `e` is a permutation seeded by `(seed, e)`, the dropout
//! masks of micro-batch `m` of step `s` are seeded by `(seed, s, m)`, and checkpoints hold the
//! exact adapter and optimizer state, so a resumed run ends bit-identical to an uninterrupted one
//! on the CPU.

pub mod checkpoint;
pub mod reference;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rdro_lora::peft::{self, AdapterConfig, ModelCard, Recipe};
use rdro_lora::{ForwardMode, LoraConfig};
use rdro_models::{Batch, LlamaModel, ModelSource};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{Config, ConfigError};
use crate::data::{self, TokenizedDataset, TokenizedExample};
use crate::objective::{LossMetrics, Objective, ObjectiveError, ObjectiveInputs};
use crate::optim::{clip_grad_norm, warmup_steps_from_ratio, AdamW, OptimError, Schedule};
pub use checkpoint::TrainState;

/// Errors of a training run.
#[derive(Debug, Error)]
pub enum TrainError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Reading or preparing the data failed.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] rdro_models::ModelError),
    /// Resolving the base model failed.
    #[error("model.base: {0}")]
    Base(String),
    /// Adapter files could not be read or written.
    #[error(transparent)]
    Adapter(#[from] rdro_lora::LoraError),
    /// The objective rejected its inputs.
    #[error(transparent)]
    Objective(#[from] ObjectiveError),
    /// The optimizer failed.
    #[error(transparent)]
    Optim(#[from] OptimError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Generating the default task failed.
    #[error(transparent)]
    Synthetic(#[from] crate::synthetic::SyntheticError),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A checkpoint is unusable or missing.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The output folder is in the way.
    #[error("output.dir: {0}")]
    Output(String),
    /// Too many steps in a row had a NaN or inf loss or gradient.
    #[error(
        "stopped: {0} steps in a row had a NaN or infinite loss or gradient (train.max_bad_steps); \
         lower train.lr, enable train.max_grad_norm, or check the data"
    )]
    Diverged(usize),
    /// The data do not fit the objective.
    #[error("{0}")]
    Incompatible(String),
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Metrics of one optimizer step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps completed (1-based).
    pub step: usize,
    /// Fractional epoch.
    pub epoch: f64,
    /// The step's loss (sum over micro-batches with the step-wide normalizer).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub learning_rate: f64,
    /// Non-padding tokens per second of the step (policy forward and backward).
    pub tokens_per_second: f64,
    /// Whether the step was skipped (NaN/inf).
    pub skipped: bool,
    /// `beta * mean T` of preferred rows.
    pub rewards_chosen: Option<f64>,
    /// `beta * mean T` of non-preferred rows.
    pub rewards_rejected: Option<f64>,
    /// Difference of the two.
    pub rewards_margins: Option<f64>,
    /// Mean T of preferred rows.
    pub t_preferred: Option<f64>,
    /// Mean T of non-preferred rows.
    pub t_non_preferred: Option<f64>,
    /// RDRO's target `log(1/alpha)` for `t_preferred`.
    pub t_preferred_target: Option<f64>,
    /// KTO's reference point.
    pub kl: Option<f64>,
    /// DDRO: clamped rows.
    pub n_clamped: usize,
}

/// Metrics of one evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Steps completed when it ran.
    pub step: usize,
    /// Objective loss over the evaluation set.
    pub loss: f64,
    /// `beta * mean T` of preferred rows.
    pub rewards_chosen: Option<f64>,
    /// `beta * mean T` of non-preferred rows.
    pub rewards_rejected: Option<f64>,
    /// Difference of the two.
    pub rewards_margins: Option<f64>,
    /// Mean T of preferred rows.
    pub t_preferred: Option<f64>,
    /// Mean T of non-preferred rows.
    pub t_non_preferred: Option<f64>,
    /// Fraction of (preferred, non-preferred) couples of the same prompt (or pair) with
    /// `T_preferred > T_non_preferred` (ties count half); `None` when there is no couple.
    pub preference_accuracy: Option<f64>,
    /// Couples counted in `preference_accuracy`.
    pub couples: usize,
    /// Rows evaluated.
    pub rows: usize,
}

/// What a run reports while it goes.
pub trait Observer {
    /// Training is about to start (after loading, data and reference log-probs).
    fn on_start(&mut self, _info: &RunInfo) {}
    /// A step finished.
    fn on_step(&mut self, _record: &StepRecord) {}
    /// An evaluation finished.
    fn on_eval(&mut self, _record: &EvalRecord) {}
    /// A line of information.
    fn on_message(&mut self, _message: &str) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Silent;

impl Observer for Silent {}

/// Facts about the run, given to [`Observer::on_start`].
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    /// The objective's name.
    pub objective: String,
    /// The resolved alpha (RDRO).
    pub alpha: Option<f64>,
    /// Training examples.
    pub train_examples: usize,
    /// Evaluation examples.
    pub eval_examples: usize,
    /// Preferred fraction of the training set.
    pub preferred_fraction: f64,
    /// Trainable parameters (elements).
    pub trainable_parameters: usize,
    /// Total optimizer steps.
    pub total_steps: usize,
    /// The step training starts at (non-zero when resuming).
    pub start_step: usize,
    /// Whether the reference log-probs came from the disk cache.
    pub reference_from_cache: bool,
}

/// Where to resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// The newest checkpoint of the run's working folder.
    Latest,
    /// A given checkpoint folder.
    From(PathBuf),
}

/// Options of [`run`] beyond the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Resume from a checkpoint.
    pub resume: Option<Resume>,
    /// When set (e.g. by a Ctrl-C handler), the run writes a checkpoint after the current step
    /// and stops.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Stop (with a checkpoint) once this many steps are done.
    pub stop_after_step: Option<usize>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Training completed and the adapter was written.
    Finished(Box<Summary>),
    /// Training stopped early (interrupt or `stop_after_step`) after writing a checkpoint.
    Stopped {
        /// The checkpoint written.
        checkpoint: PathBuf,
        /// Steps done.
        step: usize,
    },
}

/// The result of a completed run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The adapter folder.
    pub adapter_dir: PathBuf,
    /// Steps taken.
    pub steps: usize,
    /// Steps skipped for NaN/inf.
    pub skipped_steps: usize,
    /// Evaluation before training.
    pub before: Option<EvalRecord>,
    /// Evaluation after training.
    pub after: Option<EvalRecord>,
    /// Every step's record of this process (not of earlier processes of a resumed run).
    pub history: Vec<StepRecord>,
    /// Wall-clock seconds of the training loop in this process.
    pub train_seconds: f64,
    /// The resolved alpha (RDRO).
    pub alpha: Option<f64>,
}

/// The working folder of a run whose adapter goes to `dir`.
pub fn work_dir(dir: &Path) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    dir.with_file_name(name)
}

fn mix(a: u64, b: u64) -> u64 {
    rdro_lora::layer::splitmix64(a ^ rdro_lora::layer::splitmix64(b))
}

/// The dropout seed of micro-batch `micro` of step `step`.
pub fn dropout_seed(seed: u64, step: usize, micro: usize) -> u64 {
    mix(mix(seed, 0xd0 + step as u64), micro as u64)
}

/// The unit order of `epoch`: a seeded permutation, or data order without shuffling.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(seed, 0xe90c + epoch as u64));
        order.shuffle(&mut rng);
    }
    order
}

/// Groups examples into units: pairs (chosen, rejected) for paired data, single rows otherwise.
fn units_of(set: &TokenizedDataset) -> Vec<Vec<usize>> {
    if set.is_paired() {
        set.pairs().into_iter().map(|(a, b)| vec![a, b]).collect()
    } else {
        (0..set.examples.len()).map(|i| vec![i]).collect()
    }
}

fn resolve_base(config: &Config) -> Result<(ModelSource, Option<String>), TrainError> {
    let mut options = rdro_models::hub::HubOptions::from_env();
    options.revision = config.model.revision.clone();
    let resolved = rdro_models::hub::resolve_model(&config.model.base, &options)
        .map_err(|e| TrainError::Base(e.to_string()))?;
    Ok((resolved.source, resolved.hub_id))
}

fn load_tokenizer(
    config: &Config,
    source: &ModelSource,
) -> Result<Option<data::TokenizerBundle>, TrainError> {
    let hub = data::HubOptions::from_env();
    if let Some(spec) = &config.model.tokenizer {
        let p = Path::new(spec);
        let bundle = if p.is_dir() {
            data::TokenizerBundle::from_dir(p)?
        } else {
            data::TokenizerBundle::from_pretrained(spec, &hub)?
        };
        return Ok(Some(bundle));
    }
    match source {
        ModelSource::Folder(dir) if dir.join("tokenizer.json").is_file() => {
            Ok(Some(data::TokenizerBundle::from_dir(dir)?))
        }
        _ => Ok(None),
    }
}

/// A model, the objective and data: what the loop and the evaluation share.
struct Ctx<'a> {
    model: &'a LlamaModel,
    objective: Objective,
    pad_id: u32,
}

fn rows_of<'e>(examples: &'e [TokenizedExample], idx: &[usize]) -> Vec<(&'e [u32], &'e [u32])> {
    idx.iter()
        .map(|&i| {
            (
                examples[i].prompt_ids.as_slice(),
                examples[i].completion_ids.as_slice(),
            )
        })
        .collect()
}

/// KTO's mismatched rows: prompt `i` with the completion of row `i - 1` (rotated).
fn kl_rows<'e>(rows: &[(&'e [u32], &'e [u32])]) -> Vec<(&'e [u32], &'e [u32])> {
    let n = rows.len();
    (0..n)
        .map(|i| (rows[i].0, rows[(i + n - 1) % n].1))
        .collect()
}

impl Ctx<'_> {
    fn logps(&self, rows: &[(&[u32], &[u32])], mode: ForwardMode) -> Result<Tensor, TrainError> {
        let batch = Batch::from_prompt_completion(rows, self.pad_id)?;
        Ok(self
            .model
            .token_log_probs(&batch, mode)?
            .per_sequence()?
            .detach())
    }

    fn kl_inputs(&self, rows: &[(&[u32], &[u32])]) -> Result<Option<(Tensor, Tensor)>, TrainError> {
        if !self.objective.needs_kl_pairs() {
            return Ok(None);
        }
        let kl = kl_rows(rows);
        Ok(Some((
            self.logps(&kl, ForwardMode::POLICY_EVAL)?,
            self.logps(&kl, ForwardMode::REFERENCE)?,
        )))
    }

    /// Evaluates on `examples` with reference log-probs `refs`.
    fn evaluate(
        &self,
        examples: &[TokenizedExample],
        units: &[Vec<usize>],
        refs: &[f32],
        batch_size: usize,
        step: usize,
    ) -> Result<EvalRecord, TrainError> {
        let mut policy = Vec::with_capacity(examples.len());
        let mut kl_p = Vec::new();
        let mut kl_r = Vec::new();
        let mut order = Vec::with_capacity(examples.len());
        for chunk in units.chunks(batch_size.max(1)) {
            let idx: Vec<usize> = chunk.iter().flatten().copied().collect();
            let rows = rows_of(examples, &idx);
            policy.extend(
                self.logps(&rows, ForwardMode::POLICY_EVAL)?
                    .to_vec1::<f32>()?,
            );
            if let Some((p, r)) = self.kl_inputs(&rows)? {
                kl_p.extend(p.to_vec1::<f32>()?);
                kl_r.extend(r.to_vec1::<f32>()?);
            }
            order.extend(idx);
        }
        let dev = Device::Cpu;
        let n = order.len();
        let refs_o: Vec<f32> = order.iter().map(|&i| refs[i]).collect();
        let labels: Vec<bool> = order.iter().map(|&i| examples[i].label).collect();
        let p = Tensor::from_vec(policy.clone(), n, &dev)?;
        let r = Tensor::from_vec(refs_o.clone(), n, &dev)?;
        let klp = (!kl_p.is_empty())
            .then(|| Tensor::from_vec(kl_p, n, &dev))
            .transpose()?;
        let klr = (!kl_r.is_empty())
            .then(|| Tensor::from_vec(kl_r, n, &dev))
            .transpose()?;
        let inputs = ObjectiveInputs {
            policy_logps: &p,
            reference_logps: &r,
            labels: &labels,
            kl_policy_logps: klp.as_ref(),
            kl_reference_logps: klr.as_ref(),
            normalizer: None,
        };
        let m = self.objective.loss(&inputs)?.metrics;
        // Preference accuracy over (preferred, non-preferred) couples of the same group.
        let t: Vec<f64> = policy
            .iter()
            .zip(&refs_o)
            .map(|(a, b)| *a as f64 - *b as f64)
            .collect();
        let mut groups: std::collections::BTreeMap<(Option<usize>, Vec<u32>), Vec<usize>> =
            Default::default();
        for (k, &i) in order.iter().enumerate() {
            let e = &examples[i];
            let key = match e.pair_id {
                Some(id) => (Some(id), Vec::new()),
                None => (None, e.prompt_ids.clone()),
            };
            groups.entry(key).or_default().push(k);
        }
        let (mut hits, mut couples) = (0.0, 0usize);
        for members in groups.values() {
            for &a in members.iter().filter(|&&a| labels[a]) {
                for &b in members.iter().filter(|&&b| !labels[b]) {
                    couples += 1;
                    hits += if t[a] > t[b] {
                        1.0
                    } else if t[a] == t[b] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        Ok(EvalRecord {
            step,
            loss: m.loss,
            rewards_chosen: m.rewards_chosen,
            rewards_rejected: m.rewards_rejected,
            rewards_margins: m.rewards_margins,
            t_preferred: m.mean_t_preferred,
            t_non_preferred: m.mean_t_non_preferred,
            preference_accuracy: (couples > 0).then(|| hits / couples as f64),
            couples,
            rows: n,
        })
    }
}

fn append_jsonl(path: &Path, kind: &str, value: &impl Serialize) -> Result<(), TrainError> {
    let mut v = serde_json::to_value(value).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("kind".into(), kind.into());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::io(path, e))?;
    writeln!(f, "{v}").map_err(|e| TrainError::io(path, e))
}

fn folder_is_non_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// Runs training as configured. See the module documentation.
pub fn run(
    config: &Config,
    options: RunOptions,
    observer: &mut dyn Observer,
) -> Result<Outcome, TrainError> {
    config.validate()?;
    if let Some(s) = &config.synthetic {
        if crate::synthetic::ensure(s)? {
            observer.on_message(&format!("generated the default task in {}", s.dir));
        }
    }
    let out_dir = PathBuf::from(&config.output.dir);
    let work = work_dir(&out_dir);
    let checkpoints = work.join("checkpoints");
    if folder_is_non_empty(&out_dir) && !config.output.overwrite {
        return Err(TrainError::Output(format!(
            "{} already exists and is not empty; choose another output.dir or set output.overwrite = true",
            out_dir.display()
        )));
    }
    // Resume point.
    let resume_from = match &options.resume {
        None => None,
        Some(Resume::From(p)) => Some(p.clone()),
        Some(Resume::Latest) => Some(checkpoint::latest(&checkpoints).ok_or_else(|| {
            TrainError::Checkpoint(format!(
                "no checkpoint to resume in {}",
                checkpoints.display()
            ))
        })?),
    };
    if resume_from.is_none() && work.exists() {
        if config.output.overwrite {
            std::fs::remove_dir_all(&work).map_err(|e| TrainError::io(&work, e))?;
        } else {
            return Err(TrainError::Output(format!(
                "{} holds an unfinished run; continue it with --resume, or remove it \
                 (or set output.overwrite = true)",
                work.display()
            )));
        }
    }
    std::fs::create_dir_all(&work).map_err(|e| TrainError::io(&work, e))?;
    let metrics_path = work.join("metrics.jsonl");

    // Base model.
    let (source, hub_id) = resolve_base(config)?;
    let device = config.model.candle_device()?;
    let load_options = rdro_models::LoadOptions {
        quantization: config.model.quant_type()?,
        compute_dtype: config.model.dtype()?,
        device: device.clone(),
    };
    let mut model = rdro_models::load(&source, &load_options)?.model;
    let base_name = hub_id.clone().unwrap_or_else(|| config.model.base.clone());

    // Data.
    let tokenizer = load_tokenizer(config, &source)?;
    let prepared = data::prepare(
        &config.data,
        tokenizer.as_ref(),
        &data::HubOptions::from_env(),
        config.train.seed,
    )?;
    let train_set = prepared.train;
    let eval_set = prepared.eval;
    if train_set.examples.is_empty() {
        return Err(TrainError::Incompatible(
            "data.train: no training examples".into(),
        ));
    }
    let pi_hat = train_set.preferred_fraction();
    let objective = config.objective.build(pi_hat)?;
    if objective.needs_pairs() && !train_set.is_paired() {
        return Err(TrainError::Incompatible(format!(
            "objective.kind = \"dpo\" needs paired data ({{prompt, chosen, rejected}}); {} holds {} rows",
            config.data.train,
            train_set.kind.name()
        )));
    }
    let pad_id = tokenizer
        .as_ref()
        .and_then(|t| t.eos_token_id())
        .unwrap_or(0);

    // Adapters.
    let mut lora: LoraConfig = config.lora.lora_config();
    let mut state = TrainState {
        seed: config.train.seed,
        ..Default::default()
    };
    if let Some(ckpt) = &resume_from {
        state = checkpoint::read_state(ckpt)?;
        let adapter = AdapterConfig::read(ckpt)?;
        lora = LoraConfig {
            dropout: config.lora.dropout,
            ..adapter.lora_config()
        };
        let tensors = peft::read_weights(ckpt, &device)?;
        model.load_adapter(&lora, &tensors)?;
    } else if let Some(init) = &config.lora.init_adapter {
        let dir = Path::new(init);
        let adapter = AdapterConfig::read(dir)?;
        lora = LoraConfig {
            dropout: config.lora.dropout,
            ..adapter.lora_config()
        };
        let tensors = peft::read_weights(dir, &device)?;
        model.load_adapter(&lora, &tensors)?;
    } else {
        model.attach_adapters(&lora, config.train.seed)?;
    }
    let params = model.trainable_parameters();
    let n_params: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
    let mut optimizer = AdamW::new(params, config.train.adamw())?;
    if let Some(ckpt) = &resume_from {
        optimizer.load(
            ckpt.join(checkpoint::STATE_DIR)
                .join(checkpoint::OPTIMIZER_FILE),
        )?;
    }

    // Reference log-probs.
    let eval_batch = config.train.eval_batch();
    let settings = format!(
        "quant={} dtype={} device={}",
        config.model.quantization,
        config.model.compute_dtype,
        if device.is_cpu() { "cpu" } else { "gpu" }
    );
    let cache_dir = (!config.train.reference_cache.is_empty())
        .then(|| PathBuf::from(&config.train.reference_cache));
    let base_fp = if cache_dir.is_some() {
        reference::base_fingerprint(&source)?
    } else {
        String::new()
    };
    let ctx = Ctx {
        model: &model,
        objective,
        pad_id,
    };
    let mut from_cache = false;
    let train_refs = if config.train.precompute_reference {
        let key = reference::cache_key(&base_fp, &settings, &train_set.examples);
        let (v, hit) = reference::cached_or_compute(
            &model,
            &train_set.examples,
            eval_batch,
            pad_id,
            cache_dir.as_deref(),
            &key,
        )?;
        from_cache = hit;
        Some(v)
    } else {
        None
    };
    let eval_refs = match &eval_set {
        Some(e) => {
            let key = reference::cache_key(&base_fp, &settings, &e.examples);
            Some(
                reference::cached_or_compute(
                    &model,
                    &e.examples,
                    eval_batch,
                    pad_id,
                    cache_dir.as_deref(),
                    &key,
                )?
                .0,
            )
        }
        None => None,
    };
    let eval_units = eval_set.as_ref().map(units_of).unwrap_or_default();

    // Schedule.
    let units = units_of(&train_set);
    let per_step = config.train.batch_size * config.train.grad_accum;
    let steps_per_epoch = units.len().div_ceil(per_step).max(1);
    let total_steps = if config.train.max_steps > 0 {
        config.train.max_steps
    } else {
        config.train.epochs * steps_per_epoch
    };
    let warmup = config
        .train
        .warmup_steps
        .unwrap_or_else(|| warmup_steps_from_ratio(config.train.warmup_ratio, total_steps));
    let schedule = Schedule {
        kind: config.train.schedule,
        warmup_steps: warmup,
        total_steps,
        peak_lr: config.train.lr,
    };
    state.total_steps = total_steps;

    let alpha = match objective {
        Objective::Rdro(c) => Some(c.alpha),
        _ => None,
    };
    observer.on_start(&RunInfo {
        objective: objective.name().into(),
        alpha,
        train_examples: train_set.examples.len(),
        eval_examples: eval_set.as_ref().map_or(0, |e| e.examples.len()),
        preferred_fraction: pi_hat,
        trainable_parameters: n_params,
        total_steps,
        start_step: state.step,
        reference_from_cache: from_cache,
    });

    let evaluate = |step: usize| -> Result<Option<EvalRecord>, TrainError> {
        match (&eval_set, &eval_refs) {
            (Some(e), Some(r)) => Ok(Some(ctx.evaluate(
                &e.examples,
                &eval_units,
                r,
                eval_batch,
                step,
            )?)),
            _ => Ok(None),
        }
    };
    if resume_from.is_none() {
        state.before = evaluate(0)?;
        if let Some(b) = &state.before {
            append_jsonl(&metrics_path, "eval", b)?;
            observer.on_eval(b);
        }
    }

    let seed = config.train.seed;
    let shuffle = config.train.shuffle;
    let mut order = epoch_order(units.len(), seed, state.epoch, shuffle);
    let mut history = Vec::new();
    let started = Instant::now();
    let write_checkpoint = |state: &TrainState, optimizer: &AdamW| -> Result<PathBuf, TrainError> {
        let dir = checkpoints.join(checkpoint::name(state.step));
        checkpoint::save(
            &dir,
            &model,
            &lora,
            Some(base_name.clone()),
            optimizer,
            state,
        )?;
        Ok(dir)
    };
    while state.step < total_steps {
        let step_start = Instant::now();
        // Units of this step.
        let mut step_units: Vec<usize> = Vec::with_capacity(per_step);
        while step_units.len() < per_step {
            if state.position >= order.len() {
                // The last step of an epoch may be short; the next step starts a new epoch.
                if !step_units.is_empty() {
                    break;
                }
                state.epoch += 1;
                state.position = 0;
                order = epoch_order(units.len(), seed, state.epoch, shuffle);
            }
            step_units.push(order[state.position]);
            state.position += 1;
        }
        let micro: Vec<Vec<usize>> = step_units
            .chunks(config.train.batch_size)
            .map(|c| c.iter().flat_map(|&u| units[u].iter().copied()).collect())
            .collect();
        let normalizer: usize = micro.iter().map(|m| objective.loss_units(m.len())).sum();
        let mut grads: Option<Vec<Tensor>> = None;
        let mut metrics = LossMetrics::default();
        let mut tokens = 0usize;
        for (mi, idx) in micro.iter().enumerate() {
            let rows = rows_of(&train_set.examples, idx);
            let labels: Vec<bool> = idx.iter().map(|&i| train_set.examples[i].label).collect();
            let reference = match &train_refs {
                Some(r) => {
                    let v: Vec<f32> = idx.iter().map(|&i| r[i]).collect();
                    Tensor::from_vec(v, idx.len(), &device)?
                }
                None => ctx.logps(&rows, ForwardMode::REFERENCE)?,
            };
            let kl = ctx.kl_inputs(&rows)?;
            let batch = Batch::from_prompt_completion(&rows, pad_id)?;
            tokens += batch.num_tokens();
            let mode = ForwardMode {
                adapter: true,
                dropout_seed: Some(dropout_seed(seed, state.step, mi)),
            };
            let mut objective_error = None;
            let (m, g) = model
                .value_and_grad(&batch, mode, config.train.gradient_checkpointing, |logps| {
                    let policy = logps.per_sequence()?;
                    let inputs = ObjectiveInputs {
                        policy_logps: &policy,
                        reference_logps: &reference,
                        labels: &labels,
                        kl_policy_logps: kl.as_ref().map(|k| &k.0),
                        kl_reference_logps: kl.as_ref().map(|k| &k.1),
                        normalizer: Some(normalizer as f64),
                    };
                    match objective.loss(&inputs) {
                        Ok(out) => Ok((out.loss, out.metrics)),
                        Err(e) => {
                            let msg = e.to_string();
                            objective_error = Some(e);
                            Err(rdro_models::ModelError::Batch(msg))
                        }
                    }
                })
                .map_err(|e| match objective_error.take() {
                    Some(oe) => TrainError::Objective(oe),
                    None => TrainError::Model(e),
                })?;
            metrics.merge(&m);
            grads = Some(match grads {
                None => g,
                Some(acc) => acc
                    .iter()
                    .zip(&g)
                    .map(|(a, b)| a + b)
                    .collect::<candle_core::Result<Vec<_>>>()?,
            });
        }
        let mut grads = grads.unwrap_or_default();
        let outcome = clip_grad_norm(&mut grads, config.train.max_grad_norm)?;
        let lr = schedule.lr_at(state.step);
        let finite = outcome.finite && metrics.loss.is_finite();
        if finite {
            optimizer.step(&grads, lr)?;
            state.bad_in_a_row = 0;
        } else {
            state.skipped_steps += 1;
            state.bad_in_a_row += 1;
            observer.on_message(&format!(
                "step {}: non-finite loss or gradient; step skipped",
                state.step + 1
            ));
            if state.bad_in_a_row >= config.train.max_bad_steps {
                return Err(TrainError::Diverged(state.bad_in_a_row));
            }
        }
        state.step += 1;
        state.tokens_seen += tokens as u64;
        let secs = step_start.elapsed().as_secs_f64().max(1e-9);
        let record = StepRecord {
            step: state.step,
            epoch: state.epoch as f64 + state.position as f64 / units.len().max(1) as f64,
            loss: metrics.loss,
            grad_norm: outcome.norm,
            learning_rate: lr,
            tokens_per_second: tokens as f64 / secs,
            skipped: !finite,
            rewards_chosen: metrics.rewards_chosen,
            rewards_rejected: metrics.rewards_rejected,
            rewards_margins: metrics.rewards_margins,
            t_preferred: metrics.mean_t_preferred,
            t_non_preferred: metrics.mean_t_non_preferred,
            t_preferred_target: metrics.target_t_preferred,
            kl: metrics.kl,
            n_clamped: metrics.n_clamped,
        };
        observer.on_step(&record);
        if state.step.is_multiple_of(config.output.logging_steps) || state.step == total_steps {
            append_jsonl(&metrics_path, "train", &record)?;
        }
        history.push(record);
        if config.output.eval_steps > 0
            && state.step.is_multiple_of(config.output.eval_steps)
            && state.step < total_steps
        {
            if let Some(e) = evaluate(state.step)? {
                append_jsonl(&metrics_path, "eval", &e)?;
                observer.on_eval(&e);
            }
        }
        let interrupted = options
            .interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst));
        let stop_here = options.stop_after_step.is_some_and(|s| state.step >= s);
        if (interrupted || stop_here) && state.step < total_steps {
            let dir = write_checkpoint(&state, &optimizer)?;
            observer.on_message(&format!(
                "stopped after step {}; checkpoint written to {} (continue with --resume)",
                state.step,
                dir.display()
            ));
            return Ok(Outcome::Stopped {
                checkpoint: dir,
                step: state.step,
            });
        }
        if config.output.save_steps > 0
            && state.step.is_multiple_of(config.output.save_steps)
            && state.step < total_steps
        {
            write_checkpoint(&state, &optimizer)?;
        }
    }
    let train_seconds = started.elapsed().as_secs_f64();
    let after = evaluate(state.step)?;
    if let Some(a) = &after {
        append_jsonl(&metrics_path, "eval", a)?;
        observer.on_eval(a);
    }

    // Final adapter: written into the working folder, which is then renamed into place.
    let adapter_config = AdapterConfig::from_lora(&lora, Some(base_name.clone()));
    let mut metrics_card = Vec::new();
    if let Some(a) = &after {
        if let Some(acc) = a.preference_accuracy {
            metrics_card.push(("eval preference accuracy".to_string(), acc));
        }
        metrics_card.push(("eval loss".to_string(), a.loss));
    }
    let card = ModelCard {
        base_model: Some(base_name.clone()),
        recipe: Recipe {
            objective: objective.name().into(),
            alpha: match (config.objective.alpha, alpha) {
                (Some(crate::objective::Alpha::Value(v)), _) => format!("{v}"),
                (_, Some(a)) => format!("auto ({a:.4})"),
                _ => String::new(),
            },
            data: config.data.train.clone(),
            steps: state.step as u64,
            learning_rate: config.train.lr,
            extra: vec![
                ("batch size".into(), config.train.batch_size.to_string()),
                (
                    "gradient accumulation".into(),
                    config.train.grad_accum.to_string(),
                ),
                (
                    "schedule".into(),
                    format!("{:?}", config.train.schedule).to_lowercase(),
                ),
                ("quantization".into(), config.model.quantization.clone()),
            ],
        },
        metrics: metrics_card,
        tags: vec![objective.name().into()],
    };
    peft::write_adapter(
        &work,
        &adapter_config,
        &model.adapter_tensors(),
        config.output.save_dtype()?,
    )?;
    peft::write_model_card(&work, &adapter_config, &card)?;
    let cfg_path = work.join("training_config.toml");
    std::fs::write(&cfg_path, config.to_toml()).map_err(|e| TrainError::io(&cfg_path, e))?;
    if !config.output.keep_checkpoints && checkpoints.exists() {
        std::fs::remove_dir_all(&checkpoints).map_err(|e| TrainError::io(&checkpoints, e))?;
    }
    if out_dir.exists() {
        // Checked at the start: empty, or output.overwrite is set.
        std::fs::remove_dir_all(&out_dir).map_err(|e| TrainError::io(&out_dir, e))?;
    }
    std::fs::rename(&work, &out_dir).map_err(|e| TrainError::io(&out_dir, e))?;
    Ok(Outcome::Finished(Box::new(Summary {
        adapter_dir: out_dir,
        steps: state.step,
        skipped_steps: state.skipped_steps,
        before: state.before.clone(),
        after,
        history,
        train_seconds,
        alpha,
    })))
}
