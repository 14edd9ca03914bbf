//! The layers of a run's configuration: Hugging Face defaults, then the default job's
//! preset (without training data of the user's), then the TOML file (`--config`), then
//! flags. Each layer is a TOML table; later layers win. `parse` splits the merged table
//! into training arguments and the plugin selection.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::config::arguments::{TrainingArguments, ARGUMENT_ALIASES, ARGUMENT_NAMES};
use crate::error::InputError;

/// Keys of the config file that are not training arguments.
const PLUGIN_KEYS: &[&str] = &["plugin", "loss", "callback", "metric", "batch_transform", "plugin_config"];

/// Which plugins to load and which of their components to use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginSelection {
    /// Plugin library files, in load order.
    pub plugins: Vec<PathBuf>,
    /// The loss component to use; `None` picks the only loss the plugins provide, or the
    /// built-in cross entropy when they provide none.
    pub loss: Option<String>,
    /// Callback components to use, in call order; empty means every callback provided.
    pub callbacks: Vec<String>,
    /// Metric components to use (plugin-api 1.6); empty means every metric provided.
    pub metrics: Vec<String>,
    /// Batch transforms, in order; empty means every batch transform provided.
    pub batch_transforms: Vec<String>,
    /// The optimizer component, from `optim = "plugin:NAME"`.
    pub optimizer: Option<String>,
    /// The schedule component, from `lr_scheduler_type = "plugin:NAME"`.
    pub scheduler: Option<String>,
    /// The model component, from `model = "plugin:NAME"`.
    pub model: Option<String>,
    /// Each component's config (a JSON object), by component name.
    pub component_config: BTreeMap<String, serde_json::Value>,
}

/// Hugging Face's defaults as a table.
pub fn hf_defaults() -> toml::Table {
    toml::Value::try_from(TrainingArguments::default()).ok().and_then(|v| v.as_table().cloned()).unwrap_or_default()
}

/// The user's layers (config file, flags) over the defaults: Hugging Face's, with the
/// default job's preset between them when the user names no training data (the preset
/// tunes the digits job; data of the user's own starts from Hugging Face's defaults).
pub fn with_defaults(user: toml::Table) -> toml::Table {
    let mut table = hf_defaults();
    if super::preset::applies(&user) {
        merge(&mut table, super::preset::digits_preset());
    }
    merge(&mut table, user);
    table
}

/// Reads a TOML config file, or a JSON one (`.json`: what `TrainingArguments.to_json_string()`
/// and HF's example scripts take), into a table; errors are one line with the line number.
pub fn read_config_file(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| InputError::new(format!("cannot read config file {}: {e}", path.display())))?;
    let mut table = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        json_table(&text).map_err(|why| InputError::new(format!("config file {}: {why}", path.display())))?
    } else {
        toml_table(&text, path)?
    };
    join_string_lists(&mut table);
    read_script_flags_as_defaults(&mut table, path);
    Ok(table)
}

/// do_train, do_eval and do_predict all false is how `TrainingArguments.to_dict()` writes
/// its defaults (Trainer itself never reads them): in a file that means "not set", so the
/// run trains, rather than "nothing to do".
fn read_script_flags_as_defaults(table: &mut toml::Table, path: &Path) {
    let off = |key: &str| table.get(key).is_some_and(|v| v.as_bool() == Some(false));
    if off("do_train") && off("do_eval") && off("do_predict") {
        tracing::info!(
            "{}: do_train, do_eval and do_predict are all false, as TrainingArguments.to_dict() writes its defaults: read as not set (the run trains)",
            path.display()
        );
        for key in ["do_train", "do_eval", "do_predict"] {
            table.remove(key);
        }
    }
}

/// Arguments HF holds as lists of names (`report_to = []` from `to_dict()`), which the
/// host's flags take comma-separated.
const NAME_LISTS: &[&str] = &["report_to", "lora_target_modules", "lora_modules_to_save"];

fn join_string_lists(table: &mut toml::Table) {
    for key in NAME_LISTS {
        if let Some(toml::Value::Array(items)) = table.get(*key) {
            if let Some(names) = items.iter().map(toml::Value::as_str).collect::<Option<Vec<_>>>() {
                let joined = if names.is_empty() && *key == "report_to" { "none".to_owned() } else { names.join(",") };
                table.insert((*key).to_owned(), toml::Value::String(joined));
            }
        }
    }
}

