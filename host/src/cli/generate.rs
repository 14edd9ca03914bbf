//! `host generate`: completion of a prompt by a causal language model folder (a run's
//! output_dir, one of its checkpoints, a LoRA adapter folder, or a pretrained model),
//! greedy or sampled as transformers' `generate`, up to an end token, a stop string or
//! the model's context.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tch::{nn, Tensor};

use crate::engine::data::chat::TokenizerConfig;
use crate::engine::device::DeviceSpec;
use crate::engine::generation::{self, Sampling};
use crate::engine::models::{pretrained, Decoding};
use crate::error::InputError;

#[derive(Debug, Clone, Args)]
pub struct GenerateOptions {
    /// A Hugging Face causal language model folder (config.json, weights, tokenizer.json),
    /// or a LoRA adapter folder (adapter_config.json) on one.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The text to complete; the tokenizer adds its special tokens, as transformers does.
    #[arg(long)]
    pub prompt: String,
    /// The prompt is a user's message: rendered with the tokenizer's chat template and its
    /// generation prompt (transformers' apply_chat_template), the assistant's reply generated.
    #[arg(long)]
    pub chat: bool,
    /// The most tokens to add (fewer when the model ends the text or its context ends).
    #[arg(long, default_value_t = 20, allow_hyphen_values = true)]
    pub max_new_tokens: i64,
    /// Sample each token instead of taking the most likely (default: generation_config.json's
    /// do_sample, else no).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub do_sample: Option<bool>,
    /// Sampling: the scores' divisor (default: generation_config.json's, else 1.0).
    #[arg(long, allow_hyphen_values = true)]
    pub temperature: Option<f64>,
    /// Sampling: only the k most likely tokens, 0 for all (default: generation_config.json's,
    /// else 50, as transformers).
    #[arg(long, allow_hyphen_values = true)]
    pub top_k: Option<i64>,
    /// Sampling: the most likely tokens whose probabilities sum to p (default:
    /// generation_config.json's, else 1.0).
    #[arg(long, allow_hyphen_values = true)]
    pub top_p: Option<f64>,
    /// Sampling: the random seed (the same seed gives transformers' tokens after
    /// torch.manual_seed); default: a new one each run.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop once the completion contains this text (kept in it, as transformers'
    /// stop_strings); may be given more than once.
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
    /// The parameters' dtype: auto (config.json's), float32, bfloat16, float16.
    #[arg(long, default_value = "auto")]
    pub torch_dtype: String,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Print a JSON object (prompt and generated token ids, the completion) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Greedy decoding, or the sampling settings: the flags, else generation_config.json's,
/// else transformers' defaults.
fn sampling(options: &GenerateOptions, config: Option<&serde_json::Value>) -> Result<Option<Sampling>, InputError> {
    let saved = |key: &str| config.and_then(|c| c.get(key)).cloned();
    let do_sample = options.do_sample.or_else(|| saved("do_sample").and_then(|v| v.as_bool())).unwrap_or(false);
    if !do_sample {
        return Ok(None);
    }
    let defaults = Sampling::default();
    let sampling = Sampling {
        temperature: options.temperature.or_else(|| saved("temperature")?.as_f64()).unwrap_or(defaults.temperature),
        top_k: options.top_k.or_else(|| saved("top_k")?.as_i64()).unwrap_or(defaults.top_k),
        top_p: options.top_p.or_else(|| saved("top_p")?.as_f64()).unwrap_or(defaults.top_p),
    };
    sampling.check().map_err(InputError::new)?;
    Ok(Some(sampling))
}

pub fn generate(options: &GenerateOptions) -> Result<()> {
    if options.max_new_tokens < 1 {
        return Err(
            InputError::new(format!("max_new_tokens must be at least 1 (got {})", options.max_new_tokens)).into()
        );
    }
    let device = DeviceSpec::parse(&options.device)?.select()?;
    let plan = pretrained::plan_generation(&options.model, pretrained::parse_dtype(&options.torch_dtype)?)?;
    let sampling = sampling(options, plan.generation_config().as_ref())?;
    if sampling.is_none()
        && [options.temperature.is_some(), options.top_k.is_some(), options.top_p.is_some()].contains(&true)
    {
        tracing::warn!("temperature, top_k and top_p act only when sampling (--do-sample); this generation is greedy");
    }
    let tokenizer_file = plan.tokenizer_file().ok_or_else(|| {
        InputError::new(format!("{} has no tokenizer.json to read the prompt with", options.model.display()))
    })?;
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_file)
        .map_err(|e| InputError::new(format!("{}: not a readable tokenizer.json ({e})", tokenizer_file.display())))?;
    let prompt = prompt_ids(options, &tokenizer, &tokenizer_file)?;
    let context = plan.context_length();
    if prompt.len() as i64 >= context {
        return Err(InputError::new(format!(
            "the prompt has {} tokens and the model's context is {context}: no room to generate; shorten the prompt",
            prompt.len()
        ))
        .into());
    }
    let room = context - prompt.len() as i64;
    if options.max_new_tokens > room {
        tracing::info!(
            "max_new_tokens {}: the model's context is {context} tokens and the prompt has {}, so at most {room} are generated",
            options.max_new_tokens,
            prompt.len()
        );
    }
    let mut vars = nn::VarStore::new(device);
    vars.set_kind(plan.kind());
    let model = plan.build(&vars.root())?;
    if let Some(dir) = plan.adapter_dir() {
        pretrained::lora::load_adapter(&vars, dir, "model")?;
    }
    if sampling.is_some() {
        tch::manual_seed(options.seed.map_or_else(random_seed, |s| s as i64));
    }
    let end = plan.end_token();
    let mut choose = |scores: &Tensor| match &sampling {
        Some(sampling) => sampling.draw(scores),
        None => generation::greedy(scores),
    };
    let mut ends = |tokens: &[i64]| {
        if end.is_some() && tokens.last().copied() == end {
            return true;
        }
        if options.stop.is_empty() {
            return false;
        }
        let ids: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
        let text = tokenizer.decode(&ids, false).unwrap_or_default();
        options.stop.iter().any(|stop| text.contains(stop.as_str()))
    };
    let mut decoding =
        Decoding { max_new_tokens: options.max_new_tokens.min(room), choose: &mut choose, ends: &mut ends };
    let ids = Tensor::from_slice(&prompt).to_device(device);
    let new = model.decode(&ids, &mut decoding).expect("a causal language model")?;
    let new: Vec<u32> = new.iter().map(|&id| id as u32).collect();
    let completion = tokenizer.decode(&new, true).map_err(|e| anyhow::anyhow!("cannot decode the completion: {e}"))?;
    if options.json {
        let line = serde_json::json!({"prompt_ids": prompt, "generated_ids": new, "completion": completion});
        println!("{line}");
    } else if options.chat {
        println!("{completion}");
    } else {
        println!("{}{completion}", options.prompt);
    }
    Ok(())
}

