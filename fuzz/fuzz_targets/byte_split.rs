#![no_main]
//! Fuzz target: see `daemoneye_sim::fuzz::byte_split` for the property it checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| daemoneye_sim::fuzz::byte_split(data));
