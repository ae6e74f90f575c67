//! A run named on the command line: its full id, or a unique part of it (as git takes a commit).

use super::*;

/// The fewest characters of an id accepted as a part of it.
pub(crate) const MIN_ID_PART: usize = 4;

/// Runs read (newest first) when looking for the runs whose id starts or ends with a part:
/// the store has no lookup by id prefix, so the newest runs are read through `get_runs`.
pub(crate) const ID_SCAN_LIMIT: u64 = 10_000;

/// Runs read per `get_runs` call of that scan.
pub(super) const ID_SCAN_PAGE: u64 = 1_000;

/// Candidates listed when a part of an id matches several runs.
pub(super) const CANDIDATES_SHOWN: usize = 5;

/// Where a part of an id must sit in the ids it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IdPart {
    /// Its first or last characters.
    Either,
    /// Its first characters (`01J9ABC…`).
    Start,
    /// Its last characters (the dashboard's `…4K9ZB2QX`).
    End,
}

/// `…4K9ZB2QX` → (`4K9ZB2QX`, End); `01J9…` → (`01J9`, Start); else (text, Either).
pub(super) fn id_part(text: &str) -> (&str, IdPart) {
    for ellipsis in ["…", "..."] {
        if let Some(rest) = text.strip_prefix(ellipsis) {
            return (rest, IdPart::End);
        }
        if let Some(rest) = text.strip_suffix(ellipsis) {
            return (rest, IdPart::Start);
        }
    }
    (text, IdPart::Either)
}

/// Whether `id` starts or ends with `part` (ignoring ASCII case: ULIDs are upper case, and
/// people type them in lower case).
pub(super) fn id_matches(id: &str, part: &str, place: IdPart) -> bool {
    let (id, part) = (id.as_bytes(), part.as_bytes());
    if part.len() > id.len() {
        return false;
    }
    let start = || id[..part.len()].eq_ignore_ascii_case(part);
    let end = || id[id.len() - part.len()..].eq_ignore_ascii_case(part);
    match place {
        IdPart::Start => start(),
        IdPart::End => end(),
        IdPart::Either => start() || end(),
    }
}

/// The run named on the command line: by its full id, else by a unique part of it (its
/// first or last characters, at least [`MIN_ID_PART`]), as git takes a commit. A part that
/// matches several runs lists them (exit 2); one too short is refused (exit 2); no match
/// exits with 4.
pub(crate) async fn resolve_run(
    durably: &Durably,
    db: &DbArgs,
    text: &str,
) -> Result<Run, CliError> {
    if let Some(run) = durably
        .get_run(text)
        .await
        .map_err(|e| database_error(db, e))?
    {
        return Ok(run);
    }
    let (part, place) = id_part(text);
    if part.chars().count() < MIN_ID_PART {
        return Err(CliError::usage(format!(
            "run id '{text}' is too short: give the full id, or at least {MIN_ID_PART} of its \
             first or last characters (the dashboard shows its last 8)"
        )));
    }
    if !part
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(no_such_run(db, text));
    }
    let mut matches: Vec<Run> = Vec::new();
    let mut read = 0u64;
    let mut complete = false;
    while read < ID_SCAN_LIMIT {
        let wanted = ID_SCAN_PAGE.min(ID_SCAN_LIMIT - read);
        let mut filter = RunFilter::new();
        filter.limit = Some(wanted);
        filter.offset = Some(read);
        let page = durably
            .get_runs(&filter)
            .await
            .map_err(|e| database_error(db, e))?;
        let got = page.len() as u64;
        read += got;
        matches.extend(
            page.into_iter()
                .filter(|run| id_matches(&run.id, part, place)),
        );
        if got < wanted {
            complete = true;
            break;
        }
    }
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 if complete => Err(no_such_run(db, text)),
        0 => Err(CliError::new(format!(
            "no such run: {text} (no id among the newest {ID_SCAN_LIMIT} runs starts or ends with \
             it: give the full id; list runs with `durably runs {}`)",
            db.flag()
        ))
        .with_code(NOT_FOUND)),
        count => {
            let among = if complete {
                String::new()
            } else {
                format!(" among the newest {ID_SCAN_LIMIT}")
            };
            let mut message = format!(
                "run id '{text}' is ambiguous: {count} runs{among} match; give more of its \
                 characters, or the full id:"
            );
            for run in matches.iter().take(CANDIDATES_SHOWN) {
                message.push_str(&format!(
                    "\n  {}  {}  {}  created {}",
                    run.id,
                    truncate(&run.job_name, 30),
                    run.status,
                    human_time(run.created_at)
                ));
            }
            if count > CANDIDATES_SHOWN {
                message.push_str(&format!("\n  … and {} more", count - CANDIDATES_SHOWN));
            }
            Err(CliError::usage(message))
        }
    }
}
