#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hfgate_fuzz::checks::cookie(data));
