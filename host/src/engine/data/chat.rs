//! Chat templates: the tokenizer's own Jinja template (a `chat_template.jinja` beside
//! tokenizer.json, else tokenizer_config.json's `chat_template`), rendered as transformers'
//! `apply_chat_template` renders it: trim_blocks and lstrip_blocks, loop controls,
//! `raise_exception`, `strftime_now`, Python's `tojson`, the special tokens as variables,
//! and the spans of `{% generation %}` blocks (the assistant's tokens that
//! `assistant_only_loss` learns).

use std::path::{Path, PathBuf};

use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

use crate::error::InputError;

/// Marks a generation block's start and end in the rendered text (Unicode private use
/// characters, which no tokenizer vocabulary or chat holds).
const GENERATION_START: char = '\u{F8F0}';
const GENERATION_END: char = '\u{F8F1}';

/// What tokenizer_config.json (and a chat_template.jinja beside it) says of a tokenizer:
/// its special tokens and its chat template, read once per data file.
#[derive(Debug, Default)]
pub struct TokenizerConfig {
    /// bos_token, eos_token, ... as tokenizer_config.json gives them.
    special_tokens: Vec<(String, String)>,
    pub template: Option<ChatTemplate>,
}

/// A chat template, parsed once (rendering a row only runs it).
#[derive(Debug)]
pub struct ChatTemplate {
    /// The template (generation tags turned into markers) with transformers' globals.
    env: Environment<'static>,
    /// The special tokens, the template's variables.
    tokens: Vec<(String, String)>,
    /// Whether it has `{% generation %}` blocks.
    pub marks_generation: bool,
    /// Where it came from, for messages.
    pub origin: PathBuf,
}

/// A rendered chat: the text, and the byte spans of its generation blocks.
#[derive(Debug, PartialEq)]
pub struct Rendered {
    pub text: String,
    pub generation: Vec<(usize, usize)>,
}

impl TokenizerConfig {
    /// The settings beside the tokenizer at `tokenizer_file` (none where there are none).
    pub fn read(tokenizer_file: &Path) -> Result<Self, InputError> {
        let folder = tokenizer_file.parent().unwrap_or(Path::new("."));
        let config_path = folder.join("tokenizer_config.json");
        let config: Json = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| InputError::new(format!("{}: not JSON ({e}); fix or remove it", config_path.display())))?,
            Err(_) => Json::Null,
        };
        let special_tokens: Vec<(String, String)> =
            ["bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"]
                .iter()
                .filter_map(|name| token_text(config.get(*name)?).map(|text| (name.to_string(), text)))
                .collect();
        let jinja = folder.join("chat_template.jinja");
        let source = match std::fs::read_to_string(&jinja) {
            Ok(text) => Some((text, jinja)),
            Err(_) => template_in(&config).map(|text| (text, config_path)),
        };
        let template = source
            .map(|(text, origin)| {
                ChatTemplate::new(&text, origin.clone(), special_tokens.clone())
                    .map_err(|e| InputError::new(format!("{}: {e}", origin.display())))
            })
            .transpose()?;
        Ok(Self { special_tokens, template })
    }

    /// A special token's text (`eos_token`, ...), as tokenizer_config.json gives it.
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special_tokens.iter().find(|(n, _)| n == name).map(|(_, text)| text.as_str())
    }
}

impl ChatTemplate {
    /// `template` parsed, as transformers' environment has it: trim_blocks, lstrip_blocks,
    /// Python's methods, raise_exception, strftime_now, Python's tojson.
    fn new(template: &str, origin: PathBuf, tokens: Vec<(String, String)>) -> Result<Self, String> {
        let (source, marks_generation) = mark_generation_blocks(template);
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", |format: String| strftime_now(&format));
        env.add_filter("tojson", python_tojson);
        env.add_template_owned("chat", source).map_err(|e| format!("the chat template does not parse: {e}"))?;
        Ok(Self { env, tokens, marks_generation, origin })
    }

