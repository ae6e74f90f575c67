//! Live events for `durably serve`: the runs it shows are executed by other processes, whose
//! events never reach this one. A poller reads the store and emits the events those processes
//! emitted (`run:trigger`, `run:leased`, `step:complete`, `run:progress`, `run:complete`,
//! `run:fail`, `run:cancel`, `run:delete`) on this instance, so the event streams
//! (`/subscribe`, `/runs/subscribe`) and the dashboard update live.
//!
//! It sees what is written to the database between two polls, so a step or progress update
//! overwritten within one interval is reported once, with its latest value. Runs are tracked
//! among the pending and leased ones plus the newest [`RECENT`].

use std::collections::HashMap;
use std::time::Duration;

use durably::follow::RunSnapshot;
use durably::{CancellationToken, Durably, EventKind, Run, RunFilter, RunStatus};

/// Newest runs read on every poll besides the active ones (catches runs that were triggered
/// and finished between two polls).
pub const RECENT: u64 = 100;
/// Most active runs tracked.
const ACTIVE: u64 = 1000;

/// Polls every `every` until `stop` fires.
pub async fn run(durably: Durably, every: Duration, stop: CancellationToken) {
    let mut seen: HashMap<String, RunSnapshot> = HashMap::new();
    let mut started = false;
    // events of this process (cancel and delete through the API, and our own): keep `seen` in
    // step so they are not reported twice
    let (sender, mut local) = tokio::sync::mpsc::unbounded_channel();
    let _listening = durably.on_any(move |event| {
        if matches!(
            event.kind,
            EventKind::RunCancel { .. } | EventKind::RunDelete { .. }
        ) {
            let _ = sender.send(event.kind.clone());
        }
    });
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            Some(kind) = local.recv() => note_local(&mut seen, &kind),
            _ = tick.tick() => {
                match poll(&durably, &mut seen, started).await {
                    Ok(()) => started = true,
                    Err(error) => tracing::warn!(%error, "durably serve could not poll the database for changes"),
                }
            }
        }
    }
}

fn note_local(seen: &mut HashMap<String, RunSnapshot>, kind: &EventKind) {
    match kind {
        EventKind::RunCancel { run_id, .. } => {
            if let Some(entry) = seen.get_mut(run_id) {
                entry.status = RunStatus::Cancelled;
            }
        }
        EventKind::RunDelete { run_id, .. } => {
            seen.remove(run_id);
        }
        _ => {}
    }
}

async fn poll(
    durably: &Durably,
    seen: &mut HashMap<String, RunSnapshot>,
    started: bool,
) -> durably::Result<()> {
    let active = durably
        .get_runs(
            &RunFilter::new()
                .status(RunStatus::Pending)
                .status(RunStatus::Leased)
                .limit(ACTIVE),
        )
        .await?;
    let recent = durably.get_runs(&RunFilter::new().limit(RECENT)).await?;
    let mut current: HashMap<String, Run> = HashMap::new();
    for run in active.into_iter().chain(recent) {
        current.entry(run.id.clone()).or_insert(run);
    }
    // runs tracked as active that are in neither list: finished and out of the window, or
    // deleted
    let missing: Vec<String> = seen
        .iter()
        .filter(|(id, s)| !s.status.is_terminal() && !current.contains_key(*id))
        .map(|(id, _)| id.clone())
        .collect();
    for id in missing {
        match durably.get_run(&id).await? {
            Some(run) => {
                current.insert(id, run);
            }
            None => {
                if let Some(gone) = seen.remove(&id) {
                    durably.emit(EventKind::RunDelete {
                        run_id: id,
                        job_name: gone.job_name,
                        labels: gone.labels,
                    });
                }
            }
        }
    }
    let mut runs: Vec<Run> = current.into_values().collect();
    runs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let tracked: std::collections::HashSet<String> = runs.iter().map(|r| r.id.clone()).collect();
    for run in runs {
        if !started {
            seen.insert(run.id.clone(), RunSnapshot::of(&run));
            continue;
        }
        let before = match seen.remove(&run.id) {
            Some(before) => before,
            None => {
                durably.emit(EventKind::RunTrigger {
                    run_id: run.id.clone(),
                    job_name: run.job_name.clone(),
                    input: run.input.clone(),
                    labels: run.labels.clone(),
                });
                RunSnapshot::triggered(&run)
            }
        };
        report_changes(durably, &before, &run).await?;
        seen.insert(run.id.clone(), RunSnapshot::of(&run));
    }
    // forget finished runs that left the window
    seen.retain(|id, s| !s.status.is_terminal() || tracked.contains(id));
    Ok(())
}

/// Emits the events that lead from `before` to `run`.
async fn report_changes(durably: &Durably, before: &RunSnapshot, run: &Run) -> durably::Result<()> {
    let steps = match before.needs_steps(run) {
        true => durably.get_steps(&run.id).await?,
        false => Vec::new(),
    };
    for kind in before.changes(run, &steps) {
        durably.emit(kind);
    }
    Ok(())
}
