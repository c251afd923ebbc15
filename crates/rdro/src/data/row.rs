//! Row types (TRL's data set formats plus pre-tokenized rows) and their validation.
//!
//! Every reader turns its records into [`serde_json::Value`] objects first (a Parquet row becomes
//! the same object a JSON line would be), so the rules below hold for every file format.

use serde::Serialize;
use serde_json::{Map, Value};

use super::error::{RowProblem, RowSource};

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A system prompt.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
}

impl Role {
    /// Every accepted role, in the order error messages list them.
    pub const ALL: [Role; 4] = [Role::System, Role::User, Role::Assistant, Role::Tool];

    /// The role as chat templates see it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    /// Parses a role name; `None` for anything else.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == name)
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// The speaker.
    pub role: Role,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message from `role` saying `content`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// A text field: a plain string ("standard") or a list of messages ("conversational").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    /// Plain text, tokenized as is.
    Standard(String),
    /// Messages, rendered with the chat template.
    Conversational(Vec<Message>),
}

impl Text {
    /// True for a list of messages.
    pub fn is_conversational(&self) -> bool {
        matches!(self, Text::Conversational(_))
    }
}

/// The kind of a row, independent of standard/conversational text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowKind {
    /// `{"prompt", "completion", "label"}`.
    Unpaired,
    /// `{"prompt", "chosen", "rejected"}`.
    Paired,
    /// `{"prompt_ids", "completion_ids", "label"}`.
    Pretokenized,
}

impl RowKind {
    /// The fields a row of this kind has.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            RowKind::Unpaired => &["prompt", "completion", "label"],
            RowKind::Paired => &["prompt", "chosen", "rejected"],
            RowKind::Pretokenized => &["prompt_ids", "completion_ids", "label"],
        }
    }

    /// A short name for messages: "unpaired", "paired" or "pre-tokenized".
    pub fn name(self) -> &'static str {
        match self {
            RowKind::Unpaired => "unpaired",
            RowKind::Paired => "paired",
            RowKind::Pretokenized => "pre-tokenized",
        }
    }
}

/// One data row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// A completion labelled desirable (`true`) or undesirable (`false`).
    Unpaired {
        /// The prompt.
        prompt: Text,
        /// The completion.
        completion: Text,
        /// Desirable or not.
        label: bool,
    },
    /// A preferred and a dispreferred completion of one prompt.
    Paired {
        /// The prompt.
        prompt: Text,
        /// The preferred completion.
        chosen: Text,
        /// The dispreferred completion.
        rejected: Text,
    },
    /// Token ids used as they are: no template, no BOS/EOS added.
    Pretokenized {
        /// The prompt's ids.
        prompt_ids: Vec<u32>,
        /// The completion's ids.
        completion_ids: Vec<u32>,
        /// Desirable or not.
        label: bool,
    },
}

impl Row {
    /// The row's kind.
    pub fn kind(&self) -> RowKind {
        match self {
            Row::Unpaired { .. } => RowKind::Unpaired,
            Row::Paired { .. } => RowKind::Paired,
            Row::Pretokenized { .. } => RowKind::Pretokenized,
        }
    }

    /// True when the row holds text that needs a tokenizer.
    pub fn needs_tokenizer(&self) -> bool {
        !matches!(self, Row::Pretokenized { .. })
    }

    /// True when any text field is conversational (needs the chat template).
    pub fn is_conversational(&self) -> bool {
        match self {
            Row::Unpaired { prompt, .. } | Row::Paired { prompt, .. } => prompt.is_conversational(),
            Row::Pretokenized { .. } => false,
        }
    }
}

/// A validated row and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcedRow {
    /// The row.
    pub row: Row,
    /// Its file and line (or Parquet row).
    pub source: RowSource,
    /// 0-based position among all rows of the data set, invalid ones included: the input order.
    pub index: usize,
}

/// Describes a JSON value's type the way error messages name it, with a short excerpt.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => {
            let mut excerpt: String = s.chars().take(40).collect();
            if excerpt.len() < s.len() {
                excerpt.push('…');
            }
            format!("the string {excerpt:?}")
        }
        Value::Array(items) => format!("a list of {} item{}", items.len(), plural(items.len())),
        Value::Object(_) => "an object".to_string(),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Collects the problems of one row.
