//! One problem with an uploaded component, as the upload check reports it.

use serde::Serialize;

/// One problem with an uploaded component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Diagnostic {
    /// Stable, machine-readable: `not_a_component`, `core_module`, `missing_export`,
    /// `export_type_mismatch`, `unknown_import`, `limit_exceeded`, `instantiation_failed`.
    pub code: &'static str,
    /// The import or export concerned, or `""` for the component as a whole.
    pub item: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic of `code` about `item` (`""` for the whole component).
    pub fn new(code: &'static str, item: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            item: item.into(),
            message: message.into(),
        }
    }
}
