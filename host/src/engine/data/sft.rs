//! Supervised fine-tuning data in TRL's formats, prepared as TRL's SFTTrainer prepares it:
//! - conversational, `{"messages": [{"role": ..., "content": ...}, ...]}`: rendered with
//!   the tokenizer's chat template and tokenized without special tokens (the template has
//!   them); with assistant_only_loss only the `{% generation %}` blocks are learned;
//! - prompt-completion, `{"prompt": ..., "completion": ...}`, as text (the end-of-text token
//!   appended to a completion without it) or as message lists (the prompt rendered with the
//!   generation prompt); with completion_only_loss (the default) only the completion is
//!   learned, from where the tokenized prompt and prompt+completion diverge.
//!
//! Sequences are then cut to max_seq_length from the start, and examples with nothing left
//! to learn are dropped, each counted in a log line.

use minijinja::Value;
use tokenizers::Tokenizer;

use super::chat::{tokens_in_spans, ChatTemplate, TokenizerConfig};
use super::FileOptions;
use crate::error::InputError;

/// The shape of a data file's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Conversational,
    PromptCompletion,
}

impl Format {
    /// The format of a row, if it is one of TRL's (text rows are not).
    pub fn of(row: &serde_json::Value) -> Option<Self> {
        if row.get("messages").is_some() {
            Some(Format::Conversational)
        } else if row.get("prompt").is_some() && row.get("completion").is_some() {
            Some(Format::PromptCompletion)
        } else {
            None
        }
    }
}

/// Token ids with the tokens to learn.
#[derive(Debug, Default, PartialEq)]
pub struct Example {
    pub ids: Vec<i64>,
    pub learned: Vec<bool>,
}

/// Prepares one row; `at` names it in errors.
pub struct Preparer<'a> {
    pub tokenizer: &'a Tokenizer,
    pub config: &'a TokenizerConfig,
    pub options: &'a FileOptions,
    pub source: &'a str,
}

