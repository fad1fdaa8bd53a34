//! Seekable read of an arbitrary archive: the bytes are written to a scratch file, indexed
//! with `scan::index`, resolved with `resolve::images`, planned, and every resolved layer is
//! read at its offset through `layer::process`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = imageimport_fuzz::run_index(data);
});
