//! Data from files users already have: safetensors, a folder of `.npy` files, `.npz`, CSV
//! (here), Parquet and JSONL text (their own modules).
//!
//! safetensors and `.npy` are memory-mapped (copy-on-write, never written back): a data set
//! larger than memory trains from the page cache, and only the batches in use are read.
//! `.npz` (a zip, possibly compressed) and CSV (text to parse) are read into memory; for
//! data sets of more than a few GB, convert them to safetensors once.

use super::label_names::RawLabel;
use std::fs::File;
use std::path::Path;

use memmap2::MmapOptions;
use tch::{Device, Kind, Tensor};

use super::{Dataset, FileOptions};
use crate::error::InputError;

/// Reads a data file (or a folder of `.npy` files) into a data set with a `labels` field.
pub fn load_file(path: &Path, options: &FileOptions) -> Result<Dataset, InputError> {
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(InputError::new(format!("data file {shown} does not exist")));
    }
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if path.is_dir() && super::arrow::is_datasets_folder(path) {
        return super::arrow::read_datasets_folder(path, options);
    }
    let mut fields = if path.is_dir() {
        read_npy_folder(path)?
    } else {
        match extension.as_str() {
            "safetensors" => read_safetensors(path)?,
            "npy" => {
                return Err(InputError::new(format!(
                    "{shown}: a single .npy file holds one array; put the features and labels in one folder (input.npy, labels.npy) and give the folder, or use .npz"
                )))
            }
            "npz" => Tensor::read_npz(path).map_err(|e| InputError::new(format!("{shown}: not a readable .npz file ({e})")))?,
            "csv" => return read_csv(path, options),
            "jsonl" => return super::text::read_jsonl(path, options),
            "parquet" => return super::parquet::read_parquet(path, options),
            "arrow" => return super::arrow::read_arrow_file(path, options),
            other => {
                return Err(InputError::new(format!(
                    "{shown}: unknown data format '.{other}'; give .safetensors, .npz, .csv, .parquet, .arrow, .jsonl (with tokenizer_file), a folder of .npy files or a `datasets` save_to_disk folder"
                )))
            }
        }
    };
    let label_field = match options.label_column.as_deref() {
        Some(name) => Some(name.to_owned()),
        None => super::default_label(fields.iter().map(|(n, _)| n.as_str())).map(|i| fields[i].0.clone()),
    };
    super::token_labels::shift_for_causal_lm(&shown, &mut fields, label_field.as_deref())?;
    let mut fields = name_labels(&shown, fields, options.label_column.as_deref())?;
    if let Some(columns) = &options.feature_columns {
        name_features(&shown, &mut fields, columns)?;
    }
    Dataset::new(&shown, fields)
}

/// Renames the label field to `labels`.
fn name_labels(
    source: &str,
    mut fields: Vec<(String, Tensor)>,
    label_column: Option<&str>,
) -> Result<Vec<(String, Tensor)>, InputError> {
    let names: Vec<String> = fields.iter().map(|(n, _)| n.clone()).collect();
    let chosen = match label_column {
        Some(name) => Some(name.to_owned()).filter(|n| names.contains(n)).ok_or_else(|| {
            InputError::new(format!("{source}: no field '{name}' (label_column); fields: {}", names.join(", ")))
        })?,
        None => match super::default_label(names.iter().map(String::as_str)) {
            Some(i) => names[i].clone(),
            None => {
                return Err(InputError::new(format!(
                    "{source}: no 'labels' or 'label' field (fields: {}); name the label field with label_column",
                    names.join(", ")
                )))
            }
        },
    };
    if chosen != "labels" {
        fields.retain(|(n, _)| n != "labels");
        for (name, _) in fields.iter_mut().filter(|(n, _)| *n == chosen) {
            *name = "labels".to_owned();
        }
    }
    Ok(fields)
}

