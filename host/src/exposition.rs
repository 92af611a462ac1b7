//! Which text format `/metrics` answers in. The registry encodes
//! OpenMetrics; Prometheus' classic text format (0.0.4), which scrapers
//! get unless their `Accept` asks for OpenMetrics, differs in ways this
//! module undoes: a counter's `# HELP` and `# TYPE` name its samples
//! (`zkrun_plugin_failures_total`, not the family `zkrun_plugin_failures`,
//! else `promtool check metrics` finds no help text), `# UNIT` lines do
//! not exist, and there is no `# EOF`.

use std::collections::HashSet;

/// The two formats `/metrics` serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`: the default.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`, when asked for.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics only when it
    /// names `application/openmetrics-text` (without `q=0`).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let asks = accept.unwrap_or_default().split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused =
                parts.any(|p| p.strip_prefix("q=").and_then(|q| q.parse::<f64>().ok()) == Some(0.0));
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        });
        if asks { Format::OpenMetrics } else { Format::Prometheus }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The registry's OpenMetrics text in this format.
    pub fn encode(self, openmetrics: &str) -> String {
        match self {
            Format::OpenMetrics => openmetrics.to_string(),
            Format::Prometheus => to_prometheus(openmetrics),
        }
    }
}

/// OpenMetrics text as Prometheus text 0.0.4.
fn to_prometheus(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find(|p| line.starts_with(p));
        match meta {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) { format!("{name}_total") } else { name.to_string() };
                out.push_str(&format!("{prefix}{name} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_chooses_the_format() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("text/plain;version=0.0.4;q=0.3,*/*;q=0.2")), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(Some("application/openmetrics-text; q=0")), Format::Prometheus);
    }

    #[test]
    fn counters_are_described_by_their_sample_names() {
        let om = "# HELP zkrun_x Xs.\n# TYPE zkrun_x counter\nzkrun_x_total 1\n# HELP zkrun_g G.\n# TYPE zkrun_g gauge\n# UNIT zkrun_g seconds\nzkrun_g 2\n# EOF\n";
        assert_eq!(
            Format::Prometheus.encode(om),
            "# HELP zkrun_x_total Xs.\n# TYPE zkrun_x_total counter\nzkrun_x_total 1\n# HELP zkrun_g G.\n# TYPE zkrun_g gauge\nzkrun_g 2\n"
        );
        assert_eq!(Format::OpenMetrics.encode(om), om);
    }
}
