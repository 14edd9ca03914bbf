//! A library whose abi_stable header says it was built against plugin-api 2.0.0, as a
//! plugin built against a future major version would. The host must refuse it by version,
//! before looking at anything else.

use abi_stable::{
    export_root_module, library::RootModule, package_version_strings, prefix_type::PrefixTypeTrait,
    sabi_types::VersionStrings, std_types::RStr, StableAbi,
};

#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = FutureModuleRef)))]
pub struct FutureModule {
    #[sabi(last_prefix_field)]
    pub name: RStr<'static>,
}

impl RootModule for FutureModuleRef {
    abi_stable::declare_root_module_statics! {FutureModuleRef}
    const BASE_NAME: &'static str = "host_plugin";
    const NAME: &'static str = "host_plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("2.0.0");
}

// Keeps the import used; the version above is what matters.
const _: VersionStrings = package_version_strings!();

#[export_root_module]
fn root_module() -> FutureModuleRef {
    FutureModule { name: RStr::from_str("future") }.leak_into_prefix()
}