/// Tensor files: `feature_columns` names the one field that models read as `input`.
fn name_features(source: &str, fields: &mut Vec<(String, Tensor)>, columns: &[String]) -> Result<(), InputError> {
    let [column] = columns else {
        return Err(InputError::new(format!(
            "{source}: feature_columns names {} fields; in a tensor file it names the one field holding the features",
            columns.len()
        )));
    };
    if !fields.iter().any(|(n, _)| n == column) {
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        return Err(InputError::new(format!(
            "{source}: no field '{column}' (feature_columns); fields: {}",
            names.join(", ")
        )));
    }
    fields.retain(|(n, _)| n != "input" || n == column);
    for (name, _) in fields.iter_mut().filter(|(n, _)| n == column) {
        *name = "input".to_owned();
    }
    Ok(())
}

fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>, InputError> {
    let shown = path.display();
    let bytes = map(path)?;
    // deserialize checks the header and that every tensor lies inside the file.
    safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| InputError::new(format!("{shown}: not a readable safetensors file ({e:?})")))?;
    let (header_len, metadata) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| InputError::new(format!("{shown}: not a readable safetensors file ({e:?})")))?;
    let data = &bytes[8 + header_len..];
    let mut fields: Vec<(String, Tensor)> = Vec::new();
    for (name, info) in metadata.tensors() {
        let kind = safetensors_kind(info.dtype).ok_or_else(|| {
            InputError::new(format!("{shown}: tensor '{name}' has type {:?}, not supported", info.dtype))
        })?;
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let (begin, end) = info.data_offsets;
        fields.push((name, tensor_over(&data[begin..end], &shape, kind)));
    }
    // The file's order is by offset; a stable order by name keeps runs reproducible.
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(fields)
}

fn safetensors_kind(dtype: safetensors::Dtype) -> Option<Kind> {
    use safetensors::Dtype::*;
    Some(match dtype {
        BOOL => Kind::Bool,
        U8 => Kind::Uint8,
        I8 => Kind::Int8,
        I16 => Kind::Int16,
        I32 => Kind::Int,
        I64 => Kind::Int64,
        F16 => Kind::Half,
        BF16 => Kind::BFloat16,
        F32 => Kind::Float,
        F64 => Kind::Double,
        _ => return None,
    })
}

/// Maps a file copy-on-write for the rest of the process (data sets live that long).
fn map(path: &Path) -> Result<&'static [u8], InputError> {
    let file = File::open(path).map_err(|e| InputError::new(format!("cannot read {}: {e}", path.display())))?;
    // SAFETY: a private (copy-on-write) mapping: writes never reach the file. The file
    // changing underneath a run is outside what any data loader can defend against.
    let mapped = unsafe { MmapOptions::new().map_copy(&file) }
        .map_err(|e| InputError::new(format!("cannot map {}: {e}", path.display())))?;
    Ok(&Box::leak(Box::new(mapped))[..])
}

/// A tensor over mapped bytes, without copying when they are aligned for `kind`.
fn tensor_over(bytes: &'static [u8], shape: &[i64], kind: Kind) -> Tensor {
    if bytes.is_empty() || bytes.as_ptr() as usize % kind.elt_size_in_bytes() != 0 {
        return Tensor::from_data_size(bytes, shape, kind);
    }
    // SAFETY: the bytes are mapped until the process ends and hold `shape` elements of
    // `kind` (checked by the file's parser); the mapping is private, so writes are safe.
    unsafe { Tensor::from_blob(bytes.as_ptr(), shape, &[], kind, Device::Cpu) }
}

/// Every `NAME.npy` in a folder becomes the field NAME.
fn read_npy_folder(dir: &Path) -> Result<Vec<(String, Tensor)>, InputError> {
    let shown = dir.display();
    let entries = std::fs::read_dir(dir).map_err(|e| InputError::new(format!("cannot read folder {shown}: {e}")))?;
    let mut files: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "npy"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(InputError::new(format!("{shown}: no .npy files in the folder (a data folder holds .npy arrays, or is one that `datasets` wrote with save_to_disk)")));
    }
    files
        .iter()
        .map(|file| {
            let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_owned();
            Ok((name, read_npy(file)?))
        })
        .collect()
}