fn toml_table(text: &str, path: &Path) -> Result<toml::Table> {
    toml::from_str::<toml::Table>(text).map_err(|e| {
        let line = e.span().map(|span| text[..span.start].lines().count().max(1));
        let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        InputError::new(format!("config file {}{at}: {}", path.display(), e.message().trim().replace('\n', "; ")))
            .into()
    })
}

/// A JSON object as a TOML table. JSON's null (Python's None) means "the default": the key
/// is left out, as TOML has no null.
fn json_table(text: &str) -> std::result::Result<toml::Table, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON (line {}, column {}: {e})", e.line(), e.column()))?;
    match json_to_toml(value) {
        Some(toml::Value::Table(table)) => Ok(table),
        _ => Err("not a JSON object of training arguments".to_owned()),
    }
}

fn json_to_toml(value: serde_json::Value) -> Option<toml::Value> {
    use serde_json::Value as J;
    Some(match value {
        J::Null => return None,
        J::Bool(b) => toml::Value::Boolean(b),
        J::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        J::String(s) => toml::Value::String(s),
        J::Array(items) => toml::Value::Array(items.into_iter().filter_map(json_to_toml).collect()),
        J::Object(map) => {
            toml::Value::Table(map.into_iter().filter_map(|(k, v)| Some((k, json_to_toml(v)?))).collect())
        }
    })
}

/// Merges `over` into `base`: tables merge key by key, anything else is replaced.
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Splits the merged table into training arguments and the plugin selection; an unknown
/// key or a value of the wrong type is an error naming the key.
pub fn parse(mut table: toml::Table, origin: &str) -> Result<(TrainingArguments, PluginSelection)> {
    let selection = take_plugin_selection(&mut table, origin)?;
    for (alias, name) in ARGUMENT_ALIASES {
        if let Some(value) = table.remove(*alias) {
            table.insert((*name).to_owned(), value);
        }
    }
    super::hf_arguments::take_answered(&mut table, origin)?;
    for key in table.keys() {
        if !ARGUMENT_NAMES.contains(&key.as_str()) {
            return Err(InputError::new(format!(
                "{origin}: unknown key '{key}'{}; see `host --help` for the training arguments",
                suggestion(key)
            ))
            .into());
        }
    }
    let args: TrainingArguments = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().message().trim().replace('\n', "; ");
        InputError::new(format!("{origin}: {key}: {message}"))
    })?;
    Ok((args, selection))
}

/// " (did you mean 'x'?)" for a near miss among the known keys.
fn suggestion(key: &str) -> String {
    crate::error::did_you_mean(key, ARGUMENT_NAMES.iter().chain(PLUGIN_KEYS.iter()).copied())
}

fn take_plugin_selection(table: &mut toml::Table, origin: &str) -> Result<PluginSelection> {
    let bad = |key: &str, want: &str| InputError::new(format!("{origin}: '{key}' must be {want}"));
    let strings = |value: toml::Value, key: &str| -> Result<Vec<String>, InputError> {
        match value {
            toml::Value::String(s) => Ok(vec![s]),
            toml::Value::Array(items) => items
                .into_iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| bad(key, "a list of strings")))
                .collect(),
            _ => Err(bad(key, "a list of strings")),
        }
    };
    let mut selection = PluginSelection::default();
    if let Some(value) = table.remove("plugin") {
        selection.plugins = strings(value, "plugin")?.into_iter().map(PathBuf::from).collect();
    }
    if let Some(value) = table.remove("loss") {
        selection.loss = Some(value.as_str().ok_or_else(|| bad("loss", "a component name (a string)"))?.to_owned());
    }
    if let Some(value) = table.remove("callback") {
        selection.callbacks = strings(value, "callback")?;
    }
    if let Some(value) = table.remove("metric") {
        selection.metrics = strings(value, "metric")?;
    }
    if let Some(value) = table.remove("batch_transform") {
        selection.batch_transforms = strings(value, "batch_transform")?;
    }
    if let Some(value) = table.remove("plugin_config") {
        let toml::Value::Table(components) = value else {
            return Err(bad("plugin_config", "a table of component tables ([plugin_config.NAME])").into());
        };
        for (name, config) in components {
            if !config.is_table() {
                return Err(bad(&format!("plugin_config.{name}"), "a table of that component's settings").into());
            }
            let json =
                serde_json::to_value(&config).map_err(|e| bad(&format!("plugin_config.{name}"), &e.to_string()))?;
            selection.component_config.insert(name, json);
        }
    }
    Ok(selection)
}

