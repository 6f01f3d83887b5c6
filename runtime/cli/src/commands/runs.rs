//! `gust run` and `gust runs …`.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::time::Duration;

use anyhow::Context as _;
use reqwest::Method;
use serde_json::Value;

use super::Ctx;
use crate::client::SYNC_CALL_WAIT;
use crate::exit::{Code, Failure};
use crate::output::{Table, say, tell, text, written};

pub(crate) async fn run(
    c: &Ctx,
    agent: &str,
    input: &str,
    queued: bool,
    wait: bool,
) -> anyhow::Result<()> {
    let body = if input == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        buf
    } else if let Some(file) = input.strip_prefix('@') {
        std::fs::read(file).map_err(|e| Failure::usage(format!("reading {file}: {e}")))?
    } else {
        input.as_bytes().to_vec()
    };
    // Sent as JSON, so it must be JSON: caught here, it is a mistake on the command line
    // (exit code 2), not a run the agent failed, and a queued run is not accepted only to
    // fail.
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        return Err(Failure::usage(format!(
            "the input is not JSON ({e}): give JSON text, `@file` or `-` for standard input"
        ))
        .into());
    }
    // A sync call answers when the agent is done; a queued run, once it is accepted.
    let request = if queued {
        c.client
            .request(Method::POST, &format!("/v1/agents/{agent}/runs"))
    } else {
        c.client.working(
            Method::POST,
            &format!("/v1/agents/{agent}/run"),
            SYNC_CALL_WAIT,
        )
    };
    let response = c
        .client
        .send(
            request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
        )
        .await?;
    if queued {
        let answer = c.client.read_json(response).await?;
        let id = text(&answer["run_id"]);
        if wait {
            return runs_get(c, agent, &id, true).await;
        }
        if c.out.json {
            return c.out.json(&answer);
        }
        say!("{id}")?;
        c.out.note(format!(
            "queued; `gust runs get {agent} {id} --wait` follows it"
        ));
        return Ok(());
    }
    // A sync call's answer is the agent's own output, printed as it came (it is JSON when
    // the agent answers JSON, so `--json` changes nothing here).
    let output = c.client.body(response).await?;
    let mut stdout = std::io::stdout().lock();
    written(stdout.write_all(&output))?;
    if !output.ends_with(b"\n") && stdout.is_terminal() {
        written(stdout.write_all(b"\n"))?;
    }
    written(stdout.flush())
}

pub(crate) async fn runs_get(c: &Ctx, agent: &str, id: &str, wait: bool) -> anyhow::Result<()> {
    let path = format!("/v1/agents/{agent}/runs/{id}");
    let spinner = (wait && c.out.progress).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let run = loop {
        // The server holds a `?wait` poll up to its 2 s: that is not silence.
        let run = if wait {
            c.client
                .json(c.client.working(
                    Method::GET,
                    &format!("{path}?wait=2"),
                    Duration::from_secs(2) + crate::client::DEFAULT_TIMEOUT,
                ))
                .await
        } else {
            c.call(Method::GET, &path).await
        };
        let run = match run {
            Ok(run) => run,
            Err(e) => {
                if let Some(bar) = &spinner {
                    bar.finish_and_clear();
                }
                return Err(e);
            }
        };
        let status = run["status"].as_str().unwrap_or("");
        if !wait || !matches!(status, "queued" | "running") {
            break run;
        }
        let progress = match run["progress"].as_object() {
            Some(p) => format!(
                " {:.0}% {}",
                p["fraction"].as_f64().unwrap_or(0.0) * 100.0,
                p["message"].as_str().unwrap_or("")
            ),
            None => String::new(),
        };
        match &spinner {
            Some(bar) => bar.set_message(format!("{id}: {status}{progress}")),
            None => c.out.note(format!("{status}{progress}")),
        }
    };
    if let Some(bar) = spinner {
        bar.finish_and_clear();
    }
    let printed = if c.out.json {
        c.out.json(&run)
    } else {
        print_run(c, &run)
    };
    // The run's own outcome decides the exit code, even when its reader went away.
    let outcome = match run["status"].as_str() {
        Some("succeeded" | "queued" | "running") => Ok(()),
        Some(status) => {
            let error = &run["error"];
            let detail = error["kind"]
                .as_str()
                .map(|k| format!(": {k}: {}", error["message"].as_str().unwrap_or("")))
                .unwrap_or_default();
            Err(Failure::new(Code::RunFailed, format!("run {id} {status}{detail}")).into())
        }
        None => Err(anyhow::anyhow!("the server's answer has no status")),
    };
    outcome.and(printed)
}

/// `gust runs get --follow`: the run's events as they come (on stderr, so stdout stays the
/// run), then the run as `gust runs get` prints it, with its exit code. Emitted chunks of
/// output are written as they are, one after the other, so streamed text reads as text.
pub(crate) async fn runs_follow(c: &Ctx, agent: &str, id: &str) -> anyhow::Result<()> {
    let response = super::sse::follow(c, &format!("/v1/agents/{agent}/runs/{id}/events")).await?;
    // Events are not written with -q, nor once stderr's reader has gone: the run is still
    // followed to its end, printed on stdout and its outcome the exit code.
    let mut quiet = c.out.quiet;
    // Whether chunks left the cursor inside a line, where another event's line must not
    // start.
    let mut mid_line = false;
    super::sse::each_event(c, response, |event, data| {
        if !quiet {
            let shown = show_event(event, &data, &mut mid_line);
            match shown {
                Err(e) if crate::output::is_reader_gone(&e) => quiet = true,
                other => other?,
            }
        }
        Ok(event != "end")
    })
    .await?;
    if mid_line && !quiet {
        // Only the line is lost if stderr is gone by now.
        let _ = tell!();
    }
    runs_get(c, agent, id, false).await
}