/// A memory-mapped `.npy` array (C order; versions 1 to 3 of the format).
fn read_npy(path: &Path) -> Result<Tensor, InputError> {
    let shown = path.display();
    let bad = |why: &str| InputError::new(format!("{shown}: not a readable .npy file ({why})"));
    let bytes = map(path)?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("no NUMPY magic"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(bad(&format!("format version {v}"))),
    };
    let header = bytes.get(start..start + header_len).ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let value_of = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        Some(header[at..].trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = value_of("descr").and_then(|v| v.strip_prefix('\'')).and_then(|v| v.split('\'').next());
    let descr = descr.ok_or_else(|| bad("no descr"))?;
    if value_of("fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(bad("Fortran order; save it with np.ascontiguousarray"));
    }
    let shape = value_of("shape").and_then(|v| v.strip_prefix('(')).and_then(|v| v.split(')').next());
    let shape: Vec<i64> = shape
        .ok_or_else(|| bad("no shape"))?
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<i64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("bad shape"))?;
    let kind = match descr {
        "|b1" => Kind::Bool,
        "|u1" => Kind::Uint8,
        "|i1" => Kind::Int8,
        "<i2" => Kind::Int16,
        "<i4" => Kind::Int,
        "<i8" => Kind::Int64,
        "<f2" => Kind::Half,
        "<f4" => Kind::Float,
        "<f8" => Kind::Double,
        other => return Err(bad(&format!("element type '{other}' is not supported"))),
    };
    let data = &bytes[start + header_len..];
    let expected = shape.iter().product::<i64>() as usize * kind.elt_size_in_bytes();
    if data.len() < expected {
        return Err(bad(&format!("{} data bytes, the shape needs {expected}", data.len())));
    }
    Ok(tensor_over(&data[..expected], &shape, kind))
}

/// A CSV file with a header: the feature columns become `input` [N, F] (float), the label
/// column `labels` (int64 when every label is a whole number, else float).
fn read_csv(path: &Path, options: &FileOptions) -> Result<Dataset, InputError> {
    let shown = path.display().to_string();
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| InputError::new(format!("cannot read {shown}: {e}")))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| InputError::new(format!("{shown}: cannot read the header ({e})")))?
        .iter()
        .map(str::to_owned)
        .collect();
    if header.iter().all(String::is_empty) {
        return Err(InputError::new(format!("{shown}: empty file; a CSV needs a header line, then a row per example")));
    }
    let column = |name: &str, role: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            InputError::new(format!("{shown}: no column '{name}' ({role}); columns: {}", header.join(", ")))
        })
    };
    // A text column (text_column, as in JSONL and Parquet) makes text data.
    if let Some(text) =
        header.iter().position(|h| *h == options.text_column).filter(|_| options.feature_columns.is_none())
    {
        return read_csv_text(reader, &header, text, options, &shown);
    }
    let label = match &options.label_column {
        Some(name) => column(name, "label_column")?,
        None => super::default_label(header.iter().map(String::as_str)).ok_or_else(|| {
            InputError::new(format!(
                "{shown}: no 'labels' or 'label' column (columns: {}); name it with label_column",
                header.join(", ")
            ))
        })?,
    };
    let features: Vec<usize> = match &options.feature_columns {
        Some(names) => names.iter().map(|n| column(n, "feature_columns")).collect::<Result<_, _>>()?,
        None => (0..header.len()).filter(|&i| i != label).collect(),
    };
    if features.is_empty() {
        return Err(InputError::new(format!("{shown}: no feature columns besides the label column")));
    }
    let (mut values, mut labels) = (Vec::<f32>::new(), Vec::<f64>::new());
    for record in reader.records() {
        let record = record.map_err(|e| InputError::new(format!("{shown}: {}", csv_error(&e, header.len()))))?;
        let line = record.position().map_or(0, |p| p.line());
        let number = |i: usize| -> Result<f64, InputError> {
            let text = &record[i];
            let place = || format!("{shown} line {line}, column '{}'", header[i]);
            let value =
                text.parse::<f64>().map_err(|_| InputError::new(format!("{}: '{text}' is not a number", place())))?;
            // Models compute in float32: NaN, infinities and values beyond its range would
            // train to NaN weights.
            if !(value.is_finite() && value.abs() <= f32::MAX as f64) {
                return Err(InputError::new(format!(
                    "{}: '{text}' is not a finite float32 number (at most {:e} in size); clean the data",
                    place(),
                    f32::MAX
                )));
            }
            Ok(value)
        };
        for &i in &features {
            values.push(number(i)? as f32);
        }
        labels.push(number(label)?);
    }
    if labels.is_empty() {
        return Err(InputError::new(format!("{shown}: no examples (only a header)")));
    }
    let n = labels.len() as i64;
    let labels = if labels.iter().all(|l| l.fract() == 0.0) {
        Tensor::from_slice(&labels.iter().map(|&l| l as i64).collect::<Vec<_>>())
    } else {
        Tensor::from_slice(&labels).to_kind(Kind::Float)
    };
    let fields = vec![
        ("input".to_owned(), Tensor::from_slice(&values).view([n, features.len() as i64])),
        ("labels".to_owned(), labels),
    ];
    Dataset::new(&shown, fields)
}

