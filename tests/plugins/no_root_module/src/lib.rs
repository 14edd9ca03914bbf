//! A shared library with an ordinary C function and no plugin root module.

#[no_mangle]
pub extern "C" fn answer() -> i32 {
    42
}
