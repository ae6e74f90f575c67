//! The WebAssembly module of the `durably-browser` package (`browser/build.sh`): the
//! JavaScript API of `durably::browser_js` (feature `browser`) as a `cdylib` for
//! `wasm-bindgen --target web`. Natively it is empty.

#[cfg(target_arch = "wasm32")]
pub use durably::browser_js::*;
