//! Turning the user's plugin selection into live components: which loss, which callbacks,
//! each with its config.

use anyhow::Result;
use plugin_api::ffi::ComponentKind;

use crate::config::layers::PluginSelection;
use crate::error::InputError;
use crate::plugins::library::{Plugin, PluginCallback, PluginLoss};

/// The `--loss` name of the host's own cross entropy.
pub const BUILTIN_LOSS: &str = "builtin";

/// The components a run uses.
pub struct Components {
    pub plugins: Vec<Plugin>,
    pub loss: Option<PluginLoss>,
    pub callbacks: Vec<PluginCallback>,
}

/// Loads the selected plugin files and creates the selected components.
pub fn build(selection: &PluginSelection, args_json: &str) -> Result<Components> {
    let plugins = selection
        .plugins
        .iter()
        .map(|spec| Plugin::load(&crate::plugins::search_path::resolve(spec)?))
        .collect::<Result<Vec<_>>>()?;
    check_unique_names(&plugins)?;

    let losses: Vec<(&Plugin, &str)> = provided(&plugins, ComponentKind::LOSS);
    let callbacks: Vec<(&Plugin, &str)> = provided(&plugins, ComponentKind::CALLBACK);

    let config_for =
        |name: &str| selection.component_config.get(name).cloned().unwrap_or_else(|| serde_json::json!({}));

    let chosen_loss = match &selection.loss {
        Some(name) if name == BUILTIN_LOSS => None,
        Some(name) => Some(find(&losses, name, "loss")?),
        None if losses.len() == 1 => Some(losses[0]),
        None if losses.is_empty() => None,
        None => {
            return Err(InputError::new(format!(
                "the loaded plugins provide several losses ({}); choose one with --loss NAME (or --loss builtin for the built-in cross entropy)",
                names(&losses)
            ))
            .into())
        }
    };
    let chosen_callbacks: Vec<(&Plugin, &str)> = if selection.callbacks.is_empty() {
        callbacks.clone()
    } else {
        selection.callbacks.iter().map(|name| find(&callbacks, name, "callback")).collect::<Result<_>>()?
    };

    for name in selection.component_config.keys() {
        let used = chosen_loss.is_some_and(|(_, n)| n == name) || chosen_callbacks.iter().any(|(_, n)| n == name);
        if !used {
            return Err(InputError::new(format!(
                "plugin_config for '{name}', but no component of that name is in use (in use: {})",
                names(&chosen_loss.into_iter().chain(chosen_callbacks.iter().copied()).collect::<Vec<_>>())
            ))
            .into());
        }
    }

    let loss = chosen_loss.map(|(plugin, name)| plugin.create_loss(name, &config_for(name))).transpose()?;
    let callbacks = chosen_callbacks
        .iter()
        .map(|(plugin, name)| plugin.create_callback(name, &config_for(name), args_json))
        .collect::<Result<Vec<_>>>()?;
    drop(losses);
    Ok(Components { plugins, loss, callbacks })
}

fn provided(plugins: &[Plugin], kind: ComponentKind) -> Vec<(&Plugin, &str)> {
    plugins.iter().flat_map(|p| p.components(kind).map(move |name| (p, name))).collect()
}

fn names(components: &[(&Plugin, &str)]) -> String {
    if components.is_empty() {
        return "none".to_owned();
    }
    components.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
}

fn find<'a>(components: &[(&'a Plugin, &'a str)], name: &str, kind: &str) -> Result<(&'a Plugin, &'a str)> {
    components.iter().copied().find(|(_, n)| *n == name).ok_or_else(|| {
        InputError::new(format!(
            "no loaded plugin provides a {kind} named '{name}' (available: {}); check the name or add the plugin with --plugin",
            names(components)
        ))
        .into()
    })
}

/// Two components of one kind with the same name would make `--loss`/`--callback`
/// ambiguous.
fn check_unique_names(plugins: &[Plugin]) -> Result<()> {
    for kind in [ComponentKind::LOSS, ComponentKind::CALLBACK] {
        let all = provided(plugins, kind);
        for (i, (plugin, name)) in all.iter().enumerate() {
            if let Some((other, _)) = all[..i].iter().find(|(_, n)| n == name) {
                return Err(InputError::new(format!(
                    "component name '{name}' is provided by both {} and {}; load only one of them",
                    other.path.display(),
                    plugin.path.display()
                ))
                .into());
            }
        }
    }
    Ok(())
}
