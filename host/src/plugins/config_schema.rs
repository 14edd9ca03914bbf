//! A component's declared config keys, read from the JSON schema its plugin gives
//! (plugin-api 1.4+, when the config type derives `JsonSchema`), for `host plugins inspect`.

use serde_json::{Map, Value};

/// One config key: its name, type, default and help.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigKey {
    pub name: String,
    /// A short type: `number`, `integer`, `boolean`, `string`, `array of number`,
    /// `one of "mean", "sum"`.
    pub kind: String,
    /// The default as JSON text, `unset` for an optional key without one, or `None` for a
    /// key that must be given.
    pub default: Option<String>,
    pub help: String,
}

/// What a component says about its config.
#[derive(Debug, Clone, PartialEq)]
pub enum Declared {
    /// The plugin does not declare its keys (older plugin-api, or no `JsonSchema` derive).
    Unknown,
    /// The keys (empty: the component takes no config).
    Keys(Vec<ConfigKey>),
}

/// Reads the declaration out of a component's `extra_json`.
pub fn declared(extra_json: &str) -> Declared {
    let Ok(extra) = serde_json::from_str::<Value>(extra_json) else {
        return Declared::Unknown;
    };
    let Some(schema) = extra.get("config_schema") else {
        return Declared::Unknown;
    };
    let defs = schema.get("$defs").and_then(Value::as_object).cloned().unwrap_or_default();
    let required: Vec<&str> =
        schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let properties = schema.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
    let keys = properties
        .iter()
        .map(|(name, property)| {
            let property = resolve(property, &defs);
            let default = match property.get("default") {
                Some(value) => Some(show_value(value)),
                None if required.contains(&name.as_str()) => None,
                None => Some("unset".to_owned()),
            };
            ConfigKey {
                name: name.clone(),
                kind: kind_of(&property, &defs),
                default,
                help: property.get("description").and_then(Value::as_str).unwrap_or("").replace('\n', " "),
            }
        })
        .collect();
    Declared::Keys(keys)
}

/// Follows a `$ref` into `$defs`, keeping the referring schema's own description and default.
fn resolve(schema: &Value, defs: &Map<String, Value>) -> Value {
    let Some(target) = schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) else {
        return schema.clone();
    };
    let mut resolved = defs.get(target).cloned().unwrap_or(Value::Null);
    if let (Some(object), Some(own)) = (resolved.as_object_mut(), schema.as_object()) {
        for (key, value) in own.iter().filter(|(k, _)| k.as_str() != "$ref") {
            object.insert(key.clone(), value.clone());
        }
    }
    resolved
}

fn kind_of(schema: &Value, defs: &Map<String, Value>) -> String {
    let schema = resolve(schema, defs);
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return one_of(values.iter().map(show_value));
    }
    if let Some(value) = schema.get("const") {
        return show_value(value);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            let kinds: Vec<String> = options.iter().map(|o| kind_of(o, defs)).collect();
            // Unit enum variants come as one `const` each: show them as one list.
            if options.iter().all(|o| resolve(o, defs).get("const").is_some()) {
                return one_of(kinds.into_iter());
            }
            return kinds.join(" or ");
        }
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return "any".to_owned(),
    };
    // `null` is how an optional key shows in a schema; its default says "unset" instead.
    let shown: Vec<String> = types
        .iter()
        .filter(|t| **t != "null" || types.len() == 1)
        .map(|t| match *t {
            "array" => match schema.get("items") {
                Some(items) => format!("array of {}", kind_of(items, defs)),
                None => "array".to_owned(),
            },
            "object" => match schema.get("additionalProperties") {
                Some(values @ Value::Object(_)) => format!("table of {}", kind_of(values, defs)),
                _ => "table".to_owned(),
            },
            other => other.to_owned(),
        })
        .collect();
    shown.join(" or ")
}

fn one_of(values: impl Iterator<Item = String>) -> String {
    format!("one of {}", values.collect::<Vec<_>>().join(", "))
}

fn show_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("\"{s}\""),
        Value::Null => "unset".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(extra: &str) -> Vec<ConfigKey> {
        match declared(extra) {
            Declared::Keys(keys) => keys,
            Declared::Unknown => panic!("no declaration in {extra}"),
        }
    }

    #[test]
    fn undeclared_when_the_plugin_gives_no_schema() {
        assert_eq!(declared("{}"), Declared::Unknown);
        assert_eq!(declared("not json"), Declared::Unknown);
    }

    #[test]
    fn reads_types_defaults_help_and_enums() {
        let schema = r##"{"config_schema": {
            "type": "object",
            "properties": {
                "gamma": {"type": "number", "format": "double", "default": 2.0, "description": "Focusing."},
                "alpha": {"type": ["array", "null"], "items": {"type": "number"}, "default": null},
                "steps": {"type": "integer"},
                "mode": {"$ref": "#/$defs/Mode", "default": "min", "description": "Direction."}
            },
            "required": ["steps"],
            "$defs": {"Mode": {"oneOf": [{"const": "min"}, {"const": "max"}]}}
        }}"##;
        let keys = keys(schema);
        let find = |name: &str| keys.iter().find(|k| k.name == name).unwrap().clone();
        assert_eq!(find("gamma").kind, "number");
        assert_eq!(find("gamma").default.as_deref(), Some("2.0"));
        assert_eq!(find("gamma").help, "Focusing.");
        assert_eq!(find("alpha").kind, "array of number");
        assert_eq!(find("alpha").default.as_deref(), Some("unset"));
        assert_eq!(find("steps").default, None);
        assert_eq!(find("mode").kind, "one of \"min\", \"max\"");
        assert_eq!(find("mode").default.as_deref(), Some("\"min\""));
        assert_eq!(find("mode").help, "Direction.");
    }

    #[test]
    fn no_properties_means_no_keys() {
        assert_eq!(keys(r#"{"config_schema": {"type": "object", "additionalProperties": false}}"#), vec![]);
    }
}
