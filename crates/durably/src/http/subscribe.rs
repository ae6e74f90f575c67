//! The SSE routes: `GET /subscribe` (one run: its state, then its live events) and
//! `GET /runs/subscribe` (slim live events of all runs, filtered), over the framing of
//! [`sse`](super::sse).

use futures::StreamExt;

use super::auth::{Guard, Rejection, RunOperation, RunsSubscribeFilter};
use super::request::{Query, accessible_run};
use super::responses::{Reply, durably_error};
use super::{Shared, sse};
use crate::events::Event;
use crate::run::{Labels, RunFilter};

fn stream_options(shared: &Shared) -> sse::StreamOptions {
    sse::StreamOptions {
        throttle: shared.options.sse_throttle,
        keep_alive: shared.options.keep_alive,
        shutdown: shared.options.shutdown.clone(),
    }
}

pub(super) async fn subscribe(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Subscribe).await?;
    let events = shared
        .durably
        .subscribe(&run.id)
        .filter_map(|event| std::future::ready(sse::Item::full(&event)));
    Ok(sse::response(events, stream_options(shared)))
}

fn matches(filter: &RunsSubscribeFilter, event: &Event) -> bool {
    let Some((job_name, labels)) = event_job_and_labels(event) else {
        return false;
    };
    (filter.job_names.is_empty() || filter.job_names.iter().any(|n| n == job_name))
        && filter
            .labels
            .iter()
            .all(|(k, v)| labels.is_some_and(|labels| labels.get(k) == Some(v)))
}

fn event_job_and_labels(event: &Event) -> Option<(&str, Option<&Labels>)> {
    use crate::events::EventKind as K;
    Some(match &event.kind {
        K::RunTrigger {
            job_name, labels, ..
        }
        | K::RunCoalesced {
            job_name, labels, ..
        }
        | K::RunWaiting {
            job_name, labels, ..
        }
        | K::RunLeased {
            job_name, labels, ..
        }
        | K::RunLeaseRenewed {
            job_name, labels, ..
        }
        | K::RunComplete {
            job_name, labels, ..
        }
        | K::RunFail {
            job_name, labels, ..
        }
        | K::RunCancel {
            job_name, labels, ..
        }
        | K::RunDelete {
            job_name, labels, ..
        }
        | K::RunProgress {
            job_name, labels, ..
        }
        | K::StepStart {
            job_name, labels, ..
        }
        | K::StepComplete {
            job_name, labels, ..
        }
        | K::StepFail {
            job_name, labels, ..
        }
        | K::StepCancel {
            job_name, labels, ..
        }
        | K::LogWrite {
            job_name, labels, ..
        } => (job_name.as_str(), Some(labels)),
        K::WorkerError { .. } => return None,
    })
}

pub(super) async fn runs_subscribe(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let filter = RunsSubscribeFilter {
        job_names: query.all("jobName"),
        labels: query.labels(),
    };
    // The same bounds and text rules as `GET /runs`, though no query runs.
    let as_listing = RunFilter {
        job_names: filter.job_names.clone(),
        labels: filter.labels.clone(),
        ..RunFilter::default()
    };
    shared
        .durably
        .config()
        .limits
        .check_filter(&as_listing)
        .map_err(durably_error)?;
    let filter = guard
        .scope_runs_subscribe(filter)
        .await
        .map_err(Rejection::into_response)?;
    let events = shared.durably.subscribe_all().filter_map(move |event| {
        let item = if matches(&filter, &event) {
            sse::Item::slim(&event)
        } else {
            None
        };
        std::future::ready(item)
    });
    Ok(sse::response(events, stream_options(shared)))
}
