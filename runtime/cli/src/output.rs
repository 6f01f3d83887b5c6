//! How client commands print: for people (tables, colour on a terminal, notes on stderr),
//! or for scripts (`--json`: the API's own answer on stdout, nothing else there).

use std::io::IsTerminal as _;

use serde_json::Value;

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

    /// A note for people on stderr (what happened, what to do next).
    pub(crate) fn note(&self, line: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", line.as_ref());
        }
    }

    /// The answer as pretty JSON on stdout.
    pub(crate) fn json(&self, value: &Value) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
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

    pub(crate) fn print(&self) {
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
            println!("{}", text.trim_end());
        };
        line(self.head.clone());
        for row in &self.rows {
            line(row.iter().map(String::as_str).collect());
        }
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
