//! Child runs: [`StepContext::invoke`] and [`StepContext::invoke_all`] trigger runs of another
//! registered job from inside a run and wait for their typed outputs without holding a worker
//! slot (see `docs/children.md`).
//!
//! An invoke named `n` is built on a durable wait: the parent prepares the wait `children:n`
//! (metadata `{"durably": {"kind": "children", ...}}`), triggers its children in one batch, each
//! with the idempotency key `child:<parent run id>:<n>:<index>` and a link to the parent and to
//! the wait (durably's own columns `rs_parent_run_id`, `rs_parent_wait_id`), and suspends on the
//! wait. The end of a child signals the wait once the children of the invoke are settled (all
//! completed, or one failed or was cancelled); a maintenance sweep signals the waits a crash
//! left unsignalled. The parent, resumed, reads its children's outputs from their rows.

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::handle::JobHandle;
use crate::job::JobData;
use crate::run::{Labels, Run, RunFilter, RunStatus, TriggerOptions};
use crate::step::StepContext;
use crate::store::CHILDREN_WAIT_PREFIX;
use crate::waits::{DurableWait, NewWait, WaitStatus};

/// The signal id with which a child's end (or the maintenance sweep) resolves its parent's
/// `children:*` wait. Every signaller sends the same id and payload (`null`), so a second
/// signal is a duplicate.
pub const CHILDREN_SIGNAL_ID: &str = "children";

/// The idempotency key of the `index`-th child of the invoke `name` of run `parent_run_id`.
pub fn child_idempotency_key(parent_run_id: &str, name: &str, index: usize) -> String {
    format!("child:{parent_run_id}:{name}:{index}")
}

/// The metadata of an invoke's wait: `{"durably": {"kind": "children", "job": ..., "count":
/// ..., "cancelWithParent": ...}}`.
pub fn children_metadata(job_name: &str, count: usize, cancel_with_parent: bool) -> Value {
    json!({ "durably": {
        "kind": "children",
        "job": job_name,
        "count": count,
        "cancelWithParent": cancel_with_parent,
    } })
}

/// A SQL `LIKE` pattern matching the metadata of an invoke's wait whose children are not
/// cancelled with their parent (as [`children_metadata`] writes it, compact JSON).
pub(crate) const DETACHED_METADATA_PATTERN: &str = "%\"cancelWithParent\":false%";

/// Whether the children of a parent's wait with `metadata` are cancelled with the parent
/// (`true` unless the metadata says `"cancelWithParent": false`).
pub(crate) fn cancels_with_parent(metadata: Option<&Value>) -> bool {
    metadata
        .and_then(|m| m["durably"]["cancelWithParent"].as_bool())
        .unwrap_or(true)
}

/// Options of an invoke ([`StepContext::invoke_with`], [`StepContext::invoke_all_with`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvokeOptions {
    /// The child's concurrency key (at most one leased run per key across jobs). Only for an
    /// invoke of one child: the children of one `invoke_all` would share it, and a job keeps
    /// one pending run per key.
    pub concurrency_key: Option<String>,
    /// Labels stored with every child.
    pub labels: Labels,
    /// Cancelling the parent cancels these children (and theirs, recursively). `true` by
    /// default; `false` leaves them running.
    pub cancel_with_parent: bool,
}

impl Default for InvokeOptions {
    fn default() -> Self {
        InvokeOptions {
            concurrency_key: None,
            labels: Labels::new(),
            cancel_with_parent: true,
        }
    }
}

impl InvokeOptions {
    /// The defaults: no concurrency key, no labels, cancelled with the parent.
    pub fn new() -> Self {
        Self::default()
    }

    /// With this concurrency key (an invoke of one child only).
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }

    /// With this label on every child.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Whether cancelling the parent cancels the children (`true` by default).
    pub fn cancel_with_parent(mut self, cancel: bool) -> Self {
        self.cancel_with_parent = cancel;
        self
    }
}

