pub mod config_schema;
pub mod library;
pub mod search_path;
pub mod selection;
