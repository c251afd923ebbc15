//! Errors of the data pipeline, and the per-row problems that validation collects.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// How many row problems an [`DataError::InvalidRows`] message lists before summarising the rest.
pub const MAX_LISTED_PROBLEMS: usize = 20;

/// Where in its file a row sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Position {
    /// 1-based line of a JSON Lines file, or the line where a JSON array element starts.
    Line(usize),
    /// 0-based row of a Parquet file (as `datasets` numbers rows).
    Row(usize),
}

/// The file and position a row was read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowSource {
    /// The file, as given or as found in the Hub cache.
    pub file: Arc<str>,
    /// The line or Parquet row inside `file`.
    pub position: Position,
}

impl RowSource {
    /// A row at a 1-based line of `file`.
    pub fn line(file: impl Into<Arc<str>>, line: usize) -> Self {
        Self {
            file: file.into(),
            position: Position::Line(line),
        }
    }

    /// A row at a 0-based Parquet row of `file`.
    pub fn row(file: impl Into<Arc<str>>, row: usize) -> Self {
        Self {
            file: file.into(),
            position: Position::Row(row),
        }
    }
}

impl fmt::Display for RowSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Position::Line(line) => write!(f, "{}:{line}", self.file),
            Position::Row(row) => write!(f, "{} (row {row})", self.file),
        }
    }
}

/// One thing wrong with one row: where, which field, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    /// The row's file and line (or Parquet row).
    pub source: RowSource,
    /// The field at fault (`label`, `prompt[1].role`, ...), or `None` for the row as a whole.
    pub field: Option<String>,
    /// What is wrong, in words.
    pub message: String,
}

impl RowProblem {
    /// A problem with one field of a row.
    pub fn field(source: RowSource, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            source,
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// A problem with the row as a whole (bad JSON, not an object, ...).
    pub fn row(source: RowSource, message: impl Into<String>) -> Self {
        Self {
            source,
            field: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for RowProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: field `{field}`: {}", self.source, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

/// Formats the list of problems of an [`DataError::InvalidRows`].
fn list_problems(problems: &[RowProblem], rows: usize) -> String {
    let mut out = format!(
        "{rows} invalid row{} ({} problem{}):",
        if rows == 1 { "" } else { "s" },
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for problem in problems.iter().take(MAX_LISTED_PROBLEMS) {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    if problems.len() > MAX_LISTED_PROBLEMS {
        out.push_str(&format!(
            "\n  ... and {} more",
            problems.len() - MAX_LISTED_PROBLEMS
        ));
    }
    out.push_str(
        "\nFix these rows, or set `skip_invalid = true` in [data] (--skip-invalid on the command line) to skip and count them.",
    );
    out
}

/// Everything that can go wrong while reading, validating and tokenizing data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Rows failed validation and `skip_invalid` is off. Lists up to [`MAX_LISTED_PROBLEMS`].
    #[error("{}", list_problems(problems, *rows))]
    InvalidRows {
        /// Every problem found, in input order.
        problems: Vec<RowProblem>,
        /// How many distinct rows the problems touch.
        rows: usize,
    },
    /// The file as a whole cannot be used (unknown extension, not a JSON array, unreadable Parquet).
    #[error("{file}: {message}")]
    File {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The data set holds no usable row.
    #[error("{0}: no rows")]
    Empty(String),
    /// The data set mixes row formats (unpaired, paired, pre-tokenized).
    #[error("{0}")]
    MixedFormats(String),
    /// A data set name is neither an existing file or folder nor a Hub data set id.
    #[error("{0}")]
    NotFound(String),
    /// Hub resolution failed (not cached while offline, no Parquet files for the split, download failure).
    #[error("{0}")]
    Hub(String),
    /// The Hub client failed (listing or downloading).
    #[error(transparent)]
    HubClient(#[from] rdro_models::hub::HubError),
    /// The tokenizer files could not be loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be compiled, or the data needs one and none is available.
    #[error("chat template: {0}")]
    Template(String),
    /// Text rows need a tokenizer and none was given.
    #[error("{0} holds text rows, which need a tokenizer: pass the base model (a folder with tokenizer.json and tokenizer_config.json, or a Hub id)")]
    TokenizerRequired(String),
    /// An invalid `[data]` setting.
    #[error("[data] {0}")]
    Config(String),
}

impl DataError {
    /// Builds [`DataError::InvalidRows`] from problems in input order.
    pub fn invalid_rows(problems: Vec<RowProblem>) -> Self {
        let rows = count_rows(&problems);
        DataError::InvalidRows { problems, rows }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Number of distinct rows among `problems`.
pub(crate) fn count_rows(problems: &[RowProblem]) -> usize {
    let mut seen: Vec<&RowSource> = problems.iter().map(|p| &p.source).collect();
    seen.sort_by(|a, b| (&*a.file, a.position).cmp(&(&*b.file, b.position)));
    seen.dedup();
    seen.len()
}
