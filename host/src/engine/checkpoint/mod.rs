//! Checkpoints on disk: the folder format (written atomically, checked by checksums,
//! found and rotated) and the typed records of its JSON files.

mod folder;
pub mod records;

pub use folder::*;
