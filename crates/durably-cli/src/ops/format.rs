//! How the operator commands print runs, steps and times.

use super::*;

/// `850ms`, `12.3s`, `5m 3s`, `2h 5m`, `3d 4h`.
pub(crate) fn human_duration(millis: u64) -> String {
    let secs = millis / 1000;
    match secs {
        0 => format!("{millis}ms"),
        1..=59 => format!("{}.{}s", secs, millis % 1000 / 100),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// `2026-11-21 07:11:00` (UTC).
pub(crate) fn human_time(at: Timestamp) -> String {
    let text = at.to_string();
    let text = text.split('.').next().unwrap_or(&text);
    text.replace('T', " ")
}

pub(super) fn human_progress(progress: Option<&Progress>) -> String {
    let Some(progress) = progress else {
        return "-".to_owned();
    };
    let mut text = match progress.total {
        Some(total) => format!("{}/{total}", progress.current),
        None => progress.current.to_string(),
    };
    if let Some(message) = &progress.message {
        text.push(' ');
        text.push_str(message);
    }
    text
}

/// How long a run took (terminal) or has been waiting / running (active).
pub(super) fn age_or_duration(run: &Run, now: Timestamp) -> String {
    match run.status {
        RunStatus::Pending => format!(
            "waiting {}",
            human_duration(now.millis_since(run.created_at))
        ),
        RunStatus::Leased => {
            let since = run.started_at.unwrap_or(run.created_at);
            format!("running {}", human_duration(now.millis_since(since)))
        }
        // Suspended on a durable wait since its last write (the suspension).
        RunStatus::Waiting => format!(
            "suspended {}",
            human_duration(now.millis_since(run.updated_at))
        ),
        _ => {
            let since = run.started_at.unwrap_or(run.created_at);
            let until = run.completed_at.unwrap_or(run.updated_at);
            format!("took {}", human_duration(until.millis_since(since)))
        }
    }
}

pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let kept: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{kept}…")
    }
}

pub(super) fn labels_text(run: &Run) -> String {
    run.labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Left-aligned columns separated by two spaces.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = width - cell.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub(super) fn compact(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(850), "850ms");
        assert_eq!(human_duration(12_345), "12.3s");
        assert_eq!(human_duration(303_000), "5m 3s");
        assert_eq!(human_duration(7_500_000), "2h 5m");
        assert_eq!(human_duration(273_600_000), "3d 4h");
    }

    #[test]
    fn tables_align() {
        let text = table(
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "".into()]],
        );
        assert_eq!(text, "A    BB\nxxx  y\nz");
    }
}
