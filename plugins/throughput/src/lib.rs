//! `throughput`: adds training speed to each training log event, measured since the one
//! before: `throughput_samples_per_second`, and `throughput_tokens_per_second` when the run
//! counts input tokens (`num_input_tokens_seen`). No config.

use std::time::Instant;

use plugin_api::prelude::*;

struct Throughput {
    last: Option<(Instant, i64, i64)>,
}

impl Callback for Throughput {
    const WANTS_EXTRA_LOGS: bool = true;

    fn on_train_begin(
        &mut self,
        _: &TrainingArguments,
        state: &TrainerState,
        _: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        self.last = Some((Instant::now(), state.global_step, state.num_input_tokens_seen));
        Ok(())
    }

    fn extra_logs(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        logs: &Metrics,
    ) -> Result<Vec<(String, f64)>, PluginError> {
        if logs.get("loss").is_none() {
            return Ok(Vec::new());
        }
        let Some((since, step, tokens)) = self.last else { return Ok(Vec::new()) };
        let seconds = since.elapsed().as_secs_f64().max(1e-9);
        // Samples per optimizer step: the batch size times the accumulated micro-batches.
        let per_step = (args.per_device_train_batch_size * args.gradient_accumulation_steps.max(1)) as f64;
        let mut extra =
            vec![("throughput_samples_per_second".to_owned(), (state.global_step - step) as f64 * per_step / seconds)];
        if state.num_input_tokens_seen > tokens {
            extra.push((
                "throughput_tokens_per_second".to_owned(),
                (state.num_input_tokens_seen - tokens) as f64 / seconds,
            ));
        }
        self.last = Some((Instant::now(), state.global_step, state.num_input_tokens_seen));
        Ok(extra)
    }
}

export_plugin! {
    callbacks: { "throughput" => |_: NoConfig| Ok(Throughput { last: None }) },
}
