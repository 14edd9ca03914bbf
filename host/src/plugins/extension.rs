//! What every component call shares: turning a plugin's error into one line that names the
//! plugin, the component and the call, and the extension operations added after
//! plugin-api 1.0 (JSON and named tensors in, JSON and named tensors out).

use abi_stable::std_types::RResult;
use anyhow::Result;
use plugin_api::ffi::{ErrorKind, ExtensionIn, ExtensionOp, ExtensionOut, FfiError};
use plugin_api::Tensors;

use crate::error::InputError;

/// Which component a call went to: (plugin, kind, component name).
pub type Who<'a> = (&'a str, &'a str, &'a str);

/// "plugin 'x' callback 'y'": how messages name a component.
pub fn label((plugin, kind, name): Who<'_>) -> String {
    format!("plugin '{plugin}' {kind} '{name}'")
}

pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Words an error from a plugin call: which plugin, which component, during what. A bad
/// config or an unknown component is the user's to fix (exit 2); anything else is a
/// failure of the run.
pub fn component_error((plugin, kind, name): Who<'_>, during: &str, error: FfiError) -> anyhow::Error {
    let message = one_line(error.message.as_str());
    let text = match error.kind {
        ErrorKind::PANICKED => format!("plugin '{plugin}' {kind} '{name}' panicked in {during}: {message}"),
        ErrorKind::BAD_CONFIG => format!("plugin '{plugin}' {kind} '{name}': bad config: {message}"),
        ErrorKind::UNKNOWN_COMPONENT => format!("plugin '{plugin}' provides no {kind} named '{name}'"),
        _ => format!("plugin '{plugin}' {kind} '{name}' failed in {during}: {message}"),
    };
    match error.kind {
        ErrorKind::BAD_CONFIG | ErrorKind::UNKNOWN_COMPONENT => InputError::new(text).into(),
        _ => anyhow::Error::msg(text),
    }
}

/// Runs an extension operation: `Ok(None)` when the plugin does not know it (it was built
/// against an older plugin-api), else its JSON answer and the tensors it handed over.
pub fn call(
    who: Who<'_>,
    during: &str,
    op: ExtensionOp,
    json: &str,
    tensors: &Tensors,
    run: impl FnOnce(ExtensionOp, ExtensionIn<'_>) -> RResult<ExtensionOut, FfiError>,
) -> Result<Option<(String, Tensors)>> {
    let views = plugin_api::ffi::tensor_views(tensors);
    let input = ExtensionIn { json: json.into(), tensors: views.as_slice().into() };
    let (plugin, kind, name) = who;
    let _call = crate::fatal::PluginCall::start(&label((plugin, kind, name)), during);
    match run(op, input) {
        // SAFETY: the plugin handed these tensors over (ExtensionOut).
        RResult::ROk(out) => {
            Ok(Some((out.json.into_string(), unsafe { plugin_api::ffi::tensors_from_owned(out.tensors) })))
        }
        RResult::RErr(e) if e.kind == ErrorKind::UNSUPPORTED => Ok(None),
        RResult::RErr(e) => Err(component_error(who, during, e)),
    }
}

/// A state answer: its JSON (`null`, or no answer, means stateless) and its tensors.
pub fn parse_state(
    (plugin, kind, name): Who<'_>,
    answer: Option<(String, Tensors)>,
) -> Result<(Option<serde_json::Value>, Tensors)> {
    let Some((json, tensors)) = answer else { return Ok((None, Tensors::new())) };
    let value: serde_json::Value = serde_json::from_str(&json)
        .map_err(|e| anyhow::anyhow!("plugin '{plugin}' {kind} '{name}' returned a state that is not JSON: {e}"))?;
    Ok(((!value.is_null()).then_some(value), tensors))
}
