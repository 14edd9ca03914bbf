//! The default job: the digits MLP. Its preset sits between Hugging Face's defaults and the
//! user's file and flags, with values that train this small model well in seconds.

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
