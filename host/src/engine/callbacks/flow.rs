//! When to log, evaluate, save and stop: Hugging Face's `DefaultFlowCallback`, and the
//! rule by which `CallbackHandler` clears flags before dispatching an event. Policy only,
//! no plugins, so each rule is tested on its own.

use super::events::{Event, TrainerControl};
use crate::config::arguments::{IntervalStrategy, SaveStrategy, TrainingArguments};
use crate::engine::trainer::state::TrainerState;

/// Hugging Face `CallbackHandler`: flags cleared before an event is dispatched.
pub fn reset_before(event: Event, control: &mut TrainerControl) {
    match event {
        Event::TrainBegin => control.should_training_stop = false,
        Event::EpochBegin => control.should_epoch_stop = false,
        Event::StepBegin => {
            control.should_log = false;
            control.should_evaluate = false;
            control.should_save = false;
        }
        Event::Log => control.should_log = false,
        Event::Evaluate => control.should_evaluate = false,
        Event::Save => control.should_save = false,
        _ => {}
    }
}

/// Hugging Face `DefaultFlowCallback`: when to log, evaluate, save and stop.
pub fn default_flow(event: Event, args: &TrainingArguments, state: &TrainerState, control: &mut TrainerControl) {
    match event {
        Event::StepEnd => {
            if state.global_step == 1 && args.logging_first_step {
                control.should_log = true;
            }
            if args.logging_strategy == IntervalStrategy::Steps && state.global_step % state.logging_steps == 0 {
                control.should_log = true;
            }
            if args.eval_strategy == IntervalStrategy::Steps
                && state.global_step % state.eval_steps == 0
                && args.eval_delay <= state.global_step as f64
            {
                control.should_evaluate = true;
            }
            if args.save_strategy == SaveStrategy::Steps
                && state.save_steps > 0
                && state.global_step % state.save_steps == 0
            {
                control.should_save = true;
            }
            if state.global_step >= state.max_steps {
                control.should_training_stop = true;
                // Save the model at the end when saving by steps.
                if args.save_strategy == SaveStrategy::Steps {
                    control.should_save = true;
                }
            }
        }
        Event::EpochEnd => {
            if args.logging_strategy == IntervalStrategy::Epoch {
                control.should_log = true;
            }
            if args.eval_strategy == IntervalStrategy::Epoch && args.eval_delay <= state.epoch {
                control.should_evaluate = true;
            }
            if args.save_strategy == SaveStrategy::Epoch {
                control.should_save = true;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags as a short string, for readable tables: "L" log, "E" evaluate, "S" save,
    /// "T" training stop, "P" epoch stop.
    fn flags(control: &TrainerControl) -> String {
        [
            (control.should_log, 'L'),
            (control.should_evaluate, 'E'),
            (control.should_save, 'S'),
            (control.should_training_stop, 'T'),
            (control.should_epoch_stop, 'P'),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, c)| *c)
        .collect()
    }

    fn control_of(text: &str) -> TrainerControl {
        TrainerControl {
            should_log: text.contains('L'),
            should_evaluate: text.contains('E'),
            should_save: text.contains('S'),
            should_training_stop: text.contains('T'),
            should_epoch_stop: text.contains('P'),
        }
    }

    #[test]
    fn flags_are_cleared_as_hugging_face_clears_them() {
        let cases = [
            (Event::TrainBegin, "LESTP", "LESP"),
            (Event::EpochBegin, "LESTP", "LEST"),
            (Event::StepBegin, "LESTP", "TP"),
            (Event::Log, "LESTP", "ESTP"),
            (Event::Evaluate, "LESTP", "LSTP"),
            (Event::Save, "LESTP", "LETP"),
            (Event::StepEnd, "LESTP", "LESTP"),
            (Event::EpochEnd, "LESTP", "LESTP"),
            (Event::SubstepEnd, "LESTP", "LESTP"),
            (Event::PredictionStep, "LESTP", "LESTP"),
        ];
        for (event, before, after) in cases {
            let mut control = control_of(before);
            reset_before(event, &mut control);
            assert_eq!(flags(&control), after, "{event:?}");
        }
    }

    fn args(toml: &str) -> TrainingArguments {
        toml::from_str(toml).unwrap()
    }

    fn state(global_step: i64, epoch: f64) -> TrainerState {
        TrainerState {
            global_step,
            epoch,
            max_steps: 100,
            logging_steps: 10,
            eval_steps: 20,
            save_steps: 50,
            ..Default::default()
        }
    }

    #[test]
    fn default_flow_follows_the_strategies() {
        let steps = r#"logging_strategy = "steps"
            eval_strategy = "steps"
            save_strategy = "steps""#;
        let epochs = r#"logging_strategy = "epoch"
            eval_strategy = "epoch"
            save_strategy = "epoch""#;
        let cases: &[(&str, Event, i64, f64, &str)] = &[
            (steps, Event::StepEnd, 1, 0.01, ""),
            (steps, Event::StepEnd, 10, 0.1, "L"),
            (steps, Event::StepEnd, 20, 0.2, "LE"),
            (steps, Event::StepEnd, 50, 0.5, "LS"),
            (steps, Event::StepEnd, 99, 0.99, ""),
            // The last step stops training and, saving by steps, saves.
            (steps, Event::StepEnd, 100, 1.0, "LEST"),
            (steps, Event::EpochEnd, 40, 1.0, ""),
            (epochs, Event::StepEnd, 20, 0.2, ""),
            (epochs, Event::StepEnd, 100, 1.0, "T"),
            (epochs, Event::EpochEnd, 40, 1.0, "LES"),
            (r#"logging_first_step = true"#, Event::StepEnd, 1, 0.01, "L"),
            (r#"save_strategy = "best""#, Event::StepEnd, 100, 1.0, "LT"),
            (r#"save_strategy = "no""#, Event::StepEnd, 50, 0.5, "L"),
            // eval_delay: steps for the steps strategy, epochs for the epoch strategy.
            ("eval_strategy = \"steps\"\neval_delay = 30.0", Event::StepEnd, 20, 0.2, "L"),
            ("eval_strategy = \"steps\"\neval_delay = 30.0", Event::StepEnd, 40, 0.4, "LE"),
            ("eval_strategy = \"epoch\"\neval_delay = 2.0", Event::EpochEnd, 40, 1.0, ""),
            ("eval_strategy = \"epoch\"\neval_delay = 2.0", Event::EpochEnd, 80, 2.0, "E"),
            (steps, Event::Log, 10, 0.1, ""),
            (steps, Event::StepBegin, 10, 0.1, ""),
        ];
        for (toml, event, step, epoch, expected) in cases {
            let mut control = TrainerControl::default();
            default_flow(*event, &args(toml), &state(*step, *epoch), &mut control);
            assert_eq!(flags(&control), *expected, "{toml} / {event:?} at step {step}");
        }
    }

    #[test]
    fn event_names_are_the_callback_methods() {
        let names: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
        assert_eq!(names.len(), 15);
        assert!(names.iter().all(|n| n.starts_with("on_")));
        assert_eq!(Event::PreOptimizerStep.name(), "on_pre_optimizer_step");
    }
}