/// A CSV whose `text_column` holds text: tokenized as JSONL text is, with the label
/// column (whole numbers) for classification, or without one for language modelling.
fn read_csv_text(
    mut reader: csv::Reader<std::fs::File>,
    header: &[String],
    text: usize,
    options: &FileOptions,
    shown: &str,
) -> Result<Dataset, InputError> {
    let tokenizer = super::text::load_tokenizer(shown, options)?;
    let label = match &options.label_column {
        Some(name) => Some(header.iter().position(|h| h == name).ok_or_else(|| {
            InputError::new(format!("{shown}: no column '{name}' (label_column); columns: {}", header.join(", ")))
        })?),
        None => super::default_label(header.iter().map(String::as_str)),
    };
    let (mut texts, mut labels, mut lines) = (Vec::new(), Vec::new(), Vec::new());
    for record in reader.records() {
        let record = record.map_err(|e| InputError::new(format!("{shown}: {}", csv_error(&e, header.len()))))?;
        let line = record.position().map_or(0, |p| p.line());
        if let Some(i) = label {
            let text = &record[i];
            labels.push(match text.parse::<i64>() {
                Ok(id) => RawLabel::Id(id),
                // A number that is no class id is a mistake, not a name.
                Err(_) if text.parse::<f64>().is_ok() || text.is_empty() => {
                    return Err(InputError::new(format!(
                        "{shown} line {line}: label '{text}' is not a whole number or a class name"
                    )))
                }
                Err(_) => RawLabel::Name(text.to_owned()),
            });
        }
        texts.push(record[text].to_owned());
        lines.push(line);
    }
    let place = |row: usize| format!("line {}", lines[row]);
    let (labels, names) = match label {
        Some(_) => {
            let (ids, names) = super::label_names::encode(labels, shown, place)?;
            (Some(ids), names)
        }
        None => (None, None),
    };
    let mut dataset = super::text::from_texts(shown, &tokenizer, &texts, labels, options, place)?;
    dataset.label_names = names;
    Ok(dataset)
}

fn csv_error(error: &csv::Error, columns: usize) -> String {
    match error.kind() {
        csv::ErrorKind::UnequalLengths { pos, len, .. } => {
            format!("line {}: {len} fields, the header has {columns}", pos.as_ref().map_or(0, |p| p.line()))
        }
        _ => error.to_string(),
    }
}
