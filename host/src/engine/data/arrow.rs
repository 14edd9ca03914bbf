//! Data that `datasets` wrote: a folder from `Dataset.save_to_disk` (state.json naming its
//! Arrow files, dataset_info.json its features) and single `.arrow` files (Arrow IPC
//! streams, as `datasets` caches them, or Arrow files). Columns become fields as a Parquet
//! file's do (parquet.rs); a ClassLabel column's names become the classes' names (the
//! model's id2label). A DatasetDict folder is refused with the paths of its splits.

use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;

use super::parquet::{from_columns, Column};
use super::{Dataset, FileOptions};
use crate::error::InputError;

/// A folder written by `save_to_disk`.
pub fn is_datasets_folder(dir: &Path) -> bool {
    dir.join("state.json").is_file() || dir.join("dataset_dict.json").is_file()
}

pub fn read_datasets_folder(dir: &Path, options: &FileOptions) -> Result<Dataset, InputError> {
    let shown = dir.display().to_string();
    let json = |name: &str| -> Result<serde_json::Value, InputError> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| InputError::new(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| InputError::new(format!("{}: not JSON ({e})", path.display())))
    };
    if dir.join("dataset_dict.json").is_file() {
        let splits = json("dataset_dict.json")?;
        let names: Vec<String> = splits["splits"]
            .as_array()
            .map(|s| s.iter().filter_map(|n| n.as_str()).map(|n| dir.join(n).display().to_string()).collect())
            .unwrap_or_default();
        return Err(InputError::new(format!(
            "{shown} is a DatasetDict; give one split's folder: {}",
            names.join(", ")
        )));
    }
    let state = json("state.json")?;
    let files: Vec<String> = state["_data_files"]
        .as_array()
        .map(|files| files.iter().filter_map(|f| f["filename"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    if files.is_empty() {
        return Err(InputError::new(format!("{shown}/state.json lists no data files (_data_files)")));
    }
    let info =
        if dir.join("dataset_info.json").is_file() { json("dataset_info.json")? } else { serde_json::Value::Null };
    let mut batches = Vec::new();
    for file in &files {
        batches.extend(read_batches(&dir.join(file))?);
    }
    from_batches(&shown, &batches, options, &|column| class_names(&info, column))
}

/// One `.arrow` file.
pub fn read_arrow_file(path: &Path, options: &FileOptions) -> Result<Dataset, InputError> {
    let batches = read_batches(path)?;
    from_batches(&path.display().to_string(), &batches, options, &|_| None)
}

/// The record batches of an Arrow IPC stream, or of an Arrow file.
fn read_batches(path: &Path) -> Result<Vec<RecordBatch>, InputError> {
    let shown = path.display().to_string();
    let bad = |e: &dyn std::fmt::Display| InputError::new(format!("{shown}: not a readable Arrow file ({e})"));
    let bytes = std::fs::read(path).map_err(|e| InputError::new(format!("cannot read {shown}: {e}")))?;
    if bytes.starts_with(b"ARROW1") {
        let reader = arrow_ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), None).map_err(|e| bad(&e))?;
        return reader.collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e));
    }
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(|e| bad(&e))?;
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e))
}

/// The names of a ClassLabel feature in dataset_info.json.
fn class_names(info: &serde_json::Value, column: &str) -> Option<Vec<String>> {
    let feature = info.get("features")?.get(column)?;
    (feature.get("_type")?.as_str()? == "ClassLabel")
        .then(|| feature.get("names")?.as_array()?.iter().map(|n| n.as_str().map(str::to_owned)).collect())
        .flatten()
}

