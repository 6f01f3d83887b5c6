//! The body of `PUT …/config`: parsed as the API parses it, then validated against the
//! default maxima. Neither step panics, and a configuration that passes survives the
//! store's round trip (JSON out and back in) unchanged.

#![no_main]

use gust_model::{AgentConfig, Maxima};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(config) = serde_json::from_slice::<AgentConfig>(bytes) else {
        return;
    };
    if gust_core::deploy::validate_config(&config, &Maxima::default()).is_ok() {
        let stored = serde_json::to_string(&config).expect("a valid configuration serializes");
        let back: AgentConfig = serde_json::from_str(&stored).expect("and reads back");
        assert_eq!(back, config);
        let _ = config.redacted();
    }
});
