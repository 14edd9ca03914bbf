//! Parquet files, the on-disk form of Hugging Face datasets.
//!
//! Each column becomes a field: numbers one value per row, lists of numbers one row each
//! (equal lengths, or padded: with -100 for `labels`, 0 elsewhere, and an `attention_mask`
//! made for padded `input_ids`). A string column named by text_column is tokenized with
//! tokenizer_file, as JSONL text is. Without an `input` or `input_ids` field, the numeric
//! columns other than the label (or feature_columns) are stacked into `input`, as CSV's.
//! The file is read into memory.

use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use tch::{Kind, Tensor};

use super::label_names::{self, RawLabel};
use super::{text, Dataset, FileOptions};
use crate::error::InputError;

/// One column's values, by kind.
pub(super) enum Column {
    Numbers { values: Vec<f64>, whole: bool },
    Lists { rows: Vec<Vec<f64>>, whole: bool },
    Texts(Vec<String>),
}

pub fn read_parquet(path: &Path, options: &FileOptions) -> Result<Dataset, InputError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| InputError::new(format!("cannot read {shown}: {e}")))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| InputError::new(format!("{shown}: not a readable Parquet file ({e})")))?;
    let names: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name().to_owned())
        .collect();
    let mut columns: Vec<Option<Column>> = names.iter().map(|_| None).collect();
    let rows = reader.get_row_iter(None).map_err(|e| InputError::new(format!("{shown}: {e}")))?;
    for (row_index, row) in rows.enumerate() {
        let row = row.map_err(|e| InputError::new(format!("{shown} row {row_index}: {e}")))?;
        for (i, (name, field)) in row.get_column_iter().enumerate() {
            let bad = |why: String| InputError::new(format!("{shown} row {row_index}, column '{name}': {why}"));
            let column = &mut columns[i];
            match field {
                Field::Str(text) => match column.get_or_insert_with(|| Column::Texts(Vec::new())) {
                    Column::Texts(texts) => texts.push(text.clone()),
                    _ => return Err(bad("a string in a numeric column".to_owned())),
                },
                Field::ListInternal(list) => {
                    let values: Vec<f64> = list
                        .elements()
                        .iter()
                        .map(|element| {
                            number(element).ok_or_else(|| bad(format!("list element {element} is not a number")))
                        })
                        .collect::<Result<_, _>>()?;
                    match column.get_or_insert_with(|| Column::Lists { rows: Vec::new(), whole: true }) {
                        Column::Lists { rows, whole } => {
                            *whole &= values.iter().all(|v| v.fract() == 0.0);
                            rows.push(values);
                        }
                        _ => return Err(bad("a list in a column of single values".to_owned())),
                    }
                }
                other => {
                    let value = number(other).ok_or_else(|| bad(format!("{other} is not a number, a list or text")))?;
                    match column.get_or_insert_with(|| Column::Numbers { values: Vec::new(), whole: true }) {
                        Column::Numbers { values, whole } => {
                            *whole &= value.fract() == 0.0 && !matches!(other, Field::Float(_) | Field::Double(_));
                            values.push(value);
                        }
                        _ => return Err(bad("a single value in a list or text column".to_owned())),
                    }
                }
            }
        }
    }
    let columns: Vec<(String, Column)> =
        names.into_iter().zip(columns).filter_map(|(name, column)| column.map(|c| (name, c))).collect();
    from_columns(&shown, columns, options, &|_| None)
}

