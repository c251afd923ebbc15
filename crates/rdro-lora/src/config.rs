//! LoRA hyper-parameters, with PEFT's names and meanings.

use serde::{Deserialize, Serialize};

use crate::LoraError;

/// The linear modules of a Llama-family decoder layer, in PEFT's names.
pub const LINEAR_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Which modules receive an adapter: a list of names or every linear layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// `"all-linear"`: the seven projections of every layer (never the output head).
    AllLinear(String),
    /// Explicit module names such as `["q_proj", "v_proj"]`.
    List(Vec<String>),
}

impl Default for TargetModules {
    fn default() -> Self {
        TargetModules::AllLinear("all-linear".into())
    }
}

impl TargetModules {
    /// Whether the module called `name` (e.g. `q_proj`) gets an adapter.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            TargetModules::AllLinear(_) => LINEAR_MODULES.contains(&name),
            TargetModules::List(names) => names.iter().any(|n| n == name),
        }
    }

    /// The module names targeted, in decoder order.
    pub fn resolved(&self) -> Vec<String> {
        LINEAR_MODULES
            .iter()
            .filter(|m| self.contains(m))
            .map(|m| m.to_string())
            .collect()
    }

    /// Checks the value names only known modules.
    pub fn validate(&self) -> Result<(), LoraError> {
        match self {
            TargetModules::AllLinear(s) if s == "all-linear" => Ok(()),
            TargetModules::AllLinear(s) => Err(LoraError::config(
                "lora.target_modules",
                format!(
                    "{s:?} is not \"all-linear\"; give \"all-linear\" or a list of module names"
                ),
            )),
            TargetModules::List(names) if names.is_empty() => Err(LoraError::config(
                "lora.target_modules",
                "the list is empty",
            )),
            TargetModules::List(names) => {
                match names.iter().find(|n| !LINEAR_MODULES.contains(&n.as_str())) {
                    Some(bad) => Err(LoraError::config(
                        "lora.target_modules",
                        format!(
                            "unknown module {bad:?}; expected some of {}",
                            LINEAR_MODULES.join(", ")
                        ),
                    )),
                    None => Ok(()),
                }
            }
        }
    }
}

/// LoRA settings (`[lora]` in the config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of the update `B·A`.
    #[serde(default = "default_r")]
    pub r: usize,
    /// Scale numerator: the update is multiplied by `alpha / r` (or `alpha / sqrt(r)` with rsLoRA).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout probability on the adapter's input (training only).
    #[serde(default)]
    pub dropout: f64,
    /// Modules that receive an adapter.
    #[serde(default)]
    pub target_modules: TargetModules,
    /// rsLoRA scaling `alpha / sqrt(r)`.
    #[serde(default)]
    pub use_rslora: bool,
}

fn default_r() -> usize {
    16
}

fn default_alpha() -> f64 {
    32.0
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: default_r(),
            alpha: default_alpha(),
            dropout: 0.0,
            target_modules: TargetModules::default(),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// The factor applied to `B·A·x`.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Rejects out-of-range values, naming the key.
    pub fn validate(&self) -> Result<(), LoraError> {
        if self.r == 0 {
            return Err(LoraError::config("lora.r", "must be at least 1"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(LoraError::config("lora.alpha", "must be a positive number"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(LoraError::config("lora.dropout", "must be in [0, 1)"));
        }
        self.target_modules.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_plain_and_rslora() {
        let mut c = LoraConfig {
            r: 16,
            alpha: 32.0,
            ..Default::default()
        };
        assert_eq!(c.scaling(), 2.0);
        c.use_rslora = true;
        assert_eq!(c.scaling(), 8.0);
    }

    #[test]
    fn targets() {
        assert!(TargetModules::default().contains("down_proj"));
        assert!(!TargetModules::default().contains("lm_head"));
        let l = TargetModules::List(vec!["v_proj".into(), "q_proj".into()]);
        assert_eq!(l.resolved(), vec!["q_proj", "v_proj"]);
        let bad = TargetModules::List(vec!["qproj".into()]);
        assert!(bad.validate().unwrap_err().to_string().contains("qproj"));
    }
}
