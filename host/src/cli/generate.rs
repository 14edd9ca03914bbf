//! `host generate`: greedy completion of a prompt by a causal language model folder (a
//! run's output_dir, one of its checkpoints, or a pretrained model).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tch::{nn, Tensor};

use crate::engine::device::DeviceSpec;
use crate::engine::models::pretrained;
use crate::error::InputError;

#[derive(Debug, Clone, Args)]
pub struct GenerateOptions {
    /// A Hugging Face causal language model folder (config.json, weights, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The text to complete; the tokenizer adds its special tokens, as transformers does.
    #[arg(long)]
    pub prompt: String,
    /// The most tokens to add (fewer when the model ends the text).
    #[arg(long, default_value_t = 20, allow_hyphen_values = true)]
    pub max_new_tokens: i64,
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

pub fn generate(options: &GenerateOptions) -> Result<()> {
    if options.max_new_tokens < 1 {
        return Err(
            InputError::new(format!("max_new_tokens must be at least 1 (got {})", options.max_new_tokens)).into()
        );
    }
    let device = DeviceSpec::parse(&options.device)?.select()?;
    let plan = pretrained::plan_generation(&options.model, pretrained::parse_dtype(&options.torch_dtype)?)?;
    let tokenizer_file = plan.tokenizer_file().ok_or_else(|| {
        InputError::new(format!("{} has no tokenizer.json to read the prompt with", options.model.display()))
    })?;
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_file)
        .map_err(|e| InputError::new(format!("{}: not a readable tokenizer.json ({e})", tokenizer_file.display())))?;
    let mut vars = nn::VarStore::new(device);
    vars.set_kind(plan.kind());
    let model = plan.build(&vars.root())?;
    let encoding = tokenizer
        .encode(options.prompt.as_str(), true)
        .map_err(|e| InputError::new(format!("cannot tokenize the prompt: {e}")))?;
    let prompt: Vec<i64> = encoding.get_ids().iter().map(|&id| i64::from(id)).collect();
    if prompt.is_empty() {
        return Err(InputError::new("the prompt gives no tokens").into());
    }
    let ids = Tensor::from_slice(&prompt).to_device(device);
    let generated = model.generate(&ids, options.max_new_tokens, plan.end_token()).expect("a causal language model")?;
    let all = Vec::<i64>::try_from(&generated.to_device(tch::Device::Cpu))?;
    let new: Vec<u32> = all[prompt.len()..].iter().map(|&id| id as u32).collect();
    let completion = tokenizer.decode(&new, true).map_err(|e| anyhow::anyhow!("cannot decode the completion: {e}"))?;
    if options.json {
        let line = serde_json::json!({"prompt_ids": prompt, "generated_ids": new, "completion": completion});
        println!("{line}");
    } else {
        println!("{}{completion}", options.prompt);
    }
    Ok(())
}
