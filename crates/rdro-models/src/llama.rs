//! The Llama-family decoder (Qwen 2 / 2.5 and Llama 3 / 3.1 / 3.2), built for adapter training:
//! frozen weights, LoRA on the linear projections, fused kernels with hand-written backward,
//! target-only log-probs and optional per-layer activation checkpointing.

use candle_core::{DType, Device, Result as CResult, Tensor, Var};
use rand::SeedableRng;
use rdro_lora::peft::AdapterTensors;
use rdro_lora::{ForwardMode, FrozenWeight, LoraAdapter, LoraConfig, LoraLinear};

use crate::head::{chunk_rows_for, target_log_probs, DEFAULT_LOGITS_BYTES};
use crate::ops::{rms_norm, rope, softmax_last_dim, swiglu};
use crate::{Batch, ModelConfig, ModelError, Result, TokenLogProbs};

/// Self-attention with grouped-query heads.
#[derive(Debug, Clone)]
pub struct Attention {
    /// Query projection.
    pub q_proj: LoraLinear,
    /// Key projection.
    pub k_proj: LoraLinear,
    /// Value projection.
    pub v_proj: LoraLinear,
    /// Output projection.
    pub o_proj: LoraLinear,
}

/// The SiLU-gated MLP.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// Gate projection.
    pub gate_proj: LoraLinear,
    /// Up projection.
    pub up_proj: LoraLinear,
    /// Down projection.
    pub down_proj: LoraLinear,
}

/// One pre-norm decoder block.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: Tensor,
    /// Attention.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: Tensor,
    /// MLP.
    pub mlp: Mlp,
}

/// What every layer of one forward shares.
struct ForwardContext {
    cos: Tensor,
    sin: Tensor,
    /// Additive `[batch, 1, seq, seq]` mask: causal and key padding.
    mask: Tensor,
    mode: ForwardMode,
}

/// Gradients of the trainable parameters, in the order of [`LlamaModel::trainable_parameters`].
pub type Gradients = Vec<Tensor>;

/// A Llama-family decoder with frozen weights and optional LoRA adapters.
#[derive(Debug, Clone)]
pub struct LlamaModel {
    /// Hyper-parameters.
    pub config: ModelConfig,
    /// `[vocab, hidden]` embedding, in its storage dtype.
    pub embed_tokens: Tensor,
    /// Decoder blocks.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub norm: Tensor,
    /// Output projection `[vocab, hidden]` (the embedding when tied).
    pub lm_head: FrozenWeight,
    /// Activation dtype (f32 on CPU).
    pub compute_dtype: DType,
    /// Budget in bytes for one chunk of vocabulary logits.
    pub logits_chunk_bytes: usize,
}

/// The names of the seven projections, in the order [`LlamaModel::modules`] yields them.
const MODULE_PATHS: [(&str, &str); 7] = [
    ("self_attn", "q_proj"),
    ("self_attn", "k_proj"),
    ("self_attn", "v_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_proj"),
    ("mlp", "up_proj"),
    ("mlp", "down_proj"),
];

impl DecoderLayer {
    fn modules(&self) -> [&LoraLinear; 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
    }

