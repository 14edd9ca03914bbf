//! `tensorboard`: writes TensorBoard event files, as Hugging Face's `TensorBoardCallback`:
//! every logged number becomes a scalar at the global step, named `train/loss`,
//! `train/learning_rate`, `train/grad_norm`, `eval/loss`, `eval/accuracy`, ...
//!
//! Config: `log_dir` (default `{output_dir}/runs`).
//!
//! An event file is a sequence of TFRecords (length, masked CRC-32C of the length, data,
//! masked CRC-32C of the data) holding `Event` protocol buffers; the three messages used
//! here are encoded by hand below.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use plugin_api::prelude::*;

#[derive(Deserialize, JsonSchema, Default)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct Config {
    /// Folder for the event files; unset writes them to runs/ in the output directory.
    log_dir: Option<String>,
}

struct TensorBoard {
    log_dir: Option<String>,
    writer: Option<BufWriter<File>>,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// HF's `rewrite_logs`: `eval_x` -> `eval/x`, `test_x` -> `test/x`, others -> `train/x`.
fn tag(name: &str) -> String {
    for prefix in ["eval", "test"] {
        if let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) {
            return format!("{prefix}/{rest}");
        }
    }
    format!("train/{name}")
}

// Protocol buffer encoding of the fields used.
fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn length_delimited(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `Event { wall_time = 1; step = 2; file_version = 3 | summary = 5 }`.
fn event(step: i64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    varint(1 << 3 | 1, &mut out);
    out.extend_from_slice(&now().to_le_bytes());
    varint(2 << 3, &mut out);
    varint(step as u64, &mut out);
    body(&mut out);
    out
}

/// `Summary { repeated Value value = 1 }` with `Value { tag = 1; simple_value = 2 }`.
fn summary(scalars: &[(String, f32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in scalars {
        let mut entry = Vec::new();
        length_delimited(1, name.as_bytes(), &mut entry);
        varint(2 << 3 | 5, &mut entry);
        entry.extend_from_slice(&value.to_le_bytes());
        length_delimited(1, &entry, &mut out);
    }
    out
}

fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn write_record(out: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    let length = (data.len() as u64).to_le_bytes();
    out.write_all(&length)?;
    out.write_all(&masked_crc(&length).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc(data).to_le_bytes())?;
    out.flush()
}

impl Callback for TensorBoard {
    fn on_train_begin(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        _: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        if !state.is_world_process_zero || self.writer.is_some() {
            return Ok(());
        }
        let dir = self.log_dir.clone().unwrap_or_else(|| format!("{}/runs", args.output_dir));
        std::fs::create_dir_all(&dir).map_err(|e| PluginError::config(format!("cannot create log_dir {dir}: {e}")))?;
        let path = format!("{dir}/events.out.tfevents.{}.host.{}", now() as u64, std::process::id());
        let mut writer = BufWriter::new(File::create(&path)?);
        let first = event(0, |out| length_delimited(3, b"brain.Event:2", out));
        write_record(&mut writer, &first)?;
        self.writer = Some(writer);
        Ok(())
    }

    fn on_log(
        &mut self,
        _: &TrainingArguments,
        state: &TrainerState,
        _: &mut TrainerControl,
        logs: &Metrics,
    ) -> Result<(), PluginError> {
        let Some(writer) = &mut self.writer else { return Ok(()) };
        let scalars: Vec<(String, f32)> = logs.iter().map(|(name, value)| (tag(name), value as f32)).collect();
        let record = event(state.global_step, |out| length_delimited(5, &summary(&scalars), out));
        write_record(writer, &record)?;
        Ok(())
    }
}

export_plugin! {
    callbacks: { "tensorboard" => |c: Config| Ok(TensorBoard { log_dir: c.log_dir, writer: None }) },
}
