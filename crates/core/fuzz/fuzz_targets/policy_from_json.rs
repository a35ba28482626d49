#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| deep_sched_core_fuzz::policy_from_json(data));