    fn modules_mut(&mut self) -> [&mut LoraLinear; 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ]
    }

    fn forward(&self, x: &Tensor, config: &ModelConfig, ctx: &ForwardContext) -> CResult<Tensor> {
        let eps = config.rms_norm_eps;
        let h = rms_norm(x, &self.input_layernorm, eps)?;
        let x = (x + self.attention(&h, config, ctx)?)?;
        let h = rms_norm(&x, &self.post_attention_layernorm, eps)?;
        let mlp = &self.mlp;
        let gate = mlp.gate_proj.forward(&h, ctx.mode)?;
        let up = mlp.up_proj.forward(&h, ctx.mode)?;
        x + mlp.down_proj.forward(&swiglu(&gate, &up)?, ctx.mode)?
    }

    fn attention(&self, x: &Tensor, config: &ModelConfig, ctx: &ForwardContext) -> CResult<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kv, d) = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        );
        let attn = &self.self_attn;
        let heads = |y: Tensor, n: usize| y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous();
        let q = rope(
            &heads(attn.q_proj.forward(x, ctx.mode)?, h)?,
            &ctx.cos,
            &ctx.sin,
        )?;
        let k = rope(
            &heads(attn.k_proj.forward(x, ctx.mode)?, kv)?,
            &ctx.cos,
            &ctx.sin,
        )?;
        let v = heads(attn.v_proj.forward(x, ctx.mode)?, kv)?;
        // Grouped-query attention without copying keys and values: the query heads sharing a
        // key head are adjacent, so [b, h, t, d] is viewed as [b, kv, group * t, d].
        let group = h / kv;
        // Scaling q ([.., t, d]) costs less than scaling the scores ([.., t, t]).
        let q = (q.reshape((b, kv, group * t, d))? * (1.0 / (d as f64).sqrt()))?;
        let scores = q.matmul(&k.t()?)?;
        let scores = scores.reshape((b, h, t, t))?.broadcast_add(&ctx.mask)?;
        let probs = softmax_last_dim(&scores)?.reshape((b, kv, group * t, t))?;
        let out = probs.matmul(&v)?.reshape((b, h, t, d))?.transpose(1, 2)?;
        let out = out.reshape((b, t, h * d))?;
        attn.o_proj.forward(&out, ctx.mode)
    }
}

