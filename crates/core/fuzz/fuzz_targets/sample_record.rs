#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| deep_sched_core_fuzz::sample_record(data));