    /// `messages` rendered, with the generation prompt after them when asked. Values come
    /// as minijinja's (parsed from the data's JSON text), so their keys keep their order.
    pub fn render(
        &self,
        messages: &Value,
        add_generation_prompt: bool,
        tools: Option<&Value>,
    ) -> Result<Rendered, String> {
        let mut context: std::collections::BTreeMap<String, Value> =
            self.tokens.iter().map(|(name, text)| (name.clone(), Value::from(text.as_str()))).collect();
        context.insert("messages".into(), messages.clone());
        context.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        if let Some(tools) = tools {
            context.insert("tools".into(), tools.clone());
        }
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        let marked = template.render(Value::from(context)).map_err(|e| describe(&e))?;
        Ok(split_markers(&marked))
    }
}

/// The conventional end-of-text tokens, in the order they are looked for.
const END_TOKENS: [&str; 5] = ["[EOS]", "</s>", "<|endoftext|>", "<eos>", "<|im_end|>"];

/// The conventional end-of-text token `tokenizer` knows: where generation stops, and what
/// a completion ends with where tokenizer_config.json names no eos_token.
pub(super) fn end_token(tokenizer: &tokenizers::Tokenizer) -> Option<&'static str> {
    END_TOKENS.into_iter().find(|token| tokenizer.token_to_id(token).is_some())
}

/// tokenizer_config.json's `chat_template`: a string, or a list of named templates of
/// which the one named "default" is used.
fn template_in(config: &Json) -> Option<String> {
    match config.get("chat_template")? {
        Json::String(text) => Some(text.clone()),
        Json::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
        _ => None,
    }
}

/// A special token as tokenizer_config.json writes it: text, or an AddedToken object.
pub(crate) fn token_text(value: &Json) -> Option<String> {
    match value {
        Json::String(text) => Some(text.clone()),
        Json::Object(token) => token.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// A template error as one line: minijinja's message with the template line.
fn describe(error: &Error) -> String {
    let mut text = error.detail().map_or_else(|| error.kind().to_string(), str::to_owned);
    if let Some(line) = error.line() {
        text.push_str(&format!(" (chat template line {line})"));
    }
    text
}

/// `{% generation %}` and `{% endgeneration %}` (with any whitespace control) become
/// expressions that print the markers, keeping the tags' whitespace control.
fn mark_generation_blocks(template: &str) -> (String, bool) {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut marked = false;
    while let Some(start) = rest.find("{%") {
        let Some(length) = rest[start..].find("%}") else { break };
        let tag = &rest[start + 2..start + length];
        let (left, inner, right) = trim_control(tag);
        let marker = match inner {
            "generation" => Some(GENERATION_START),
            "endgeneration" => Some(GENERATION_END),
            _ => None,
        };
        out.push_str(&rest[..start]);
        match marker {
            Some(marker) => {
                marked = true;
                out.push_str(&format!("{{{{{left} '{marker}' {right}}}}}"));
            }
            None => out.push_str(&rest[start..start + length + 2]),
        }
        rest = &rest[start + length + 2..];
    }
    out.push_str(rest);
    (out, marked)
}

/// A tag's inside without its whitespace-control marks: ("-" or "", name, "-" or "").
fn trim_control(tag: &str) -> (&str, &str, &str) {
    let left = if tag.starts_with('-') { "-" } else { "" };
    let right = if tag.ends_with('-') && tag.len() > 1 { "-" } else { "" };
    let inner = tag.trim_start_matches(['-', '+']).trim_end_matches(['-', '+']).trim();
    (left, inner, right)
}

/// The text without the markers, and the byte spans between each start and end marker.
fn split_markers(marked: &str) -> Rendered {
    let mut text = String::with_capacity(marked.len());
    let mut generation = Vec::new();
    let mut open = None;
    for c in marked.chars() {
        match c {
            GENERATION_START => open = Some(text.len()),
            GENERATION_END => {
                if let Some(start) = open.take() {
                    generation.push((start, text.len()));
                }
            }
            c => text.push(c),
        }
    }
    Rendered { text, generation }
}

/// Which tokens overlap a span (transformers' assistant mask): `offsets` are each
/// token's byte range in the text, in order, as are the spans.
pub fn tokens_in_spans(offsets: &[(usize, usize)], spans: &[(usize, usize)]) -> Vec<bool> {
    let mut mask = vec![false; offsets.len()];
    let mut span = 0;
    for (token, &(start, end)) in offsets.iter().enumerate() {
        while span < spans.len() && start >= spans[span].1 {
            span += 1;
        }
        if span == spans.len() {
            break;
        }
        mask[token] = end > spans[span].0;
    }
    mask
}

/// Python's json.dumps as transformers' `tojson` filter calls it: ", " and ": " between
/// items, or an indent; non-ASCII text as it is.
fn python_tojson(value: Value, indent: Option<usize>) -> Result<Value, Error> {
    let mut out = Vec::new();
    let result = match indent {
        Some(width) => {
            let indent = " ".repeat(width);
            let mut serializer = serde_json::Serializer::with_formatter(
                &mut out,
                serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes()),
            );
            serde::Serialize::serialize(&value, &mut serializer)
        }
        None => {
            serde::Serialize::serialize(&value, &mut serde_json::Serializer::with_formatter(&mut out, PythonFormatter))
        }
    };
    result.map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(String::from_utf8_lossy(&out).into_owned()))
}

