//! `gust logs <agent> [--follow]`: the guest lines of an agent's recent sync calls, and with
//! `--follow` the new ones as they come (the API's Server-Sent Events).

use std::io::Write as _;

use reqwest::Method;
use serde_json::Value;

use super::Ctx;
use super::sse::{self, each_event};
use crate::output::text;

pub(crate) async fn logs(c: &Ctx, agent: &str, follow: bool, limit: usize) -> anyhow::Result<()> {
    let path = format!("/v1/agents/{agent}/logs?limit={limit}");
    if !follow {
        let answer = c.call(Method::GET, &path).await?;
        if c.out.json {
            return c.out.json(&answer);
        }
        for line in answer["lines"].as_array().into_iter().flatten() {
            if !print_line(line) {
                break;
            }
        }
        return Ok(());
    }
    let response = sse::follow(c, &format!("{path}&follow=1")).await?;
    let json = c.out.json;
    let mut reader_gone = false;
    each_event(response, |event, data| {
        let printed = if json {
            writeln!(std::io::stdout(), "{data}").is_ok()
        } else if event == "missed" {
            eprintln!(
                "gust: {} lines were missed (this terminal fell behind)",
                data["lines"]
            );
            true
        } else {
            print_line(&data)
        };
        reader_gone = !printed;
        printed
    })
    .await?;
    if !reader_gone {
        eprintln!("gust: the stream ended (the agent was deleted, or the host stopped)");
    }
    Ok(())
}

/// `ts level run_id message`, with `[stdout]`/`[stderr]` for captured output. False when
/// stdout is closed: whoever read it wants no more (`gust logs -f | head`), and following
/// ends quietly, as `tail -f` does, instead of panicking in `println!`.
fn print_line(line: &Value) -> bool {
    let source = match line["source"].as_str() {
        Some("log") | None => String::new(),
        Some(other) => format!("[{other}] "),
    };
    writeln!(
        std::io::stdout(),
        "{} {:<5} {} {source}{}",
        text(&line["ts"]),
        text(&line["level"]),
        text(&line["run_id"]),
        text(&line["message"])
    )
    .is_ok()
}