struct Check<'a> {
    source: &'a RowSource,
    problems: Vec<RowProblem>,
}

impl Check<'_> {
    fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems
            .push(RowProblem::field(self.source.clone(), field, message));
    }

    fn label(&mut self, object: &Map<String, Value>) -> Option<bool> {
        match object.get("label") {
            Some(Value::Bool(b)) => Some(*b),
            None => {
                self.fail("label", "missing (expected true or false)");
                None
            }
            Some(other) => {
                self.fail(
                    "label",
                    format!("must be true or false, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// A text field: a string, or a non-empty list of {role, content} messages.
    /// `completion` marks fields that must not be empty.
    fn text(&mut self, object: &Map<String, Value>, field: &str, completion: bool) -> Option<Text> {
        let Some(value) = object.get(field) else {
            self.fail(
                field,
                "missing (expected a string or a list of {role, content} messages)",
            );
            return None;
        };
        match value {
            Value::String(s) => {
                if completion && s.is_empty() {
                    self.fail(field, "empty completion");
                    return None;
                }
                Some(Text::Standard(s.clone()))
            }
            Value::Array(items) => {
                if items.is_empty() {
                    self.fail(
                        field,
                        if completion {
                            "empty completion (no messages)"
                        } else {
                            "empty list of messages"
                        },
                    );
                    return None;
                }
                let mut messages = Vec::with_capacity(items.len());
                let before = self.problems.len();
                for (i, item) in items.iter().enumerate() {
                    if let Some(message) = self.message(item, &format!("{field}[{i}]")) {
                        messages.push(message);
                    }
                }
                if self.problems.len() > before {
                    return None;
                }
                if completion && messages.iter().all(|m| m.content.is_empty()) {
                    self.fail(field, "empty completion (every message is empty)");
                    return None;
                }
                Some(Text::Conversational(messages))
            }
            other => {
                self.fail(
                    field,
                    format!(
                        "must be a string or a list of {{role, content}} messages, found {}",
                        describe(other)
                    ),
                );
                None
            }
        }
    }

    fn message(&mut self, value: &Value, path: &str) -> Option<Message> {
        let Value::Object(object) = value else {
            self.fail(
                path,
                format!(
                    "a message must be an object {{\"role\", \"content\"}}, found {}",
                    describe(value)
                ),
            );
            return None;
        };
        let mut ok = true;
        for key in object.keys() {
            if key != "role" && key != "content" {
                self.fail(
                    format!("{path}.{key}"),
                    "unexpected field in a message (a message has only `role` and `content`)",
                );
                ok = false;
            }
        }
        let role = match object.get("role") {
            Some(Value::String(name)) => match Role::parse(name) {
                Some(role) => Some(role),
                None => {
                    let hint = match name.as_str() {
                        "human" => " (did you mean \"user\"?)",
                        "gpt" | "bot" | "model" => " (did you mean \"assistant\"?)",
                        _ => "",
                    };
                    self.fail(
                        format!("{path}.role"),
                        format!(
                            "unknown role {name:?}{hint}; expected one of system, user, assistant, tool"
                        ),
                    );
                    None
                }
            },
            Some(other) => {
                self.fail(
                    format!("{path}.role"),
                    format!("must be a string, found {}", describe(other)),
                );
                None
            }
            None => {
                self.fail(format!("{path}.role"), "missing");
                None
            }
        };
        let content = match object.get("content") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.fail(
                    format!("{path}.content"),
                    format!("must be a string, found {}", describe(other)),
                );
                None
            }
            None => {
                self.fail(format!("{path}.content"), "missing");
                None
            }
        };
        match (role, content, ok) {
            (Some(role), Some(content), true) => Some(Message { role, content }),
            _ => None,
        }
    }

    fn ids(&mut self, object: &Map<String, Value>, field: &str) -> Option<Vec<u32>> {
        let Some(value) = object.get(field) else {
            self.fail(field, "missing (expected a list of token ids)");
            return None;
        };
        let Value::Array(items) = value else {
            self.fail(
                field,
                format!("must be a list of token ids, found {}", describe(value)),
            );
            return None;
        };
        let mut ids = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(id) => ids.push(id),
                None => {
                    self.fail(
                        format!("{field}[{i}]"),
                        format!(
                            "a token id must be an integer from 0 to {}, found {}",
                            u32::MAX,
                            describe(item)
                        ),
                    );
                    return None;
                }
            }
        }
        Some(ids)
    }
}