impl LlamaModel {
    /// Assembles a model from its parts; the caller (the loader) has checked the shapes.
    pub fn new(
        config: ModelConfig,
        embed_tokens: Tensor,
        layers: Vec<DecoderLayer>,
        norm: Tensor,
        lm_head: FrozenWeight,
        compute_dtype: DType,
    ) -> Self {
        Self {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            compute_dtype,
            logits_chunk_bytes: DEFAULT_LOGITS_BYTES,
        }
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// Every projection with its Hugging Face module path (`model.layers.0.self_attn.q_proj`).
    pub fn modules(&self) -> Vec<(String, &LoraLinear)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for ((block, name), m) in MODULE_PATHS.iter().zip(layer.modules()) {
                out.push((format!("model.layers.{i}.{block}.{name}"), m));
            }
        }
        out
    }

    fn modules_mut(&mut self) -> Vec<(String, &mut LoraLinear)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for ((block, name), m) in MODULE_PATHS.iter().zip(layer.modules_mut()) {
                out.push((format!("model.layers.{i}.{block}.{name}"), m));
            }
        }
        out
    }

    /// Attaches fresh adapters (PEFT initialisation, seeded) to the targeted modules, replacing
    /// any present.
    pub fn attach_adapters(&mut self, config: &LoraConfig, seed: u64) -> Result<()> {
        config.validate()?;
        let device = self.device().clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for (path, module) in self.modules_mut() {
            let name = path.rsplit('.').next().unwrap_or_default();
            module.adapter = if config.target_modules.contains(name) {
                let (out_f, in_f) = module.base.dims()?;
                Some(LoraAdapter::init(in_f, out_f, config, &mut rng, &device)?)
            } else {
                None
            };
        }
        Ok(())
    }

    /// Installs adapter weights (e.g. read from a PEFT folder) on the modules they name. Every
    /// tensor must name a module of this model with matching shapes.
    pub fn load_adapter(&mut self, config: &LoraConfig, tensors: &AdapterTensors) -> Result<()> {
        config.validate()?;
        let device = self.device().clone();
        let mut used = 0;
        for (path, module) in self.modules_mut() {
            module.adapter = None;
            let Some((a, b)) = tensors.get(&path) else {
                continue;
            };
            let (out_f, in_f) = module.base.dims()?;
            let (r, a_in) = a.dims2()?;
            let (b_out, rb) = b.dims2()?;
            if a_in != in_f || b_out != out_f || rb != r {
                return Err(ModelError::Batch(format!(
                    "adapter for {path}: lora_A {:?} / lora_B {:?} do not fit the base layer [{out_f}, {in_f}]",
                    a.dims(),
                    b.dims()
                )));
            }
            let scaling = if config.use_rslora {
                config.alpha / (r as f64).sqrt()
            } else {
                config.alpha / r as f64
            };
            module.adapter = Some(LoraAdapter {
                a: Var::from_tensor(&a.to_device(&device)?.to_dtype(DType::F32)?)?,
                b: Var::from_tensor(&b.to_device(&device)?.to_dtype(DType::F32)?)?,
                scaling,
                dropout: config.dropout,
            });
            used += 1;
        }
        if used != tensors.len() {
            let known: Vec<String> = self.modules().into_iter().map(|(p, _)| p).collect();
            let unknown: Vec<&String> = tensors.keys().filter(|k| !known.contains(k)).collect();
            return Err(ModelError::Batch(format!(
                "the adapter targets modules this base does not have: {unknown:?}"
            )));
        }
        Ok(())
    }

    /// The adapter weights by module path, for saving.
    pub fn adapter_tensors(&self) -> AdapterTensors {
        self.modules()
            .into_iter()
            .filter_map(|(path, m)| {
                m.adapter
                    .as_ref()
                    .map(|a| (path, (a.a.as_tensor().clone(), a.b.as_tensor().clone())))
            })
            .collect()
    }

    /// Trainable parameters named by their PEFT key without the `base_model.model.` prefix
    /// (`model.layers.0.self_attn.q_proj.lora_A.weight`), layer by layer.
    pub fn trainable_parameters(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (path, m) in self.modules() {
            if let Some(a) = &m.adapter {
                out.push((format!("{path}.lora_A.weight"), a.a.clone()));
                out.push((format!("{path}.lora_B.weight"), a.b.clone()));
            }
        }
        out
    }

    fn context(&self, batch: &Batch, mode: ForwardMode) -> CResult<ForwardContext> {
        let (b, t) = (batch.len(), batch.seq_len());
        let device = self.device();
        let (cos, sin) = crate::rope::cos_sin(&self.config, t, self.compute_dtype, device)?;
        let mut mask = vec![0f32; b * t * t];
        for (r, &len) in batch.lengths.iter().enumerate() {
            for i in 0..t {
                for j in 0..t {
                    if j > i || j >= len {
                        mask[(r * t + i) * t + j] = -1e9;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(mask, (b, 1, t, t), device)?.to_dtype(self.compute_dtype)?;
        Ok(ForwardContext {
            cos,
            sin,
            mask,
            mode,
        })
    }

    fn embed(&self, batch: &Batch) -> CResult<Tensor> {
        let ids = batch
            .ids_tensor(self.device())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let (b, t) = ids.dims2()?;
        self.embed_tokens
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.config.hidden_size))?
            .to_dtype(self.compute_dtype)
    }

    /// Log-probs of the targets from the last hidden state (before the final norm).
    fn head(&self, batch: &Batch, hidden: &Tensor) -> CResult<TokenLogProbs> {
        let (b, t, hdim) = hidden.dims3()?;
        let hidden = rms_norm(hidden, &self.norm, self.config.rms_norm_eps)?;
        let (rows, positions) = batch.targets();
        // The token at position j is predicted from the hidden state at j - 1.
        let source: Vec<u32> = rows
            .iter()
            .zip(&positions)
            .map(|(r, j)| (r * t + j - 1) as u32)
            .collect();
        let targets: Vec<u32> = rows
            .iter()
            .zip(&positions)
            .map(|(r, j)| batch.input_ids[*r][*j])
            .collect();
        let index = Tensor::from_vec(source, rows.len(), hidden.device())?;
        let picked = hidden.reshape((b * t, hdim))?.index_select(&index, 0)?;
        let chunk = chunk_rows_for(self.config.vocab_size, self.logits_chunk_bytes);
        let values = target_log_probs(&picked, &self.lm_head, &targets, chunk)?;
        Ok(TokenLogProbs {
            values,
            rows,
            positions,
            batch_size: b,
            seq_len: t,
        })
    }

    fn check_batch(&self, batch: &Batch) -> Result<()> {
        if batch.is_empty() || batch.seq_len() == 0 {
            return Err(ModelError::Batch("empty batch".into()));
        }
        let vocab = self.config.vocab_size as u32;
        if let Some(id) = batch.input_ids.iter().flatten().find(|id| **id >= vocab) {
            return Err(ModelError::Batch(format!(
                "token id {id} is outside the vocabulary (size {vocab})"
            )));
        }
        Ok(())
    }

    /// Log-probs of the batch's targets, with a full autograd graph when adapters train.
    pub fn token_log_probs(&self, batch: &Batch, mode: ForwardMode) -> Result<TokenLogProbs> {
        self.check_batch(batch)?;
        let ctx = self.context(batch, mode)?;
        let mut x = self.embed(batch)?;
        for layer in &self.layers {
            x = layer.forward(&x, &self.config, &ctx)?;
        }
        Ok(self.head(batch, &x)?)
    }

    /// Runs the batch, applies `loss_fn` to its log-probs, and returns `loss_fn`'s output with the
    /// gradient of the loss (its first element, a scalar) for every trainable parameter.
    ///
    /// With `checkpointing`, only each layer's input is kept during the forward; the backward
    /// recomputes one layer at a time (dropout masks replay from `mode.dropout_seed`).
    pub fn value_and_grad<R>(
        &self,
        batch: &Batch,
        mode: ForwardMode,
        checkpointing: bool,
        loss_fn: impl FnOnce(&TokenLogProbs) -> Result<(Tensor, R)>,
    ) -> Result<(R, Gradients)> {
        self.check_batch(batch)?;
        let params = self.trainable_parameters();
        if params.is_empty() {
            return Err(ModelError::Batch(
                "the model has no adapter to train".into(),
            ));
        }
        let ctx = self.context(batch, mode)?;
        let collect = |grads: &candle_core::backprop::GradStore,
                       range: std::ops::Range<usize>|
         -> CResult<Vec<(usize, Tensor)>> {
            range
                .map(|i| {
                    let v = params[i].1.as_tensor();
                    let g = match grads.get(v) {
                        Some(g) => g.clone(),
                        None => v.zeros_like()?,
                    };
                    Ok((i, g))
                })
                .collect()
        };
        if !checkpointing {
            let mut x = self.embed(batch)?;
            for layer in &self.layers {
                x = layer.forward(&x, &self.config, &ctx)?;
            }
            let logps = self.head(batch, &x)?;
            let (loss, out) = loss_fn(&logps)?;
            let grads = loss.backward()?;
            let grads = collect(&grads, 0..params.len())?;
            return Ok((out, grads.into_iter().map(|(_, g)| g).collect()));
        }

        // Forward without keeping graphs: remember each layer's input only.
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = self.embed(batch)?;
        for layer in &self.layers {
            let y = layer.forward(&x, &self.config, &ctx)?.detach();
            inputs.push(x);
            x = y;
        }
        let last = Var::from_tensor(&x)?;
        let logps = self.head(batch, last.as_tensor())?;
        let (loss, out) = loss_fn(&logps)?;
        let grads = loss.backward()?;
        let mut g = grads
            .get(last.as_tensor())
            .cloned()
            .unwrap_or(last.as_tensor().zeros_like()?);
        drop(grads);

        // Parameters of layer i are a contiguous range of `params`.
        let per_layer: Vec<usize> = self
            .layers
            .iter()
            .map(|l| l.modules().iter().filter(|m| m.adapter.is_some()).count() * 2)
            .collect();
        let mut starts = vec![0usize; per_layer.len() + 1];
        for (i, n) in per_layer.iter().enumerate() {
            starts[i + 1] = starts[i] + n;
        }
        let mut result: Vec<Option<Tensor>> = vec![None; params.len()];
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let input = Var::from_tensor(&inputs[i])?;
            let y = layer.forward(input.as_tensor(), &self.config, &ctx)?;
            // The surrogate's gradient w.r.t. y is exactly g.
            let grads = (y * g.detach())?.sum_all()?.backward()?;
            for (k, grad) in collect(&grads, starts[i]..starts[i + 1])? {
                result[k] = Some(grad);
            }
            g = match grads.get(input.as_tensor()) {
                Some(g) => g.clone(),
                None => input.as_tensor().zeros_like()?,
            };
        }
        let grads = result
            .into_iter()
            .zip(&params)
            .map(|(g, (_, v))| g.map_or_else(|| v.as_tensor().zeros_like(), Ok))
            .collect::<CResult<Vec<_>>>()?;
        Ok((out, grads))
    }
}
