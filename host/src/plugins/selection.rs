//! Turning the user's plugin selection into live components: which loss, which callbacks,
//! each with its config. The choice itself (`choose`) is a pure function of what the
//! plugins provide and what the user asked for.

use anyhow::Result;

use super::library::{Kind, Plugin};
use super::metric::PluginMetric;
use super::model::PluginModel;
use super::optimizer::PluginOptimizer;
use super::scheduler::PluginScheduler;
use super::transform::PluginTransform;
use super::{PluginCallback, PluginLoss};
use crate::config::layers::PluginSelection;
use crate::error::InputError;

/// The `--loss` name of the host's own cross entropy.
pub const BUILTIN_LOSS: &str = "builtin";

/// The components a run uses.
pub struct Components {
    pub plugins: Vec<Plugin>,
    pub loss: Option<PluginLoss>,
    pub callbacks: Vec<PluginCallback>,
    pub overrides: Overrides,
}

/// The components of the kinds added in plugin-api 1.6: what replaces the trainer's own
/// metrics, optimizer, schedule and (adds to) its batches.
#[derive(Default)]
pub struct Overrides {
    pub metrics: Vec<PluginMetric>,
    pub optimizer: Option<PluginOptimizer>,
    pub scheduler: Option<PluginScheduler>,
    pub batch_transforms: Vec<PluginTransform>,
    pub model: Option<PluginModel>,
}

/// A component some loaded plugin provides: which plugin (its index), what, and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provided {
    pub plugin: usize,
    pub kind: Kind,
    pub name: String,
}

/// What `choose` picked, as indices into the provided list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub loss: Option<usize>,
    pub callbacks: Vec<usize>,
    pub metrics: Vec<usize>,
    pub optimizer: Option<usize>,
    pub scheduler: Option<usize>,
    pub batch_transforms: Vec<usize>,
    pub model: Option<usize>,
}

/// Loads the selected plugin files and creates the selected components.
pub fn build(selection: &PluginSelection, args_json: &str) -> Result<Components> {
    let plugins = selection
        .plugins
        .iter()
        .map(|spec| Plugin::load(&super::search_path::resolve(spec)?))
        .collect::<Result<Vec<_>>>()?;
    let provided: Vec<Provided> = plugins
        .iter()
        .enumerate()
        .flat_map(|(i, p)| p.components().map(move |c| Provided { plugin: i, kind: c.kind, name: c.name.to_owned() }))
        .collect();
    let files: Vec<String> = plugins.iter().map(|p| p.path.display().to_string()).collect();
    let choice = choose(&provided, &files, selection)?;

    let config_for =
        |name: &str| selection.component_config.get(name).cloned().unwrap_or_else(|| serde_json::json!({}));
    let loss = choice
        .loss
        .map(|i| {
            let c = &provided[i];
            plugins[c.plugin].create_loss(&c.name, &config_for(&c.name))
        })
        .transpose()?;
    let callbacks = choice
        .callbacks
        .iter()
        .map(|&i| {
            let c = &provided[i];
            plugins[c.plugin].create_callback(&c.name, &config_for(&c.name), args_json)
        })
        .collect::<Result<Vec<_>>>()?;
    let parts = |i: usize| (&plugins[provided[i].plugin], provided[i].name.as_str());
    let metric = |i| parts(i).0.create_metric(parts(i).1, &config_for(parts(i).1), args_json);
    let optimizer = |i| parts(i).0.create_optimizer(parts(i).1, &config_for(parts(i).1), args_json);
    let scheduler = |i| parts(i).0.create_scheduler(parts(i).1, &config_for(parts(i).1), args_json);
    let transform = |&i: &usize| parts(i).0.create_batch_transform(parts(i).1, &config_for(parts(i).1), args_json);
    let model = |i| parts(i).0.create_model(parts(i).1, &config_for(parts(i).1), args_json);
    let overrides = Overrides {
        metrics: choice.metrics.iter().map(|&i| metric(i)).collect::<Result<_>>()?,
        optimizer: choice.optimizer.map(optimizer).transpose()?,
        scheduler: choice.scheduler.map(scheduler).transpose()?,
        batch_transforms: choice.batch_transforms.iter().map(transform).collect::<Result<_>>()?,
        model: choice.model.map(model).transpose()?,
    };
    Ok(Components { plugins, loss, callbacks, overrides })
}

