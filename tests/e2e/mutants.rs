//! Hostile uploads: at least 10,000 mutants of valid components — byte flips, truncations,
//! spliced, duplicated and dropped sections, bad LEB lengths, inserted bytes, renamed
//! imports and exports — each answered
//! with 200/201 or a 4xx, never a 5xx, a hang or a crash; and a meaningful share gets past
//! parsing to the type check.

use std::collections::HashMap;

use futures::StreamExt as _;
use reqwest::{Method, StatusCode};

use crate::support::Host;

const MUTANTS: usize = 10_000;

/// A fixed-seed generator, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Valid components to mutate: small ones (so ten thousand compile in reasonable time) that
/// pass the whole check, with a few shapes of imports, exports and memories.
fn seeds() -> Vec<Vec<u8>> {
    let run = crate::support::agent_component;
    vec![
        run(1, "", ""),
        run(
            2,
            "",
            r#"(func $seven (result u32) (canon lift (core func $i "seven"))) (export "seven" (func $seven))"#,
        ),
        run(
            1,
            r#"(import "gust:agent/host@0.1.0" (instance (export "config" (func (param "key" string) (result (option string))))))"#,
            "",
        ),
        run(3, r#"(import "wasi:cli/environment@0.2.0" (instance))"#, ""),
    ]
}

/// Top-level sections: (start, end) of each, after the 8-byte header.
fn sections(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        let start = at;
        at += 1;
        let (mut size, mut shift) = (0usize, 0);
        loop {
            let Some(&b) = bytes.get(at) else { return out };
            at += 1;
            size |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 || shift > 28 {
                break;
            }
        }
        at += size;
        if at > bytes.len() {
            return out;
        }
        out.push((start, at));
    }
    out
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = seeds[rng.below(seeds.len())].clone();
    let parts = sections(&bytes);
    match rng.below(8) {
        // Change a letter inside a name (an import, an export, a field): the binary stays
        // well-formed, and the type check has to catch it.
        7 => {
            let letters: Vec<usize> = (1..bytes.len().saturating_sub(1))
                .filter(|&i| bytes[i - 1..=i + 1].iter().all(u8::is_ascii_lowercase))
                .collect();
            if !letters.is_empty() {
                let at = letters[rng.below(letters.len())];
                bytes[at] = b'a' + (bytes[at] - b'a' + 1 + rng.below(25) as u8) % 26;
            }
        }
        // Flip a few bits.
        0 => {
            for _ in 0..=rng.below(4) {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
        }
        // Truncate.
        1 => bytes.truncate(rng.below(bytes.len())),
        // Splice in a section of another seed, in place of one of this one's.
        2 if !parts.is_empty() => {
            let other = &seeds[rng.below(seeds.len())];
            let theirs = sections(other);
            if let Some(&(s, e)) = theirs.get(rng.below(theirs.len())) {
                let (ms, me) = parts[rng.below(parts.len())];
                bytes.splice(ms..me, other[s..e].iter().copied());
            }
        }
        // Duplicate a section.
        3 if !parts.is_empty() => {
            let (s, e) = parts[rng.below(parts.len())];
            let copy = bytes[s..e].to_vec();
            let at = parts[rng.below(parts.len())].0;
            bytes.splice(at..at, copy);
        }
        // Drop a section.
        4 if !parts.is_empty() => {
            let (s, e) = parts[rng.below(parts.len())];
            bytes.drain(s..e);
        }
        // A bad LEB length: a section size off by a little, huge, or over-long.
        5 if !parts.is_empty() => {
            let (s, _) = parts[rng.below(parts.len())];
            let at = s + 1;
            match rng.below(3) {
                0 => bytes[at] = bytes[at].wrapping_add(1 + rng.below(3) as u8),
                1 => {
                    bytes.splice(at..at + 1, [0xff, 0xff, 0xff, 0xff, 0x0f]);
                }
                _ => {
                    bytes.splice(at..at, [0x80, 0x80, 0x80, 0x80, 0x80, 0x80]);
                }
            }
        }
        // Insert random bytes.
        _ => {
            let at = rng.below(bytes.len());
            let junk: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
            bytes.splice(at..at, junk);
        }
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mutants_get_4xx_or_success_never_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    let seeds = seeds();
    assert_eq!(seeds.len(), 4);
    for seed in &seeds {
        let (status, body) = host.upload("seed", seed.clone()).await;
        assert!(
            status.is_success(),
            "every seed is a valid component: {body}"
        );
    }
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mutants: Vec<Vec<u8>> = (0..MUTANTS).map(|_| mutate(&mut rng, &seeds)).collect();

    let outcomes: Vec<(StatusCode, String)> = futures::stream::iter(mutants)
        .map(|bytes| {
            let request = host
                .request(Method::POST, "/v1/agents/fuzz/versions")
                .body(bytes);
            async move {
                let response = request.send().await.expect("the host answers every upload");
                let status = response.status();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                let code = body["error"]["diagnostics"][0]["code"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                (status, code)
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;

    let mut by_outcome: HashMap<String, usize> = HashMap::new();
    for (status, code) in &outcomes {
        assert!(
            status.is_success() || status.is_client_error(),
            "a mutant got {status} ({code})"
        );
        let key = if status.is_success() {
            "accepted".to_owned()
        } else {
            code.clone()
        };
        *by_outcome.entry(key).or_default() += 1;
    }
    let parse_stage = ["not_a_component", "core_module"];
    let past_parsing: usize = by_outcome
        .iter()
        .filter(|(k, _)| !parse_stage.contains(&k.as_str()))
        .map(|(_, n)| n)
        .sum();
    eprintln!(
        "{MUTANTS} mutants: {by_outcome:?}; {past_parsing} got past parsing to the type check"
    );
    assert!(
        past_parsing * 100 >= MUTANTS * 15,
        "a meaningful share reaches the type check: {past_parsing}"
    );
    assert_eq!(
        host.send(host.request(Method::GET, "/healthz")).await.0,
        StatusCode::OK
    );
    let stats = host.stats().await;
    assert_eq!(stats["live_instances"], 0, "{stats}");
}