impl StepContext {
    /// Triggers one run of `job` with `input` as a child of this run and returns its output,
    /// waiting without a worker slot: [`StepContext::invoke_all`] with one input.
    ///
    /// ```
    /// # use durably::{Durably, Job, StepContext, TriggerOptions, WaitOptions};
    /// # #[tokio::main]
    /// # async fn main() -> durably::Result<()> {
    /// let durably = Durably::builder().sqlite(":memory:").build()?;
    /// let double = durably.register(Job::new("double", |_: StepContext, n: u64| async move {
    ///     Ok(n * 2)
    /// }))?;
    /// let parent = durably.register(Job::new("parent", move |step: StepContext, n: u64| {
    ///     let double = double.clone();
    ///     async move { step.invoke("double", &double, n).await }
    /// }))?;
    /// durably.init().await?;
    /// let done = parent.trigger_and_wait(21, TriggerOptions::new(), WaitOptions::new()).await?;
    /// assert_eq!(done.output, Some(42));
    /// # durably.stop().await;
    /// # Ok(()) }
    /// ```
    pub async fn invoke<I: JobData, O: JobData>(
        &self,
        name: &str,
        job: &JobHandle<I, O>,
        input: I,
    ) -> Result<O> {
        self.invoke_with(name, job, input, InvokeOptions::new())
            .await
    }

    /// [`StepContext::invoke`] with options (the child's concurrency key and labels, whether
    /// it is cancelled with this run).
    pub async fn invoke_with<I: JobData, O: JobData>(
        &self,
        name: &str,
        job: &JobHandle<I, O>,
        input: I,
        options: InvokeOptions,
    ) -> Result<O> {
        let mut outputs = self
            .invoke_all_with(name, job, vec![input], options)
            .await?;
        outputs
            .pop()
            .ok_or_else(|| Error::Validation(format!("invoke \"{name}\" returned no output")))
    }

    /// Triggers one child run of `job` per input (fan-out) and returns their outputs in input
    /// order once all completed (join), or the first failure in input order: a child that
    /// failed or was cancelled gives [`Error::Child`] naming it. No input returns at once.
    ///
    /// The name is the invoke's identity within the run, as a step's: the children are
    /// triggered once, in one batch, with idempotency keys derived from this run's id, the name
    /// and the input's index ([`child_idempotency_key`]), so an execution replayed after a
    /// crash finds the same children and never creates a second one. Give each invoke of a
    /// run its own name (in a loop, e.g. `resize-{i}`).
    ///
    /// While the children run, this run is suspended on the durable wait `children:{name}`:
    /// it holds no lease, worker slot or concurrency key, and the call returns
    /// [`Error::Suspended`], which the job function must pass on (`?`). The end of the last
    /// child (or of the first failed one) resolves the wait and any worker resumes this run,
    /// executing it again from the top with its completed steps replayed; the call then
    /// returns the outputs. Only between steps, as [`StepContext::prepare_wait`].
    pub async fn invoke_all<I: JobData, O: JobData>(
        &self,
        name: &str,
        job: &JobHandle<I, O>,
        inputs: Vec<I>,
    ) -> Result<Vec<O>> {
        self.invoke_all_with(name, job, inputs, InvokeOptions::new())
            .await
    }

    /// [`StepContext::invoke_all`] with options. A concurrency key is refused for more than
    /// one input ([`Error::Validation`]): the children would share it.
    pub async fn invoke_all_with<I: JobData, O: JobData>(
        &self,
        name: &str,
        job: &JobHandle<I, O>,
        inputs: Vec<I>,
        options: InvokeOptions,
    ) -> Result<Vec<O>> {
        if name.trim().is_empty() {
            return Err(Error::Validation(
                "An invoke's name must be non-empty".into(),
            ));
        }
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        if inputs.len() > 1 && options.concurrency_key.is_some() {
            return Err(Error::Validation(format!(
                "invoke \"{name}\": a concurrency key applies to one child, not to the {} \
                 children of an invoke_all (a job keeps one pending run per key)",
                inputs.len()
            )));
        }
        let count = inputs.len();
        let metadata = children_metadata(job.name(), count, options.cancel_with_parent);
        let wait = self
            .prepare_wait(NewWait::new(format!("{CHILDREN_WAIT_PREFIX}{name}")).metadata(metadata))
            .await?;
        let children = match wait.status {
            // A replay after the wait was resolved: the children exist; read them (one query).
            WaitStatus::Resolved => match self.read_children(&wait, count).await? {
                Some(children) => children,
                None => {
                    self.trigger_children(name, job, &wait, inputs, options)
                        .await?
                }
            },
            _ => {
                self.trigger_children(name, job, &wait, inputs, options)
                    .await?
            }
        };
        if let Some(outcome) = outcome(name, &children) {
            return outcome;
        }
        if wait.status == WaitStatus::Resolved {
            return Err(unsettled(name, &children));
        }
        self.wait_for(&wait).await?;
        // Resolved during the hand-off: the children as they now stand.
        let children = self
            .read_children(&wait, count)
            .await?
            .ok_or_else(|| unsettled(name, &children))?;
        outcome(name, &children).unwrap_or_else(|| Err(unsettled(name, &children)))
    }

