#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hotspare_fuzz::transport::frame_reader(data);
});
