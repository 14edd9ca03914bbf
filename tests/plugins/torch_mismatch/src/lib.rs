//! A plugin that reports being built against another torch version. Real plugins use
//! `export_plugin!`, which records the torch they were compiled with; this one builds its
//! root module by hand to claim torch 1.13.1.

use abi_stable::std_types::{RResult, RStr};
use plugin_api::__private::{
    abi_stable, lib_header, module_extension, plugin_info, root_module, unknown_component, Declared,
};
use plugin_api::ffi::{CallbackBox, FfiError, LossBox, PluginInfo};

extern "C" fn info() -> PluginInfo {
    let mut info =
        plugin_info("torch_mismatch", "0.1.0", Declared { losses: &[("old_loss", None)], ..Default::default() });
    info.torch_version = "1.13.1+cpu".into();
    info
}

extern "C" fn create_loss(name: RStr<'_>, _config: RStr<'_>) -> RResult<LossBox, FfiError> {
    RResult::RErr(unknown_component("loss", name.as_str()))
}

extern "C" fn create_callback(name: RStr<'_>, _config: RStr<'_>, _args: RStr<'_>) -> RResult<CallbackBox, FfiError> {
    RResult::RErr(unknown_component("callback", name.as_str()))
}

extern "C" fn loader() -> abi_stable::library::RootModuleResult {
    abi_stable::library::__call_root_module_loader(|| root_module(info, create_loss, create_callback, module_extension))
}

#[no_mangle]
pub static _1as_0lib_1header_0root_bmodule_bloader: abi_stable::library::LibHeader = lib_header(loader);
