//! Agent names: `[a-z0-9][a-z0-9-]{0,62}`, so a name fits a URL path segment, a file name
//! and a DNS label as it is.

/// Whether `name` is a valid agent name: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn valid_agent_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase() | bytes[0].is_ascii_digit()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// What a user is told when a name is not valid.
pub const AGENT_NAME_RULE: &str =
    "agent names are 1 to 63 characters of a-z, 0-9 and `-`, starting with a letter or digit";

#[cfg(test)]
mod tests {
    use super::valid_agent_name;

    #[test]
    fn agent_names() {
        for ok in ["a", "echo", "my-agent-2", "0day", &"a".repeat(63)] {
            assert!(valid_agent_name(ok), "{ok}");
        }
        for bad in ["", "-a", "Echo", "a_b", "a.b", "a/b", "ä", &"a".repeat(64)] {
            assert!(!valid_agent_name(bad), "{bad}");
        }
    }
}
