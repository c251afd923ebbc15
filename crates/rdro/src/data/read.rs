//! Readers: JSON Lines, JSON arrays, Parquet, folders and Hub data set ids.
//!
//! Each reader yields one record per row, already located (file and line, or Parquet row), as a
//! [`serde_json::Value`] or as the problem that kept it from being one (bad JSON, say).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Map, Number, Value};

use super::error::{DataError, RowProblem, RowSource};
use super::hub;
use rdro_models::hub::HubOptions;

/// One record as read: where it is, and its value or why it has none.
pub type Record = (RowSource, Result<Value, RowProblem>);

/// The storage format of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// One JSON object per line (`.jsonl`, `.ndjson`).
    JsonLines,
    /// A JSON array of objects (`.json`); a `.json` file that does not start with `[` is read as
    /// JSON Lines, as `datasets` writes them.
    Json,
    /// Apache Parquet, as Hub data sets store it.
    Parquet,
}

impl FileFormat {
    /// The format a file's extension names.
    pub fn from_path(path: &Path) -> Option<FileFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" => Some(FileFormat::JsonLines),
            "json" => Some(FileFormat::Json),
            "parquet" => Some(FileFormat::Parquet),
            _ => None,
        }
    }
}

/// Finds the data files a `[data] train`/`eval` value names: a file, a folder (the split's files
/// in it, found as in a Hub repository), or a Hub data set id (`owner/name`). A folder or Hub id
/// may end with `:SPLIT` to read that split instead of `split` (`owner/name:test`).
pub fn resolve(
    spec: &str,
    split: &str,
    hub_options: &HubOptions,
) -> Result<Vec<PathBuf>, DataError> {
    let path = Path::new(spec);
    if !path.exists() {
        if let Some((base, own_split)) = spec.rsplit_once(':') {
            let plain = !own_split.is_empty()
                && own_split
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
            if !base.is_empty() && plain {
                return resolve(base, own_split, hub_options);
            }
        }
    }
    if path.is_file() {
        if FileFormat::from_path(path).is_none() {
            return Err(DataError::File {
                file: spec.to_string(),
                message: "unknown data file type: expected .jsonl, .json or .parquet".to_string(),
            });
        }
        return Ok(vec![path.to_path_buf()]);
    }
    if path.is_dir() {
        return hub::split_files(path, split);
    }
    if hub::is_hub_id(spec) && FileFormat::from_path(path).is_none() {
        return hub::dataset_files(spec, split, hub_options);
    }
    Err(DataError::NotFound(format!(
        "{spec}: no such file or folder, and not a Hub data set id (owner/name)"
    )))
}

/// Reads every record of one file.
pub fn read_file(path: &Path) -> Result<Vec<Record>, DataError> {
    let display: Arc<str> = Arc::from(path.display().to_string());
    match FileFormat::from_path(path) {
        Some(FileFormat::JsonLines) => Ok(read_jsonl_text(&read_text(path)?, &display)),
        Some(FileFormat::Json) => read_json_text(&read_text(path)?, &display),
        Some(FileFormat::Parquet) => read_parquet(path, &display),
        None => Err(DataError::File {
            file: display.to_string(),
            message: "unknown data file type: expected .jsonl, .json or .parquet".to_string(),
        }),
    }
}

fn read_text(path: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        DataError::File {
            file: path.display().to_string(),
            message: format!("line {line}: not valid UTF-8 text"),
        }
    })
}

/// Strips the JSON error's own " at line L column C" suffix (the location is reported separately).
fn json_message(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Reads JSON Lines text: one object per non-blank line.
pub fn read_jsonl_text(text: &str, file: &Arc<str>) -> Vec<Record> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let source = RowSource::line(file.clone(), i + 1);
        let value = serde_json::from_str::<Value>(line).map_err(|e| {
            RowProblem::row(
                source.clone(),
                format!("invalid JSON (column {}): {}", e.column(), json_message(&e)),
            )
        });
        records.push((source, value));
    }
    records
}

