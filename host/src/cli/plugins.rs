//! `host plugins list` and `host plugins inspect`: what plugins there are, and what one
//! provides.

use std::io::Write;

use anyhow::Result;

use super::PluginsCommand;
use crate::plugins::config_schema::{declared, Declared};
use crate::plugins::{search_path, Kind, Plugin};

pub fn run(command: &PluginsCommand) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        PluginsCommand::List => {
            for path in search_path::available() {
                match Plugin::load(&path) {
                    Ok(plugin) => {
                        let components: Vec<&str> = plugin.components().map(|c| c.name).collect();
                        writeln!(
                            out,
                            "{:<20} {:<8} {}  ({})",
                            plugin.name(),
                            plugin.version(),
                            components.join(", "),
                            path.display()
                        )?;
                    }
                    Err(error) => tracing::debug!("{} is not a usable plugin: {error:#}", path.display()),
                }
            }
        }
        PluginsCommand::Inspect { plugin } => {
            let path = search_path::resolve(plugin)?;
            let plugin = Plugin::load(&path)?;
            writeln!(out, "{} {}", plugin.name(), plugin.version())?;
            writeln!(out, "  file:          {}", path.display())?;
            writeln!(out, "  built against: plugin-api {}, torch {}", plugin.api_version(), plugin.torch_version())?;
            for kind in Kind::ALL {
                for component in plugin.components().filter(|c| c.kind == kind) {
                    writeln!(out, "  {:<15}  {}", kind.name(), component.name)?;
                    show_config_keys(&mut out, component.name, component.extra_json)?;
                }
            }
        }
    }
    Ok(())
}

/// The config keys a component declares, as `host plugins inspect` shows them.
fn show_config_keys(out: &mut impl Write, component: &str, extra_json: &str) -> Result<()> {
    match declared(extra_json) {
        Declared::Unknown => {
            writeln!(out, "    config keys not declared (the plugin's config type does not derive JsonSchema)")?
        }
        Declared::Keys(keys) if keys.is_empty() => writeln!(out, "    no config keys")?,
        Declared::Keys(keys) => {
            writeln!(out, "    config keys ([plugin_config.{component}] or --plugin-config {component}.KEY=VALUE):")?;
            let name_width = keys.iter().map(|k| k.name.len()).max().unwrap_or(0);
            for key in keys {
                let default = match &key.default {
                    Some(value) => format!("default {value}"),
                    None => "required".to_owned(),
                };
                writeln!(out, "      {:<name_width$}  {}, {default}", key.name, key.kind)?;
                if !key.help.is_empty() {
                    writeln!(out, "      {:<name_width$}    {}", "", key.help)?;
                }
            }
        }
    }
    Ok(())
}
