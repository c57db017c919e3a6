#![no_main]
//! See `weir_fuzz::harness::ble_adverts` for what is fuzzed and the input layout.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::harness::ble_adverts(data));