    /// Triggers the children of an invoke in one batch (idempotent), in input order.
    async fn trigger_children<I: JobData, O: JobData>(
        &self,
        name: &str,
        job: &JobHandle<I, O>,
        wait: &DurableWait,
        inputs: Vec<I>,
        options: InvokeOptions,
    ) -> Result<Vec<Run>> {
        let shared = self.shared();
        let items = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let input = serde_json::to_value(input)
                    .map_err(|e| Error::Validation(format!("Invalid input: {e}")))?;
                let mut trigger = TriggerOptions::new().idempotency_key(child_idempotency_key(
                    &shared.run_id,
                    name,
                    i,
                ));
                if let Some(key) = &options.concurrency_key {
                    trigger = trigger.concurrency_key(key.clone());
                }
                if !options.labels.is_empty() {
                    trigger = trigger.labels(options.labels.clone());
                }
                Ok((input, trigger))
            })
            .collect::<Result<Vec<_>>>()?;
        job.durably()
            .trigger_children(job.name(), items, &shared.run_id, &wait.id)
            .await
    }

    /// The children of `wait` in input order, read from the store; `None` unless all `count`
    /// are there.
    async fn read_children(&self, wait: &DurableWait, count: usize) -> Result<Option<Vec<Run>>> {
        let shared = self.shared();
        let runs = shared
            .store
            .get_runs(&RunFilter::new().parent_run_id(shared.run_id.clone()))
            .await?;
        let mut children: Vec<Option<Run>> = vec![None; count];
        for run in runs {
            if run.parent_wait_id.as_deref() != Some(wait.id.as_str()) {
                continue;
            }
            let index = run
                .idempotency_key
                .as_deref()
                .and_then(|key| key.rsplit(':').next())
                .and_then(|i| i.parse::<usize>().ok());
            if let Some(slot) = index.and_then(|i| children.get_mut(i)) {
                *slot = Some(run);
            }
        }
        Ok(children.into_iter().collect())
    }
}

/// The invoke's result once its children are settled: the first failed or cancelled child in
/// input order as [`Error::Child`], or every output; `None` while one is unfinished.
fn outcome<O: DeserializeOwned>(name: &str, children: &[Run]) -> Option<Result<Vec<O>>> {
    if let Some(child) = children
        .iter()
        .find(|c| matches!(c.status, RunStatus::Failed | RunStatus::Cancelled))
    {
        return Some(Err(child_error(name, child)));
    }
    if children.iter().any(|c| c.status != RunStatus::Completed) {
        return None;
    }
    Some(
        children
            .iter()
            .map(|child| {
                serde_json::from_value(child.output.clone().unwrap_or(Value::Null)).map_err(|e| {
                    Error::Validation(format!(
                        "Output of child run {} does not match the job's output type: {e}",
                        child.id
                    ))
                })
            })
            .collect(),
    )
}

/// The [`Error::Child`] of a child that failed or was cancelled.
fn child_error(name: &str, child: &Run) -> Error {
    let message = match (child.status, &child.error) {
        (_, Some(error)) => error.clone(),
        (RunStatus::Cancelled, None) => "cancelled".to_owned(),
        _ => "Run failed".to_owned(),
    };
    Error::Child {
        name: name.to_owned(),
        run_id: child.id.clone(),
        status: child.status,
        message,
    }
}

/// The error of an invoke whose wait was resolved while a child is still unfinished (an
/// operator signalled the wait, or resumed a failed child after the parent went on).
fn unsettled(name: &str, children: &[Run]) -> Error {
    let unfinished = children
        .iter()
        .find(|c| !c.status.is_terminal())
        .map(|c| format!("child run {} is {}", c.id, c.status))
        .unwrap_or_else(|| "a child run is missing".to_owned());
    Error::Conflict(format!(
        "invoke \"{name}\": its wait was resolved but {unfinished}"
    ))
}
