#![no_main]
//! Fuzz target: see `daemoneye_sim::fuzz::proc_connector` for the properties it checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| daemoneye_sim::fuzz::proc_connector(data));