/// Reads JSON text: an array of objects, or JSON Lines when it does not start with `[`.
pub fn read_json_text(text: &str, file: &Arc<str>) -> Result<Vec<Record>, DataError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    if !trimmed.starts_with('[') {
        // One object spread over several lines is not JSON Lines: say what was expected.
        if let Ok(value) = serde_json::from_str::<Value>(text) {
            let several_lines = text.trim().contains('\n');
            match value {
                Value::Object(map) if several_lines => {
                    let keys: Vec<&str> = map.keys().map(String::as_str).take(10).collect();
                    return Err(DataError::File {
                        file: file.to_string(),
                        message: format!(
                            "expected a JSON array of rows (or one JSON object per line), found a single \
                             object with keys [{}]",
                            keys.join(", ")
                        ),
                    });
                }
                Value::Object(_) => {}
                other => {
                    return Err(DataError::File {
                        file: file.to_string(),
                        message: format!(
                            "expected a JSON array of rows (or one JSON object per line), found {}",
                            super::row::describe(&other)
                        ),
                    })
                }
            }
        }
        return Ok(read_jsonl_text(text, file));
    }
    let elements: Vec<&serde_json::value::RawValue> =
        serde_json::from_str(text).map_err(|e| DataError::File {
            file: file.to_string(),
            message: format!(
                "line {}: invalid JSON (column {}): {}",
                e.line(),
                e.column(),
                json_message(&e)
            ),
        })?;
    let base = text.as_ptr() as usize;
    let mut records = Vec::with_capacity(elements.len());
    for raw in elements {
        let offset = raw.get().as_ptr() as usize - base;
        let line = 1 + text.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        let source = RowSource::line(file.clone(), line);
        let value = serde_json::from_str::<Value>(raw.get()).map_err(|e| {
            RowProblem::row(
                source.clone(),
                format!("invalid JSON: {}", json_message(&e)),
            )
        });
        records.push((source, value));
    }
    Ok(records)
}

/// Reads a Parquet file row by row; each row becomes the object a JSON line would be.
pub fn read_parquet(path: &Path, display: &Arc<str>) -> Result<Vec<Record>, DataError> {
    let parquet_error = |e: parquet::errors::ParquetError| DataError::File {
        file: display.to_string(),
        message: format!("cannot read Parquet: {e}"),
    };
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(parquet_error)?;
    let rows = reader.get_row_iter(None).map_err(parquet_error)?;
    let mut records = Vec::new();
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| DataError::File {
            file: display.to_string(),
            message: format!("row {i}: cannot read Parquet: {e}"),
        })?;
        let mut object = Map::new();
        for (name, field) in row.get_column_iter() {
            object.insert(name.clone(), field_to_json(field));
        }
        records.push((
            RowSource::row(display.clone(), i),
            Ok(Value::Object(object)),
        ));
    }
    Ok(records)
}

/// Converts a Parquet value to JSON. Types no row field uses (dates, decimals, bytes) become a
/// description string, which validation then reports as the wrong type.
fn field_to_json(field: &Field) -> Value {
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => Value::from(*n),
        Field::Short(n) => Value::from(*n),
        Field::Int(n) => Value::from(*n),
        Field::Long(n) => Value::from(*n),
        Field::UByte(n) => Value::from(*n),
        Field::UShort(n) => Value::from(*n),
        Field::UInt(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float16(x) => float(f64::from(*x)),
        Field::Float(x) => float(f64::from(*x)),
        Field::Double(x) => float(*x),
        Field::Str(s) => Value::String(s.clone()),
        Field::Group(row) => Value::Object(
            row.get_column_iter()
                .map(|(name, field)| (name.clone(), field_to_json(field)))
                .collect(),
        ),
        Field::ListInternal(list) => {
            Value::Array(list.elements().iter().map(field_to_json).collect())
        }
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(key, value)| {
                    let key = match key {
                        Field::Str(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (key, field_to_json(value))
                })
                .collect(),
        ),
        other => Value::String(format!("<Parquet value {other}>")),
    }
}

fn float(x: f64) -> Value {
    Number::from_f64(x)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}
