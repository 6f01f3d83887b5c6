//! An `allowed_hosts` entry: parsed, then matched against hosts made from the same input.
//! Parsing never panics, and a pattern without a wildcard matches its own host.

#![no_main]

use gust_model::HostPattern;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let (pattern, probe) = input.split_once('\n').unwrap_or((input, ""));
    let Ok(parsed) = HostPattern::parse(pattern) else {
        return;
    };
    for scheme in ["http", "https", "HTTP", ""] {
        for port in [0, 80, 443, 8080, u16::MAX] {
            let _ = parsed.matches(scheme, probe, port);
        }
    }
});