fn from_batches(
    shown: &str,
    batches: &[RecordBatch],
    options: &FileOptions,
    class_names: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<Dataset, InputError> {
    let Some(first) = batches.first() else { return Err(InputError::new(format!("{shown}: no examples"))) };
    let schema = first.schema();
    let mut columns = Vec::new();
    for (index, field) in schema.fields().iter().enumerate() {
        let parts: Vec<&ArrayRef> = batches.iter().map(|b| b.column(index)).collect();
        let bad = |why: String| InputError::new(format!("{shown}, column '{}': {why}", field.name()));
        if let Some(column) = column_of(&parts, field.data_type()).map_err(bad)? {
            columns.push((field.name().clone(), column));
        }
    }
    from_columns(shown, columns, options, class_names)
}

/// A column's values, or None for a kind of column no model reads (a list of messages,
/// images): left out, as parquet.rs leaves out text columns other than the text.
fn column_of(parts: &[&ArrayRef], kind: &DataType) -> Result<Option<Column>, String> {
    Ok(Some(match kind {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let mut texts = Vec::new();
            for part in parts {
                let strings = arrow_cast_strings(part)?;
                texts.extend(strings);
            }
            Column::Texts(texts)
        }
        DataType::List(inner) | DataType::LargeList(inner)
            if inner.data_type().is_numeric() || *inner.data_type() == DataType::Boolean =>
        {
            let mut rows = Vec::new();
            for part in parts {
                for row in 0..part.len() {
                    let values = match kind {
                        DataType::List(_) => part.as_list::<i32>().value(row),
                        _ => part.as_list::<i64>().value(row),
                    };
                    rows.push(numbers(&values)?);
                }
            }
            let whole = !matches!(inner.data_type(), DataType::Float16 | DataType::Float32 | DataType::Float64);
            Column::Lists { rows, whole }
        }
        kind if kind.is_numeric() || *kind == DataType::Boolean => {
            let mut values = Vec::new();
            for part in parts {
                values.extend(numbers(part)?);
            }
            Column::Numbers {
                values,
                whole: !matches!(kind, DataType::Float16 | DataType::Float32 | DataType::Float64),
            }
        }
        _ => return Ok(None),
    }))
}

fn arrow_cast_strings(array: &ArrayRef) -> Result<Vec<String>, String> {
    let text = |i: usize, value: &str| {
        if array.is_null(i) {
            Err(format!("row {i} is empty (null)"))
        } else {
            Ok(value.to_owned())
        }
    };
    match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().enumerate().map(|(i, v)| text(i, v.unwrap_or(""))).collect(),
        DataType::LargeUtf8 => {
            array.as_string::<i64>().iter().enumerate().map(|(i, v)| text(i, v.unwrap_or(""))).collect()
        }
        _ => array.as_string_view().iter().enumerate().map(|(i, v)| text(i, v.unwrap_or(""))).collect(),
    }
}

/// A numeric array's values as f64 (nulls refused).
fn numbers(array: &ArrayRef) -> Result<Vec<f64>, String> {
    if array.null_count() > 0 {
        return Err("it has empty (null) values".to_owned());
    }
    arrow_cast_f64(array)
}

fn arrow_cast_f64(array: &ArrayRef) -> Result<Vec<f64>, String> {
    use arrow_array::types::*;
    macro_rules! each {
        ($($kind:ident => $ty:ty),*) => {
            match array.data_type() {
                $(DataType::$kind => Ok(array.as_primitive::<$ty>().values().iter().map(|&v| v as f64).collect()),)*
                DataType::Float16 => Ok(array.as_primitive::<Float16Type>().values().iter().map(|v| v.to_f64()).collect()),
                DataType::Boolean => Ok(array.as_boolean().iter().map(|v| f64::from(u8::from(v.unwrap_or(false)))).collect()),
                other => Err(format!("{other} values are not numbers")),
            }
        };
    }
    each!(Int8 => Int8Type, Int16 => Int16Type, Int32 => Int32Type, Int64 => Int64Type, UInt8 => UInt8Type,
          UInt16 => UInt16Type, UInt32 => UInt32Type, UInt64 => UInt64Type, Float32 => Float32Type, Float64 => Float64Type)
}