/// One event of `gust runs get --follow` on stderr.
fn show_event(event: &str, data: &Value, mid_line: &mut bool) -> anyhow::Result<()> {
    if event == "chunk" {
        let bytes = chunk_bytes(data);
        let mut stderr = std::io::stderr().lock();
        written(stderr.write_all(&bytes).and_then(|()| stderr.flush()))?;
        if let Some(last) = bytes.last() {
            *mid_line = *last != b'\n';
        }
        return Ok(());
    }
    if *mid_line && matches!(event, "status" | "progress" | "log") {
        tell!()?;
        *mid_line = false;
    }
    match event {
        "status" => tell!("status   {}", text(&data["status"])),
        "progress" => tell!(
            "progress {:>3.0}% {}",
            data["fraction"].as_f64().unwrap_or(0.0) * 100.0,
            text(&data["message"])
        ),
        "log" => tell!(
            "log      {} {}",
            text(&data["level"]),
            text(&data["message"])
        ),
        _ => Ok(()),
    }
}

/// The bytes of a `chunk` event: `{"text"}` or `{"base64"}`.
fn chunk_bytes(data: &Value) -> Vec<u8> {
    use base64::Engine as _;
    if let Some(text) = data["text"].as_str() {
        return text.as_bytes().to_vec();
    }
    data["base64"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_default()
}

/// A run for people: the facts on top, then the output as JSON, then logs.
fn print_run(c: &Ctx, run: &Value) -> anyhow::Result<()> {
    let o = &c.out;
    say!("run:      {}", text(&run["run_id"]))?;
    say!(
        "status:   {}",
        o.status(run["status"].as_str().unwrap_or(""))
    )?;
    say!(
        "version:  {} (deployment {})",
        run["version"],
        run["deployment"]
    )?;
    say!("created:  {}", text(&run["created_at"]))?;
    if let Some(at) = run["finished_at"].as_str() {
        say!("finished: {at} after {} attempt(s)", run["attempts"])?;
    }
    if let Some(delivery) = run["delivery"].as_object() {
        say!(
            "push:     {} ({} attempt(s){})",
            o.status(delivery["status"].as_str().unwrap_or("")),
            delivery["attempts"],
            delivery["last_error"]
                .as_str()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        )?;
    }
    if let Some(error) = run["error"].as_object() {
        say!(
            "error:    {}: {}",
            error["kind"].as_str().unwrap_or(""),
            error["message"].as_str().unwrap_or("")
        )?;
    }
    let output = &run["output"];
    if let Some(json) = output.get("json") {
        say!(
            "output:\n{}",
            serde_json::to_string_pretty(json).unwrap_or_default()
        )?;
    } else if let Some(base64) = output["base64"].as_str() {
        say!(
            "output:   {} ({} base64 characters)",
            text(&output["content_type"]),
            base64.len()
        )?;
    }
    let logs = run["logs"].as_array().cloned().unwrap_or_default();
    if !logs.is_empty() {
        say!("logs:")?;
        for line in logs {
            say!(
                "  {} {:<5} {}",
                text(&line["ts"]),
                text(&line["level"]),
                text(&line["message"])
            )?;
        }
    }
    Ok(())
}

pub(crate) async fn runs_list(
    c: &Ctx,
    agent: &str,
    status: Option<&str>,
    limit: u16,
    cursor: Option<&str>,
) -> anyhow::Result<()> {
    let mut query = vec![("limit", limit.to_string())];
    if let Some(status) = status {
        query.push(("status", status.to_owned()));
    }
    if let Some(cursor) = cursor {
        query.push(("cursor", cursor.to_owned()));
    }
    let answer = c
        .client
        .json(
            c.client
                .request(Method::GET, &format!("/v1/agents/{agent}/runs"))
                .query(&query),
        )
        .await?;
    if c.out.json {
        return c.out.json(&answer);
    }
    let mut table = Table::new(&["RUN", "STATUS", "VERSION", "ATTEMPTS", "CREATED"]);
    for run in answer["runs"].as_array().into_iter().flatten() {
        table.row(vec![
            text(&run["run_id"]),
            c.out.status(run["status"].as_str().unwrap_or("")),
            text(&run["version"]),
            text(&run["attempts"]),
            text(&run["created_at"]),
        ]);
    }
    table.print()?;
    if let Some(next) = answer["next_cursor"].as_str() {
        let status = status.map(|s| format!(" --status {s}")).unwrap_or_default();
        c.out.note(format!(
            "more: gust runs list {agent}{status} --limit {limit} --cursor {next}"
        ));
    }
    Ok(())
}

pub(crate) async fn run_action(c: &Ctx, agent: &str, id: &str, action: &str) -> anyhow::Result<()> {
    let answer = c
        .call(
            Method::POST,
            &format!("/v1/agents/{agent}/runs/{id}/{action}"),
        )
        .await?;
    if c.out.json {
        return c.out.json(&answer);
    }
    match action {
        "rerun" => say!("{}", text(&answer["run_id"]))?,
        _ => say!("{} {}", text(&answer["run_id"]), text(&answer["status"]))?,
    }
    Ok(())
}
