//! `drover feedback`: sends the true labels of earlier predictions to a device, which scores
//! them (rolling accuracy, F1, concept-drift detectors). Labels come from the command line
//! (`--label REQUEST=CLASS`) or a JSON Lines file of `{"request": …, "label": …}`.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context;
use drover_runtime::link::codec;
use drover_wire::event::{Feedback, Label, MAX_LABELS};
use drover_wire::topic::{self, DeviceLeaf, Name};

use super::broker_args::BrokerArgs;

/// Arguments of `drover feedback`.
#[derive(Debug, clap::Args)]
pub struct FeedbackArgs {
    /// The device that made the predictions.
    #[arg(long)]
    pub device: String,
    /// A label: REQUEST=CLASS (repeatable).
    #[arg(long = "label", value_name = "REQUEST=CLASS")]
    pub labels: Vec<String>,
    /// A JSON Lines file of {"request": ID, "label": CLASS} ("-" for standard input).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

fn label(request: &str, class: i64) -> anyhow::Result<Label> {
    let request = request.try_into().map_err(|_| anyhow::anyhow!("request id '{request}' is longer than 64 bytes"))?;
    Ok(Label { request, label: class })
}

/// Parses `REQUEST=CLASS`.
pub fn parse_pair(s: &str) -> anyhow::Result<Label> {
    let (r, c) = s.rsplit_once('=').ok_or_else(|| anyhow::anyhow!("--label '{s}': expected REQUEST=CLASS"))?;
    let class = c.trim().parse().map_err(|_| anyhow::anyhow!("--label '{s}': the class must be an integer"))?;
    label(r.trim(), class)
}

/// Parses one line of a labels file.
pub fn parse_line(line: &str) -> anyhow::Result<Label> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        request: String,
        label: i64,
    }
    let l: Line = serde_json::from_str(line)?;
    label(&l.request, l.label)
}

/// Sends the labels, in messages of at most [`MAX_LABELS`]. Returns how many were sent.
pub fn run(args: &FeedbackArgs) -> anyhow::Result<usize> {
    let device = Name::new(&args.device).map_err(|e| anyhow::anyhow!("--device '{}': {e}", args.device))?;
    let mut labels: Vec<Label> = args.labels.iter().map(|s| parse_pair(s)).collect::<anyhow::Result<_>>()?;
    if let Some(path) = &args.file {
        let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
            Box::new(std::io::BufReader::new(f))
        };
        for (n, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("read {}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            labels.push(parse_line(&line).with_context(|| format!("{} line {}", path.display(), n + 1))?);
        }
    }
    anyhow::ensure!(!labels.is_empty(), "no labels given (--label or --file)");
    let settings = args.broker.settings()?;
    let topic = topic::device(&device, DeviceLeaf::Feedback).to_string();
    let messages: Vec<Vec<u8>> = labels
        .chunks(MAX_LABELS)
        .map(|c| {
            let f = Feedback { labels: c.iter().cloned().collect() };
            codec::encode(args.broker.payload, &f)
        })
        .collect();
    crate::publish::publish_all(&settings, &topic, messages)?;
    Ok(labels.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_from_pairs_and_lines_and_bad_ones_are_named() {
        assert_eq!(parse_pair("r17=2").unwrap().label, 2);
        assert_eq!(parse_pair("a=b=1").unwrap().request.as_str(), "a=b");
        assert!(parse_pair("r17").unwrap_err().to_string().contains("REQUEST=CLASS"));
        assert!(parse_pair("r17=x").unwrap_err().to_string().contains("integer"));
        assert!(parse_pair(&format!("{}=1", "x".repeat(65))).unwrap_err().to_string().contains("64 bytes"));
        assert_eq!(parse_line(r#"{"request": "r1", "label": 0}"#).unwrap().request.as_str(), "r1");
        assert!(parse_line(r#"{"request": "r1", "label": 0, "x": 1}"#).is_err());
    }
}