/// Which kind a row's fields announce, or `None` when they name none.
fn kind_of(object: &Map<String, Value>) -> Option<RowKind> {
    if object.contains_key("prompt_ids") || object.contains_key("completion_ids") {
        Some(RowKind::Pretokenized)
    } else if object.contains_key("chosen") || object.contains_key("rejected") {
        Some(RowKind::Paired)
    } else if object.contains_key("completion") || object.contains_key("label") {
        Some(RowKind::Unpaired)
    } else {
        None
    }
}

/// Validates one record. Returns the row, or every problem found in it.
pub fn parse_row(value: &Value, source: &RowSource) -> Result<Row, Vec<RowProblem>> {
    let Value::Object(object) = value else {
        return Err(vec![RowProblem::row(
            source.clone(),
            format!("a row must be a JSON object, found {}", describe(value)),
        )]);
    };
    let Some(kind) = kind_of(object) else {
        let found: Vec<&str> = object.keys().map(String::as_str).collect();
        return Err(vec![RowProblem::row(
            source.clone(),
            format!(
                "cannot tell the row format from its fields [{}]: expected prompt/completion/label, \
                 prompt/chosen/rejected, or prompt_ids/completion_ids/label",
                found.join(", ")
            ),
        )]);
    };
    let mut check = Check {
        source,
        problems: Vec::new(),
    };
    for key in object.keys() {
        if !kind.fields().contains(&key.as_str()) {
            check.fail(
                key.as_str(),
                format!(
                    "unexpected field: {} rows have only {}",
                    kind.name(),
                    kind.fields().join(", ")
                ),
            );
        }
    }
    let row = match kind {
        RowKind::Unpaired => {
            let prompt = check.text(object, "prompt", false);
            let completion = check.text(object, "completion", true);
            let label = check.label(object);
            match (prompt, completion, label) {
                (Some(prompt), Some(completion), Some(label)) => {
                    check.same_style(&prompt, &[("completion", &completion)]);
                    Some(Row::Unpaired {
                        prompt,
                        completion,
                        label,
                    })
                }
                _ => None,
            }
        }
        RowKind::Paired => {
            let prompt = check.text(object, "prompt", false);
            let chosen = check.text(object, "chosen", true);
            let rejected = check.text(object, "rejected", true);
            match (prompt, chosen, rejected) {
                (Some(prompt), Some(chosen), Some(rejected)) => {
                    check.same_style(&prompt, &[("chosen", &chosen), ("rejected", &rejected)]);
                    Some(Row::Paired {
                        prompt,
                        chosen,
                        rejected,
                    })
                }
                _ => None,
            }
        }
        RowKind::Pretokenized => {
            let prompt_ids = check.ids(object, "prompt_ids");
            let completion_ids = check.ids(object, "completion_ids");
            let label = check.label(object);
            if let Some(ids) = &completion_ids {
                if ids.is_empty() {
                    check.fail("completion_ids", "empty completion");
                }
            }
            match (prompt_ids, completion_ids, label) {
                (Some(prompt_ids), Some(completion_ids), Some(label)) => Some(Row::Pretokenized {
                    prompt_ids,
                    completion_ids,
                    label,
                }),
                _ => None,
            }
        }
    };
    match row {
        Some(row) if check.problems.is_empty() => Ok(row),
        _ => Err(check.problems),
    }
}

impl Check<'_> {
    /// A row's text fields must all be standard or all conversational, as TRL requires.
    fn same_style(&mut self, prompt: &Text, others: &[(&str, &Text)]) {
        for (field, text) in others {
            if text.is_conversational() != prompt.is_conversational() {
                let style = |t: &Text| {
                    if t.is_conversational() {
                        "a list of messages"
                    } else {
                        "a string"
                    }
                };
                self.fail(
                    *field,
                    format!(
                        "is {} but `prompt` is {}: a row's text fields must all be strings or all be message lists",
                        style(text),
                        style(prompt)
                    ),
                );
            }
        }
    }
}