/// json.dumps' default separators.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Today's local date and time in `format` (C strftime, as Python's).
fn strftime_now(format: &str) -> Result<String, Error> {
    let invalid = |why: &str| Error::new(ErrorKind::InvalidOperation, format!("strftime_now({format:?}): {why}"));
    let format = std::ffi::CString::new(format).map_err(|_| invalid("a NUL in the format"))?;
    let mut buffer = vec![0u8; 256];
    // SAFETY: time and localtime_r fill the structs we pass; strftime writes at most the
    // buffer's length and returns how much it wrote.
    let written = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut local: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut local);
        libc::strftime(buffer.as_mut_ptr().cast(), buffer.len(), format.as_ptr(), &local)
    };
    buffer.truncate(written);
    String::from_utf8(buffer).map_err(|_| invalid("not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        let special_tokens = vec![("eos_token".to_owned(), "</s>".to_owned())];
        ChatTemplate::new(source, PathBuf::from("test"), special_tokens).unwrap()
    }

    #[test]
    fn generation_blocks_give_the_spans_of_what_they_render() {
        let chat = template(
            "{% for m in messages %}<|{{ m.role }}|>\n{% if m.role == 'assistant' %}{% generation %}{{ m.content | trim }}{{ eos_token }}{% endgeneration %}\n{% else %}{{ m.content }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
        );
        assert!(chat.marks_generation);
        let messages: Value = serde_json::from_str(
            r#"[{"role": "user", "content": "hi"}, {"role": "assistant", "content": " hello "}, {"role": "user", "content": "bye"}]"#,
        )
        .unwrap();
        let rendered = chat.render(&messages, true, None).unwrap();
        assert_eq!(rendered.text, "<|user|>\nhi\n<|assistant|>\nhello</s>\n<|user|>\nbye\n<|assistant|>\n");
        let spans: Vec<&str> = rendered.generation.iter().map(|&(a, b)| &rendered.text[a..b]).collect();
        assert_eq!(spans, ["hello</s>"]);
    }

    #[test]
    fn templates_call_python_methods_and_raise_their_own_errors() {
        let chat = template(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with the user') }}{% endif %}{{ messages[0]['content'].strip().upper() }}|{{ messages[0] | tojson }}",
        );
        let messages = |json: &str| serde_json::from_str::<Value>(json).unwrap();
        let rendered = chat.render(&messages(r#"[{"role": "user", "content": " héllo "}]"#), false, None).unwrap();
        assert_eq!(rendered.text, "HÉLLO|{\"role\": \"user\", \"content\": \" héllo \"}");
        let error = chat.render(&messages(r#"[{"role": "system", "content": "x"}]"#), false, None).unwrap_err();
        assert!(error.contains("Conversations must start with the user"), "{error}");
    }

    #[test]
    fn a_token_is_learned_where_it_overlaps_a_span() {
        // Tokens "ab", "c", "de", "f" over "abcdef"; the span covers "bcd".
        let offsets = [(0, 2), (2, 3), (3, 5), (5, 6)];
        assert_eq!(tokens_in_spans(&offsets, &[(1, 4)]), [true, true, true, false]);
        assert_eq!(tokens_in_spans(&offsets, &[]), [false; 4]);
    }
}
