//! The one `generate!` call for the agent world. Authors never see these names: the
//! `#[agent]` attribute and [`crate::Context`] wrap them.
#![expect(missing_docs, reason = "generated code documents itself from the WIT")]
#![expect(
    clippy::too_many_arguments,
    reason = "generated code mirrors the canonical ABI"
)]

wit_bindgen::generate!({
    world: "gust:agent/agent@0.1.1",
    path: "../wit",
    generate_all,
    pub_export_macro: true,
    export_macro_name: "__export_agent",
    default_bindings_module: "::gust_sdk::__private::bindings",
});
