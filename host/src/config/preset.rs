//! The default job: the digits MLP. Its preset sits between Hugging Face's defaults and the
//! user's file and flags, with values that train this small model well in seconds. It
//! applies only to the digits job: a run on the user's own data (train_file) starts from
//! Hugging Face's defaults, as README promises.

/// The preset as TOML keys (training argument names).
pub fn digits_preset() -> toml::Table {
    toml::toml! {
        num_train_epochs = 10.0
        per_device_train_batch_size = 64
        per_device_eval_batch_size = 256
        learning_rate = 2e-3
        weight_decay = 0.01
        logging_steps = 25.0
        eval_strategy = "epoch"
    }
}

/// Whether the preset applies under the user's layers: only when they name no training
/// data.
pub fn applies(user: &toml::Table) -> bool {
    !user.contains_key("train_file")
}

/// `--help`'s default for an argument: the preset's when it has one (with Hugging Face's
/// after it, which applies with train_file), else Hugging Face's.
pub fn help_default(name: &str, hf_defaults: &toml::Table) -> Option<String> {
    let show = |value: &toml::Value| match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let hf = hf_defaults.get(name).map(show);
    match (digits_preset().get(name).map(show), hf) {
        (Some(preset), Some(hf)) => Some(format!("[default: {preset}] [with train_file: {hf}]")),
        (Some(preset), None) => Some(format!("[default: {preset}]")),
        (None, Some(hf)) => Some(format!("[default: {hf}]")),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::layers::{hf_defaults, with_defaults};

    #[test]
    fn the_preset_tunes_the_digits_job_only() {
        let digits = with_defaults(toml::toml! { max_steps = 5 });
        assert_eq!(digits["learning_rate"].as_float(), Some(2e-3));
        assert_eq!(digits["max_steps"].as_integer(), Some(5));
        let own = with_defaults(toml::toml! { train_file = "data.csv" });
        assert_eq!(own["learning_rate"].as_float(), Some(5e-5));
        assert_eq!(own["eval_strategy"].as_str(), Some("no"));
        // What the user sets wins either way.
        let own = with_defaults(toml::toml! { train_file = "data.csv"
        learning_rate = 0.1 });
        assert_eq!(own["learning_rate"].as_float(), Some(0.1));
    }

    #[test]
    fn help_shows_both_defaults_where_they_differ() {
        let hf = hf_defaults();
        assert_eq!(help_default("learning_rate", &hf).unwrap(), "[default: 0.002] [with train_file: 0.00005]");
        assert_eq!(help_default("seed", &hf).unwrap(), "[default: 42]");
        assert_eq!(help_default("optim", &hf).unwrap(), "[default: adamw]");
    }
}
