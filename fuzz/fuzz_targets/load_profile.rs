//! The saved-profile reader (`profiler report`, `profiler diff`) on arbitrary bytes: an error
//! or a profile every renderer can index, never a panic or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use profiler::{analysis, model::Profile, render};

fuzz_target!(|data: &[u8]| {
    if let Ok(profile) = Profile::read(data, "fuzz input") {
        let _ = analysis::summarize(&profile);
        for view in render::views(&profile) {
            let _ = render::view_lines(&profile, view);
        }
    }
});
