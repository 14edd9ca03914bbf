//! Named tensors, as losses and callbacks receive them.

use tch::Tensor;

use crate::PluginError;

/// Named tensors: the model outputs (`logits`, ...) or a batch (`input`, `labels`, ...).
pub struct Tensors {
    entries: Vec<(String, Tensor)>,
}

impl Tensors {
    pub fn new() -> Self {
        Self { entries: Vec::new() }
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        let name = name.into();
        self.entries.retain(|(n, _)| *n != name);
        self.entries.push((name, tensor));
    }

    /// The tensor called `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The tensor called `name`, or an error that lists the names there are.
    pub fn require(&self, name: &str) -> Result<&Tensor, PluginError> {
        self.get(name).ok_or_else(|| {
            PluginError::new(format!(
                "no tensor named '{name}' (there are: {})",
                self.names().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, by value (for handing them across the boundary).
    pub(crate) fn into_entries(self) -> impl Iterator<Item = (String, Tensor)> {
        self.entries.into_iter()
    }
}

impl FromIterator<(String, Tensor)> for Tensors {
    /// Later entries replace earlier ones of the same name.
    fn from_iter<I: IntoIterator<Item = (String, Tensor)>>(iter: I) -> Self {
        let mut tensors = Self::new();
        for (name, tensor) in iter {
            tensors.insert(name, tensor);
        }
        tensors
    }
}

impl Default for Tensors {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Tensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.entries.iter().map(|(n, t)| (n, t.size()))).finish()
    }
}