/// Hugging Face's defaults, as plugins: the loss is the one named, else the only one
/// provided, else the built-in cross entropy; the callbacks are those named, in that
/// order, else all. Config for a component that is not used is a mistake, as are two
/// components of one kind with the same name (`--loss`/`--callback` would be ambiguous).
pub fn choose(
    provided: &[Provided],
    plugin_files: &[String],
    selection: &PluginSelection,
) -> Result<Choice, InputError> {
    for kind in Kind::ALL {
        let of_kind: Vec<&Provided> = provided.iter().filter(|c| c.kind == kind).collect();
        for (i, c) in of_kind.iter().enumerate() {
            if let Some(other) = of_kind[..i].iter().find(|o| o.name == c.name) {
                return Err(InputError::new(format!(
                    "component name '{}' is provided by both {} and {}; load only one of them",
                    c.name, plugin_files[other.plugin], plugin_files[c.plugin]
                )));
            }
        }
    }
    let of_kind = |kind: Kind| -> Vec<usize> { (0..provided.len()).filter(|&i| provided[i].kind == kind).collect() };
    let (losses, callbacks) = (of_kind(Kind::Loss), of_kind(Kind::Callback));
    let names = |indices: &[usize]| -> String {
        if indices.is_empty() {
            return "none".to_owned();
        }
        indices.iter().map(|&i| provided[i].name.as_str()).collect::<Vec<_>>().join(", ")
    };
    let find = |among: &[usize], name: &str, kind: Kind| -> Result<usize, InputError> {
        among.iter().copied().find(|&i| provided[i].name == name).ok_or_else(|| {
            InputError::new(format!(
                "no loaded plugin provides {} {} named '{name}' (available: {}); check the name or add the plugin with --plugin",
                if kind == Kind::Optimizer { "an" } else { "a" },
                kind.name(),
                names(among)
            ))
        })
    };

    let loss = match &selection.loss {
        Some(name) if name == BUILTIN_LOSS => None,
        Some(name) => Some(find(&losses, name, Kind::Loss)?),
        None if losses.len() == 1 => Some(losses[0]),
        None if losses.is_empty() => None,
        None => {
            return Err(InputError::new(format!(
                "the loaded plugins provide several losses ({}); choose one with --loss NAME (or --loss builtin for the built-in cross entropy)",
                names(&losses)
            )))
        }
    };
    let chosen_callbacks: Vec<usize> = if selection.callbacks.is_empty() {
        callbacks.clone()
    } else {
        selection.callbacks.iter().map(|name| find(&callbacks, name, Kind::Callback)).collect::<Result<_, _>>()?
    };

    // Metrics and batch transforms as callbacks: those named, in order, else all.
    let named_or_all = |names: &[String], kind: Kind| -> Result<Vec<usize>, InputError> {
        match names.is_empty() {
            true => Ok(of_kind(kind)),
            false => names.iter().map(|name| find(&of_kind(kind), name, kind)).collect(),
        }
    };
    let chosen_metrics = named_or_all(&selection.metrics, Kind::Metric)?;
    let batch_transforms = named_or_all(&selection.batch_transforms, Kind::BatchTransform)?;
    // An optimizer, a schedule or a model only when the arguments name one (plugin:NAME).
    let named = |name: &Option<String>, kind: Kind| name.as_ref().map(|n| find(&of_kind(kind), n, kind)).transpose();
    let optimizer = named(&selection.optimizer, Kind::Optimizer)?;
    let scheduler = named(&selection.scheduler, Kind::Scheduler)?;
    let model = named(&selection.model, Kind::Model)?;

    let in_use: Vec<usize> = loss
        .into_iter()
        .chain(chosen_callbacks.iter().copied())
        .chain(chosen_metrics.iter().copied())
        .chain(optimizer)
        .chain(scheduler)
        .chain(batch_transforms.iter().copied())
        .chain(model)
        .collect();
    for name in selection.component_config.keys() {
        if !in_use.iter().any(|&i| provided[i].name == *name) {
            return Err(InputError::new(format!(
                "plugin_config for '{name}', but no component of that name is in use (in use: {})",
                names(&in_use)
            )));
        }
    }
    Ok(Choice {
        loss,
        callbacks: chosen_callbacks,
        metrics: chosen_metrics,
        optimizer,
        scheduler,
        batch_transforms,
        model,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two plugins: the first provides the losses a and b and the callback x, the second
    /// the loss c and the callbacks y and z.
    fn provided() -> Vec<Provided> {
        let c = |plugin, kind, name: &str| Provided { plugin, kind, name: name.to_owned() };
        vec![
            c(0, Kind::Loss, "a"),
            c(0, Kind::Loss, "b"),
            c(0, Kind::Callback, "x"),
            c(1, Kind::Loss, "c"),
            c(1, Kind::Callback, "y"),
            c(1, Kind::Callback, "z"),
        ]
    }

    fn files() -> Vec<String> {
        vec!["one.so".to_owned(), "two.so".to_owned()]
    }

    fn selection(loss: Option<&str>, callbacks: &[&str], configs: &[&str]) -> PluginSelection {
        PluginSelection {
            loss: loss.map(str::to_owned),
            callbacks: callbacks.iter().map(|c| (*c).to_owned()).collect(),
            component_config: configs.iter().map(|c| ((*c).to_owned(), serde_json::json!({}))).collect(),
            ..Default::default()
        }
    }

    /// The names chosen: (loss, callbacks), or the error's text.
    fn chosen(provided: &[Provided], selection: &PluginSelection) -> Result<(Option<String>, Vec<String>), String> {
        let choice = choose(provided, &files(), selection).map_err(|e| e.to_string())?;
        let name = |i: usize| provided[i].name.clone();
        Ok((choice.loss.map(name), choice.callbacks.into_iter().map(name).collect()))
    }

    #[test]
    fn selection_follows_the_defaults_and_the_names_given() {
        let all = provided();
        let only_c: Vec<Provided> = all.iter().filter(|p| p.name != "a" && p.name != "b").cloned().collect();
        let callbacks_only: Vec<Provided> = all.iter().filter(|p| p.kind == Kind::Callback).cloned().collect();
        let ok = |loss: Option<&str>, callbacks: &[&str]| {
            Ok((loss.map(str::to_owned), callbacks.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>()))
        };
        let cases = [
            (&only_c, selection(None, &[], &[]), ok(Some("c"), &["x", "y", "z"])),
            (&callbacks_only, selection(None, &[], &[]), ok(None, &["x", "y", "z"])),
            (&all, selection(Some("b"), &[], &[]), ok(Some("b"), &["x", "y", "z"])),
            (&all, selection(Some("builtin"), &["z", "x"], &[]), ok(None, &["z", "x"])),
            (&all, selection(Some("c"), &["y"], &["c", "y"]), ok(Some("c"), &["y"])),
        ];
        for (provided, selection, expected) in cases {
            assert_eq!(chosen(provided, &selection), expected, "{selection:?}");
        }
    }

    #[test]
    fn mistakes_are_named() {
        let all = provided();
        let cases = [
            (selection(None, &[], &[]), "several losses (a, b, c); choose one with --loss NAME"),
            (selection(Some("d"), &[], &[]), "no loaded plugin provides a loss named 'd' (available: a, b, c)"),
            (selection(Some("a"), &["w"], &[]), "no loaded plugin provides a callback named 'w' (available: x, y, z)"),
            (
                selection(Some("a"), &["x"], &["y"]),
                "plugin_config for 'y', but no component of that name is in use (in use: a, x)",
            ),
        ];
        for (selection, expected) in cases {
            let error = chosen(&all, &selection).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        let mut twice = all.clone();
        // One name in two kinds is no clash: a loss and a metric may share it.
        let mut shared = all.clone();
        shared.push(Provided { plugin: 1, kind: Kind::Metric, name: "a".to_owned() });
        assert!(chosen(&shared, &selection(Some("a"), &[], &[])).is_ok());
        twice.push(Provided { plugin: 1, kind: Kind::Loss, name: "a".to_owned() });
        let error = chosen(&twice, &selection(Some("a"), &[], &[])).unwrap_err();
        assert_eq!(error, "component name 'a' is provided by both one.so and two.so; load only one of them");
    }

    #[test]
    fn the_new_kinds_follow_hugging_face_defaults_and_names() {
        let c = |plugin, kind, name: &str| Provided { plugin, kind, name: name.to_owned() };
        let provided = vec![
            c(0, Kind::Metric, "report"),
            c(0, Kind::Metric, "bleu"),
            c(0, Kind::Optimizer, "muon"),
            c(0, Kind::Scheduler, "one_cycle"),
            c(1, Kind::BatchTransform, "mixup"),
            c(1, Kind::BatchTransform, "cutout"),
            c(1, Kind::Model, "resnet"),
        ];
        let names = |indices: &[usize]| indices.iter().map(|&i| provided[i].name.clone()).collect::<Vec<_>>();
        // Loaded metrics and transforms are used; an optimizer, schedule or model only when named.
        let choice = choose(&provided, &files(), &PluginSelection::default()).unwrap();
        assert_eq!(names(&choice.metrics), ["report", "bleu"]);
        assert_eq!(names(&choice.batch_transforms), ["mixup", "cutout"]);
        assert_eq!((choice.optimizer, choice.scheduler, choice.model), (None, None, None));
        let selection = PluginSelection {
            metrics: vec!["bleu".into()],
            batch_transforms: vec!["cutout".into(), "mixup".into()],
            optimizer: Some("muon".into()),
            scheduler: Some("one_cycle".into()),
            model: Some("resnet".into()),
            component_config: [("muon".to_owned(), serde_json::json!({}))].into(),
            ..Default::default()
        };
        let choice = choose(&provided, &files(), &selection).unwrap();
        assert_eq!(names(&choice.metrics), ["bleu"]);
        assert_eq!(names(&choice.batch_transforms), ["cutout", "mixup"]);
        assert_eq!([choice.optimizer, choice.scheduler, choice.model], [Some(2), Some(3), Some(6)]);
        let unused = PluginSelection {
            component_config: [("muon".to_owned(), serde_json::json!({}))].into(),
            ..Default::default()
        };
        let error = choose(&provided, &files(), &unused).unwrap_err().to_string();
        assert!(error.starts_with("plugin_config for 'muon', but no component of that name is in use"), "{error}");
        let wrong = PluginSelection { model: Some("vit".into()), ..Default::default() };
        let error = choose(&provided, &files(), &wrong).unwrap_err().to_string();
        assert!(error.starts_with("no loaded plugin provides a model named 'vit' (available: resnet)"), "{error}");
    }
}
