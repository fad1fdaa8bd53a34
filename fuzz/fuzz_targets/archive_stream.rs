//! Streaming read of an arbitrary archive: whole-archive decompression, `scan::stream` with
//! every layer run through `layer::process`, then `resolve::images` and planning.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = imageimport_fuzz::run_stream(data);
});