impl Preparer<'_> {
    /// `line` (the row's JSON text, so that messages keep their keys' order) as an example.
    pub fn example(
        &self,
        format: Format,
        line: &str,
        at: &dyn Fn(String) -> InputError,
    ) -> Result<Example, InputError> {
        let row: Value = serde_json::from_str(line).map_err(|e| at(format!("not JSON ({e})")))?;
        let field = |name: &str| row.get_attr(name).ok().filter(|v| !v.is_undefined() && !v.is_none());
        match format {
            Format::Conversational => {
                let messages = field("messages").ok_or_else(|| at("no 'messages' key (chat data)".into()))?;
                let tools = field("tools");
                let rendered = self.render(&messages, false, tools.as_ref(), at)?;
                let example = self.tokenize_chat(&rendered, at)?;
                if self.options.assistant_only_loss && !example.learned.contains(&true) {
                    return Err(at(format!(
                        "assistant_only_loss: the chat has no assistant tokens in the template's {{% generation %}} blocks (template {})",
                        self.template_origin()
                    )));
                }
                Ok(example)
            }
            Format::PromptCompletion => {
                let (prompt, completion) = (field("prompt"), field("completion"));
                let (Some(prompt), Some(completion)) = (prompt, completion) else {
                    return Err(at("a prompt-completion row needs both 'prompt' and 'completion'".into()));
                };
                match (prompt.as_str(), completion.as_str()) {
                    (Some(prompt), Some(completion)) => self.text_pair(prompt, completion, at),
                    (None, None) => self.chat_pair(&prompt, &completion, field("tools").as_ref(), at),
                    _ => Err(at("'prompt' and 'completion' must both be texts or both lists of messages".into())),
                }
            }
        }
    }

    fn template(&self, at: &dyn Fn(String) -> InputError) -> Result<&ChatTemplate, InputError> {
        self.config.template.as_ref().ok_or_else(|| {
            at(format!(
                "chat data needs a chat template: none in {} (no chat_template.jinja beside it and no chat_template in tokenizer_config.json); add the model's template, or give the data as text",
                self.options.tokenizer_file.as_deref().unwrap_or("the tokenizer")
            ))
        })
    }

    fn template_origin(&self) -> String {
        self.config.template.as_ref().map_or_else(String::new, |t| t.origin.display().to_string())
    }

    fn render(
        &self,
        messages: &Value,
        add_generation_prompt: bool,
        tools: Option<&Value>,
        at: &dyn Fn(String) -> InputError,
    ) -> Result<super::chat::Rendered, InputError> {
        let template = self.template(at)?;
        template.render(messages, add_generation_prompt, tools).map_err(|e| at(format!("chat template: {e}")))
    }

    /// A rendered chat's tokens; learned: all, or with assistant_only_loss the tokens of
    /// its generation blocks.
    fn tokenize_chat(
        &self,
        rendered: &super::chat::Rendered,
        at: &dyn Fn(String) -> InputError,
    ) -> Result<Example, InputError> {
        let encoding =
            self.tokenizer.encode(rendered.text.as_str(), false).map_err(|e| at(format!("cannot tokenize ({e})")))?;
        let ids: Vec<i64> = encoding.get_ids().iter().map(|&id| id as i64).collect();
        let learned = match self.options.assistant_only_loss {
            true => tokens_in_spans(encoding.get_offsets(), &rendered.generation),
            false => vec![true; ids.len()],
        };
        Ok(Example { ids, learned })
    }

    fn text_pair(
        &self,
        prompt: &str,
        completion: &str,
        at: &dyn Fn(String) -> InputError,
    ) -> Result<Example, InputError> {
        let eos = self.eos_token(at)?;
        let completion = match completion.ends_with(eos.as_str()) {
            true => completion.to_owned(),
            false => format!("{completion}{eos}"),
        };
        let encode = |text: &str| -> Result<Vec<i64>, InputError> {
            let encoding = self.tokenizer.encode(text, true).map_err(|e| at(format!("cannot tokenize ({e})")))?;
            Ok(encoding.get_ids().iter().map(|&id| id as i64).collect())
        };
        let prompt_ids = encode(prompt)?;
        let ids = encode(&format!("{prompt}{completion}"))?;
        Ok(self.completion_example(&prompt_ids, ids, None))
    }

    fn chat_pair(
        &self,
        prompt: &Value,
        completion: &Value,
        tools: Option<&Value>,
        at: &dyn Fn(String) -> InputError,
    ) -> Result<Example, InputError> {
        let prompt_rendered = self.render(prompt, true, tools, at)?;
        let prompt_ids = self.tokenize_chat(&prompt_rendered, at)?.ids;
        let both: Vec<Value> =
            prompt.try_iter().into_iter().flatten().chain(completion.try_iter().into_iter().flatten()).collect();
        let full = self.tokenize_chat(&self.render(&Value::from(both), false, tools, at)?, at)?;
        let assistant = self.options.assistant_only_loss.then_some(full.learned);
        Ok(self.completion_example(&prompt_ids, full.ids, assistant))
    }

    /// The completion starts where the tokenized prompt and prompt+completion diverge (TRL's
    /// common_prefix_length); with completion_only_loss only it is learned, and with an
    /// assistant mask only its tokens in the mask.
    fn completion_example(&self, prompt_ids: &[i64], ids: Vec<i64>, assistant: Option<Vec<bool>>) -> Example {
        let prefix = prompt_ids.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        let learned = (0..ids.len())
            .map(|i| {
                let completion = !self.options.completion_only_loss || i >= prefix;
                completion && assistant.as_ref().is_none_or(|mask| mask[i])
            })
            .collect();
        Example { ids, learned }
    }

    /// The end-of-text token a text completion ends with (TRL appends it).
    fn eos_token(&self, at: &dyn Fn(String) -> InputError) -> Result<String, InputError> {
        let eos = self.config.special_token("eos_token").or_else(|| super::chat::end_token(self.tokenizer));
        eos.map(str::to_owned)
            .ok_or_else(|| {
                at(format!(
                    "prompt-completion data ends each completion with the end-of-text token, and {} names none: set eos_token in its tokenizer_config.json",
                    self.source
                ))
            })
    }
}

/// Examples cut to `max_length` tokens from the start, then those with nothing left to
/// learn dropped; returns how many were cut and how many dropped.
pub fn truncate_and_drop(examples: &mut Vec<Example>, max_length: usize) -> (usize, usize) {
    let mut cut = 0;
    for example in examples.iter_mut() {
        if example.ids.len() > max_length {
            example.ids.truncate(max_length);
            example.learned.truncate(max_length);
            cut += 1;
        }
    }
    let before = examples.len();
    examples.retain(|example| example.learned.contains(&true));
    (cut, before - examples.len())
}

/// The next-token targets of an example (the host's shifted labels): position t holds
/// token t + 1 where that token is learned, else -100.
pub fn next_token_targets(example: &Example) -> Vec<i64> {
    (1..example.ids.len()).map(|i| if example.learned[i] { example.ids[i] } else { -100 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_start_and_drops_what_has_nothing_to_learn() {
        let example = |n: usize, first_learned: usize| Example {
            ids: (0..n as i64).collect(),
            learned: (0..n).map(|i| i >= first_learned).collect(),
        };
        let mut examples = vec![example(4, 1), example(6, 5), example(3, 0)];
        assert_eq!(truncate_and_drop(&mut examples, 4), (1, 1));
        assert_eq!(examples, vec![example(4, 1), example(3, 0)]);
        assert_eq!(next_token_targets(&example(4, 2)), [-100, 2, 3]);
    }
}