/// A data set from named columns (a Parquet file's, an Arrow file's), as described above;
/// a label column of strings holds class names (numbered as label_names.rs says), and
/// `class_names` gives the names a label column of ids stands for (a ClassLabel's).
pub(super) fn from_columns(
    shown: &str,
    mut columns: Vec<(String, Column)>,
    options: &FileOptions,
    class_names: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<Dataset, InputError> {
    let shown = shown.to_owned();
    if columns.is_empty() {
        return Err(InputError::new(format!("{shown}: no examples")));
    }
    let label = match &options.label_column {
        Some(name) => columns.iter().position(|(n, _)| n == name).ok_or_else(|| {
            let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
            InputError::new(format!("{shown}: no column '{name}' (label_column); columns: {}", names.join(", ")))
        })?,
        None => super::default_label(columns.iter().map(|(n, _)| n.as_str())).unwrap_or(usize::MAX),
    };

    // Class names in the label column: numbered, the names kept for id2label.
    let mut names = columns.get(label).and_then(|(name, _)| class_names(name));
    if let Some((_, Column::Texts(texts))) = columns.get(label).filter(|(n, _)| *n != options.text_column) {
        let raw = texts.iter().map(|t| RawLabel::Name(t.clone())).collect();
        let (ids, found) = label_names::encode(raw, &shown, |row| format!("row {row}"))?;
        names = found;
        columns[label].1 = Column::Numbers { values: ids.into_iter().map(|id| id as f64).collect(), whole: true };
    }

    // Text: tokenized, with the label column as class labels (or none: language modelling).
    if let Some((_, Column::Texts(texts))) = columns.iter().find(|(n, _)| *n == options.text_column) {
        let tokenizer = text::load_tokenizer(&shown, options)?;
        let labels = match columns.get(label) {
            Some((_, Column::Numbers { values, whole: true })) => Some(values.iter().map(|&v| v as i64).collect()),
            Some((name, _)) => {
                return Err(InputError::new(format!("{shown}: label column '{name}' does not hold whole numbers")))
            }
            None => None,
        };
        let mut dataset = text::from_texts(&shown, &tokenizer, texts, labels, options, |row| format!("row {row}"))?;
        dataset.label_names = names;
        return Ok(dataset);
    }

    let mut fields: Vec<(String, Tensor)> = Vec::new();
    let mut scalars: Vec<(String, Vec<f64>)> = Vec::new();
    // A file's own attention_mask is kept; one is made for padded input_ids only without it.
    let has_mask = columns.iter().any(|(n, _)| n == "attention_mask");
    for (i, (name, column)) in columns.into_iter().enumerate() {
        let field_name = if i == label { "labels".to_owned() } else { name.clone() };
        match column {
            Column::Numbers { values, whole } => {
                if i == label {
                    fields.push((field_name, numbers(&values, whole)));
                } else {
                    scalars.push((name, values));
                }
            }
            Column::Lists { rows, whole } => {
                let pad = if i == label { -100.0 } else { 0.0 };
                let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
                let ragged = rows.iter().any(|r| r.len() != longest);
                let n = rows.len() as i64;
                let (flat, mask) = super::pad_rows(&rows, pad, longest);
                fields.push((field_name.clone(), numbers(&flat, whole).view([n, longest as i64])));
                if ragged && field_name == "input_ids" && !rows.is_empty() && !has_mask {
                    fields.push(("attention_mask".to_owned(), Tensor::from_slice(&mask).view([n, longest as i64])));
                }
            }
            // Text columns other than text_column are not model inputs.
            Column::Texts(_) => {}
        }
    }
    // Numeric columns: the features of tabular data, or extra fields.
    let has_input = fields.iter().any(|(n, _)| n == "input" || n == "input_ids");
    let chosen: Vec<(String, Vec<f64>)> = match &options.feature_columns {
        Some(wanted) => wanted
            .iter()
            .map(|w| {
                scalars
                    .iter()
                    .find(|(n, _)| n == w)
                    .cloned()
                    .ok_or_else(|| InputError::new(format!("{shown}: no numeric column '{w}' (feature_columns)")))
            })
            .collect::<Result<_, _>>()?,
        None if !has_input => std::mem::take(&mut scalars),
        None => Vec::new(),
    };
    if !chosen.is_empty() {
        let n = chosen[0].1.len() as i64;
        let mut flat = Vec::with_capacity(chosen.len() * n as usize);
        for row in 0..n as usize {
            flat.extend(chosen.iter().map(|(_, values)| values[row] as f32));
        }
        fields.push(("input".to_owned(), Tensor::from_slice(&flat).view([n, chosen.len() as i64])));
    }
    for (name, values) in scalars.into_iter().filter(|(n, _)| !chosen.iter().any(|(c, _)| c == n)) {
        fields.push((name, Tensor::from_slice(&values).to_kind(Kind::Float)));
    }
    let label_field = (label != usize::MAX).then_some("labels");
    super::token_labels::shift_for_causal_lm(&shown, &mut fields, label_field)?;
    let mut dataset = Dataset::new(&shown, fields)?;
    dataset.label_names = names;
    Ok(dataset)
}

fn numbers(values: &[f64], whole: bool) -> Tensor {
    if whole {
        Tensor::from_slice(&values.iter().map(|&v| v as i64).collect::<Vec<_>>())
    } else {
        Tensor::from_slice(values).to_kind(Kind::Float)
    }
}

fn number(field: &Field) -> Option<f64> {
    Some(match field {
        Field::Bool(b) => f64::from(u8::from(*b)),
        Field::Byte(v) => *v as f64,
        Field::Short(v) => *v as f64,
        Field::Int(v) => *v as f64,
        Field::Long(v) => *v as f64,
        Field::UByte(v) => *v as f64,
        Field::UShort(v) => *v as f64,
        Field::UInt(v) => *v as f64,
        Field::ULong(v) => *v as f64,
        Field::Float(v) => *v as f64,
        Field::Double(v) => *v,
        Field::Float16(v) => v.to_f64(),
        _ => return None,
    })
}
