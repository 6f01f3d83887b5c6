//! How client commands print: for people (tables, colour on a terminal, notes on stderr),
//! or for scripts (`--json`: the API's own answer on stdout, nothing else there).

use std::io::{IsTerminal as _, Write as _};

use serde_json::Value;

/// Whoever read the command's output went away: `gust … | head` has the lines it wanted.
/// Writing on gives this error instead of a panic, and `run` ends the command there with
/// exit code 0, saying nothing, as ripgrep does.
///
/// Rust ignores SIGPIPE, so `println!` panics on a closed pipe. SIGPIPE's default is not
/// restored instead: hyper writes to sockets with `writev`, which does not pass
/// `MSG_NOSIGNAL`, so a server closing the connection during an upload would kill the
/// process without a word instead of letting it print the server's answer.
#[derive(Debug)]
pub(crate) struct ReaderGone;

impl std::fmt::Display for ReaderGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the output's reader went away")
    }
}

impl std::error::Error for ReaderGone {}

/// `println!` that answers [`ReaderGone`] instead of panicking when stdout is closed.
macro_rules! say {
    () => {
        $crate::output::line_to(std::io::stdout().lock(), format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line_to(std::io::stdout().lock(), format_args!($($arg)*))
    };
}
pub(crate) use say;

/// `eprintln!` for what is the command's output although it goes to stderr (the events of
/// `gust runs get --follow`): [`ReaderGone`] when stderr is closed.
macro_rules! tell {
    () => {
        $crate::output::line_to(std::io::stderr().lock(), format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line_to(std::io::stderr().lock(), format_args!($($arg)*))
    };
}
pub(crate) use tell;

/// `eprintln!` for notes and warnings: a closed stderr loses them, not the command, as the
/// note is not what the command was run for.
macro_rules! note {
    ($($arg:tt)*) => {{
        let _ = $crate::output::line_to(std::io::stderr().lock(), format_args!($($arg)*));
    }};
}
pub(crate) use note;

/// One line of text to `to`; see [`say`].
pub(crate) fn line_to(
    mut to: impl std::io::Write,
    line: std::fmt::Arguments<'_>,
) -> anyhow::Result<()> {
    written(writeln!(to, "{line}"))
}

/// Bytes to stdout as they are, flushed (a chunk of streamed output, a generated script).
pub(crate) fn bytes_out(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    written(stdout.write_all(bytes).and_then(|()| stdout.flush()))
}

/// A write's outcome: a closed pipe is [`ReaderGone`]; any other failure says where it was.
pub(crate) fn written(outcome: std::io::Result<()>) -> anyhow::Result<()> {
    match outcome {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ReaderGone.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing the output")),
    }
}

/// Whether `e` is a [`ReaderGone`], however it was wrapped.
pub(crate) fn is_reader_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| cause.is::<ReaderGone>())
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Out {
    /// Print the API's answer as JSON instead of text.
    pub(crate) json: bool,
    /// No notes or progress on stderr; errors still print.
    pub(crate) quiet: bool,
    /// Colour on stdout (a terminal, and `NO_COLOR` unset).
    color: bool,
    /// Progress bars on stderr (a terminal, not quiet, not JSON).
    pub(crate) progress: bool,
}

impl Out {
    pub(crate) fn new(json: bool, quiet: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            json,
            quiet,
            color: !json && !no_color && std::io::stdout().is_terminal(),
            // indicatif draws nothing where TERM is unset or `dumb` (CI, some IDE panes):
            // there the plain notes stand in for the bars.
            progress: !json
                && !quiet
                && std::io::stderr().is_terminal()
                && std::env::var("TERM").is_ok_and(|t| !t.is_empty() && t != "dumb"),
        }
    }

    /// A note for people on stderr (what happened, what to do next); see [`note!`].
    pub(crate) fn note(&self, line: impl AsRef<str>) {
        if !self.quiet {
            note!("{}", line.as_ref());
        }
    }

    /// The answer as pretty JSON on stdout.
    pub(crate) fn json(&self, value: &Value) -> anyhow::Result<()> {
        say!("{}", serde_json::to_string_pretty(value)?)
    }

    /// A run status, coloured by outcome on a terminal.
    pub(crate) fn status(&self, status: &str) -> String {
        let code = match status {
            "succeeded" | "delivered" | "live" => "32",
            "failed" | "cancelled" | "expired" | "lost" => "31",
            "queued" | "running" | "pending" => "33",
            _ => return status.to_owned(),
        };
        self.paint(code, status)
    }

    pub(crate) fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// Columns padded to their widest cell. Cells may hold colour codes, which take no width.
pub(crate) struct Table {
    head: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(head: &[&'static str]) -> Self {
        Self {
            head: head.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn print(&self) -> anyhow::Result<()> {
        let mut widths: Vec<usize> = self.head.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(visible_width(cell));
            }
        }
        let line = |cells: Vec<&str>| {
            let last = cells.len().saturating_sub(1);
            let mut text = String::new();
            for (i, cell) in cells.into_iter().enumerate() {
                text.push_str(cell);
                if i < last {
                    let pad = widths[i] - visible_width(cell) + 2;
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            say!("{}", text.trim_end())
        };
        line(self.head.clone())?;
        for row in &self.rows {
            line(row.iter().map(String::as_str).collect())?;
        }
        Ok(())
    }
}

/// Characters shown, not counting ANSI colour sequences.
fn visible_width(cell: &str) -> usize {
    let mut width = 0;
    let mut in_escape = false;
    for c in cell.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => width += 1,
        }
    }
    width
}

/// A configuration document for people: the values of `config` (API keys among them) are
/// replaced by `***`; `--json` shows them.
pub(crate) fn masked_config(config: &Value) -> Value {
    let mut shown = config.clone();
    if let Some(values) = shown.get_mut("config").and_then(Value::as_object_mut) {
        for value in values.values_mut() {
            *value = Value::String("***".to_owned());
        }
    }
    shown
}

/// A JSON string as text; anything else as JSON (`null`, numbers).
pub(crate) fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// A string, or `-` when absent.
pub(crate) fn or_dash(v: &Value) -> String {
    if v.is_null() { "-".to_owned() } else { text(v) }
}

/// The one size formatter: binary units (KiB, MiB, GiB), as every limit gust has is in MiB.
pub(crate) fn size(n: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_binary() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(18 * 1024 * 1024 + 512 * 1024), "18.5 MiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn colour_takes_no_width() {
        assert_eq!(visible_width("\x1b[32msucceeded\x1b[0m"), 9);
        assert_eq!(visible_width("plain"), 5);
    }
}