/// The plugin keys of a config table, from a selection (its component configs aside);
/// lists that are empty stay out (so that a layer below them still counts).
pub fn insert_selection(table: &mut toml::Table, selection: &PluginSelection) {
    if !selection.plugins.is_empty() {
        let paths = selection.plugins.iter().map(|p| toml::Value::String(p.display().to_string())).collect();
        table.insert("plugin".to_owned(), toml::Value::Array(paths));
    }
    if let Some(loss) = &selection.loss {
        table.insert("loss".to_owned(), toml::Value::String(loss.to_owned()));
    }
    for (key, names) in [
        ("callback", &selection.callbacks),
        ("metric", &selection.metrics),
        ("batch_transform", &selection.batch_transforms),
    ] {
        if !names.is_empty() {
            table.insert(key.to_owned(), toml::Value::Array(names.iter().cloned().map(toml::Value::String).collect()));
        }
    }
}

/// Parses `--plugin-config NAME.KEY=VALUE` into a table `{plugin_config: {NAME: {KEY: VALUE}}}`.
/// VALUE is read as a TOML value (`0.1`, `[1, 2, 3]`, `true`, `"text"`); anything that is
/// not valid TOML is taken as a string.
pub fn plugin_config_flag(spec: &str) -> Result<toml::Table, InputError> {
    let bad = || {
        InputError::new(format!(
            "--plugin-config '{spec}' is not NAME.KEY=VALUE (for example weighted_ce.label_smoothing=0.1)"
        ))
    };
    let (path, raw_value) = spec.split_once('=').ok_or_else(bad)?;
    let (component, key) = path.split_once('.').ok_or_else(bad)?;
    if component.is_empty() || key.is_empty() {
        return Err(bad());
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw_value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw_value.to_owned()));
    let mut inner = toml::Table::new();
    inner.insert(key.to_owned(), value);
    let mut components = toml::Table::new();
    components.insert(component.to_owned(), toml::Value::Table(inner));
    let mut table = toml::Table::new();
    table.insert("plugin_config".to_owned(), toml::Value::Table(components));
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ResolvedConfig;

    fn resolve(table: toml::Table, origin: &str) -> Result<ResolvedConfig> {
        ResolvedConfig::from_table(table, origin)
    }

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_json_config_reads_as_the_same_toml_with_nulls_as_defaults() {
        let json = json_table(r#"{"learning_rate": 0.001, "max_steps": 7, "report_to": [], "warmup_steps": null, "lr_scheduler_kwargs": {"num_cycles": 2}}"#).unwrap();
        let toml =
            table("learning_rate = 0.001\nmax_steps = 7\nreport_to = []\nlr_scheduler_kwargs = { num_cycles = 2 }");
        assert_eq!(json, toml);
        assert_eq!(json_table("[1, 2]").unwrap_err(), "not a JSON object of training arguments");
        assert!(json_table("{\"a\": }").unwrap_err().starts_with("not JSON (line 1, column 7"));
    }

    #[test]
    fn later_layers_win_and_tables_merge() {
        let mut base = table("learning_rate = 0.1\n[plugin_config.a]\nx = 1\ny = 2");
        merge(&mut base, table("learning_rate = 0.2\n[plugin_config.a]\ny = 3"));
        let config = resolve(base, "test").unwrap();
        assert_eq!(config.args.learning_rate, 0.2);
        assert_eq!(config.plugins.component_config["a"], serde_json::json!({"x": 1, "y": 3}));
    }

    #[test]
    fn unknown_key_is_an_error_with_a_suggestion() {
        let err = resolve(table("lerning_rate = 0.1"), "f.toml").unwrap_err().to_string();
        assert_eq!(
            err,
            "f.toml: unknown key 'lerning_rate' (did you mean 'learning_rate'?); see `host --help` for the training arguments"
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = resolve(table("learning_rate = \"fast\""), "f.toml").unwrap_err().to_string();
        assert!(err.contains("learning_rate"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn plugin_config_flag_parses_toml_values() {
        let t = plugin_config_flag("weighted_ce.weights=[1, 2, 3]").unwrap();
        let config = resolve(t, "flags").unwrap();
        assert_eq!(config.plugins.component_config["weighted_ce"], serde_json::json!({"weights": [1, 2, 3]}));
        let t = plugin_config_flag("x.name=hello world").unwrap();
        assert_eq!(
            resolve(t, "flags").unwrap().plugins.component_config["x"],
            serde_json::json!({"name": "hello world"})
        );
        assert!(plugin_config_flag("nodot=1").is_err());
    }
}