/// The prompt's token ids: the text with the tokenizer's special tokens, or with --chat
/// a user's message rendered by the chat template (which has its own special tokens).
fn prompt_ids(
    options: &GenerateOptions,
    tokenizer: &tokenizers::Tokenizer,
    file: &std::path::Path,
) -> Result<Vec<i64>> {
    let (text, special) = match options.chat {
        false => (options.prompt.clone(), true),
        true => {
            let config = TokenizerConfig::read(file)?;
            let template = config.template.as_ref().ok_or_else(|| {
                InputError::new(format!(
                    "--chat needs a chat template: {} has none (no chat_template.jinja beside it, no chat_template in tokenizer_config.json)",
                    file.display()
                ))
            })?;
            let messages =
                minijinja::Value::from_serialize(serde_json::json!([{"role": "user", "content": options.prompt}]));
            let rendered =
                template.render(&messages, true, None).map_err(|e| InputError::new(format!("chat template: {e}")))?;
            (rendered.text, false)
        }
    };
    let encoding = tokenizer
        .encode(text.as_str(), special)
        .map_err(|e| InputError::new(format!("cannot tokenize the prompt: {e}")))?;
    let prompt: Vec<i64> = encoding.get_ids().iter().map(|&id| i64::from(id)).collect();
    if prompt.is_empty() {
        return Err(InputError::new("the prompt gives no tokens").into());
    }
    Ok(prompt)
}

/// A seed of its own for each run (transformers samples anew each run unless seeded).
fn random_seed() -> i64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos as u64 ^ std::process::id() as u64) as i64 & i64::MAX
}
