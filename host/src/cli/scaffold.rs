//! `host new-plugin NAME --kind loss|callback|metric|optimizer|scheduler|batch-transform|model`: a plugin crate that builds out of the tree
//! against this host's plugin-api, with a working example body, a unit test and a README.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::error::InputError;

/// What kind of component the new plugin provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Loss,
    Callback,
    Metric,
    Optimizer,
    Scheduler,
    BatchTransform,
    Model,
}

/// Writes the crate into `dir/name`; returns its folder.
pub fn create(name: &str, kind: Kind, dir: &Path) -> Result<PathBuf> {
    let valid = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid {
        return Err(InputError::new(format!(
            "plugin name '{name}' must be lowercase letters, digits and _, starting with a letter (it names the crate and the component)"
        ))
        .into());
    }
    if name == "builtin" {
        return Err(InputError::new(
            "plugin name 'builtin' is the host's own loss (--loss builtin); choose another name",
        )
        .into());
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(InputError::new(format!("{} already exists; choose another name or --dir", root.display())).into());
    }
    let type_name: String =
        name.split('_').filter(|part| !part.is_empty()).map(|part| part[..1].to_uppercase() + &part[1..]).collect();
    let kind_name = match kind {
        Kind::Loss => "loss",
        Kind::Callback => "callback",
        Kind::Metric => "metric",
        Kind::Optimizer => "optimizer",
        Kind::Scheduler => "learning-rate schedule",
        Kind::BatchTransform => "batch transform",
        Kind::Model => "model",
    };
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{Type}}", &type_name)
            .replace("{{kind}}", kind_name)
            .replace("{{plugin_api}}", env!("HOST_PLUGIN_API_DIR"))
            .replace("{{libtorch}}", option_env!("HOST_LIBTORCH_DIR").unwrap_or(""))
            .replace("{{target_dir}}", &shared_target_dir().display().to_string())
    };
    let body = match kind {
        Kind::Loss => include_str!("../../templates/loss.rs.txt"),
        Kind::Callback => include_str!("../../templates/callback.rs.txt"),
        Kind::Metric => include_str!("../../templates/metric.rs.txt"),
        Kind::Optimizer => include_str!("../../templates/optimizer.rs.txt"),
        Kind::Scheduler => include_str!("../../templates/scheduler.rs.txt"),
        Kind::BatchTransform => include_str!("../../templates/batch_transform.rs.txt"),
        Kind::Model => include_str!("../../templates/model.rs.txt"),
    };
    let files = [
        ("Cargo.toml", fill(include_str!("../../templates/Cargo.toml.txt"))),
        ("build.rs", fill(include_str!("../../templates/build.rs.txt"))),
        (".cargo/config.toml", fill(include_str!("../../templates/config.toml.txt"))),
        ("README.md", fill(include_str!("../../templates/README.md.txt"))),
        ("src/lib.rs", fill(body)),
        (".gitignore", "/target\n".to_owned()),
    ];
    for (file, text) in files {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().expect("files are inside the crate"))
            .with_context(|| format!("cannot create {}", root.display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(root)
}

/// The build folder every crate made by `host new-plugin` shares (in the host's own
/// `target/`): the plugin API and its dependencies (tch, torch-sys, abi_stable) compile
/// once, and every later plugin crate builds in seconds.
pub fn shared_target_dir() -> PathBuf {
    let plugin_api = Path::new(env!("HOST_PLUGIN_API_DIR"));
    plugin_api.parent().unwrap_or(plugin_api).join("target/plugin-crates")
}
