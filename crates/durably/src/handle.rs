//! [`JobHandle`](crate::JobHandle): a registered job, typed: trigger it and read its runs with its own input and
//! output types. [`Durably::register`](crate::Durably::register) returns one.

use std::marker::PhantomData;
use std::sync::Arc;

use serde_json::Value;

use crate::durably::Durably;
use crate::error::{Error, Result};
use crate::job::{Job, JobData};
use crate::run::{Run, RunFilter, TriggerAndWaitResult, TriggerOptions, TriggerResult};
use crate::wait::WaitOptions;

impl Durably {
    /// Registers a job and returns its typed handle. Registering the same definition again
    /// (or a clone of it) returns a handle to the same job; another definition with the same
    /// name is an error.
    pub fn register<I: JobData, O: JobData>(&self, job: Job<I, O>) -> Result<JobHandle<I, O>> {
        let name = job.name().to_owned();
        if name.is_empty() {
            return Err(Error::Config("A job name must not be empty".into()));
        }
        let registered = Arc::new(job.into_registered());
        let current = self.inner.engine.jobs.insert_if_absent(registered.clone());
        if !current.same_definition(&registered) {
            return Err(Error::Config(format!(
                "Job \"{name}\" is already registered with a different definition"
            )));
        }
        Ok(JobHandle::new(self.clone(), &name))
    }

    /// The typed handle of a job registered earlier (e.g. through the builder). Fails if the
    /// name is unknown or registered with other input/output types.
    pub fn job<I: JobData, O: JobData>(&self, name: &str) -> Result<JobHandle<I, O>> {
        let job = self.registered(name)?;
        if job.type_id() != std::any::TypeId::of::<(I, O)>() {
            return Err(Error::Config(format!(
                "Job \"{name}\" is registered with other input/output types"
            )));
        }
        Ok(JobHandle::new(self.clone(), name))
    }
}

/// A typed handle to a registered job: trigger it and read its runs with its own types.
pub struct JobHandle<I, O> {
    durably: Durably,
    name: Arc<str>,
    types: PhantomData<fn(I) -> O>,
}

impl<I, O> Clone for JobHandle<I, O> {
    fn clone(&self) -> Self {
        JobHandle {
            durably: self.durably.clone(),
            name: self.name.clone(),
            types: PhantomData,
        }
    }
}

impl<I, O> std::fmt::Debug for JobHandle<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobHandle")
            .field("name", &self.name)
            .finish()
    }
}

impl<I: JobData, O: JobData> JobHandle<I, O> {
    pub(crate) fn new(durably: Durably, name: &str) -> Self {
        JobHandle {
            durably,
            name: Arc::from(name),
            types: PhantomData,
        }
    }

    /// The instance the handle triggers through.
    pub(crate) fn durably(&self) -> &Durably {
        &self.durably
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn to_json(input: &I) -> Result<Value> {
        serde_json::to_value(input).map_err(|e| Error::Validation(format!("Invalid input: {e}")))
    }

    /// Triggers a run with default options.
    pub async fn trigger(&self, input: I) -> Result<TriggerResult<I, O>> {
        self.trigger_with(input, TriggerOptions::default()).await
    }

    /// Triggers a run with options (idempotency key, concurrency key, labels, coalesce).
    pub async fn trigger_with(
        &self,
        input: I,
        options: TriggerOptions,
    ) -> Result<TriggerResult<I, O>> {
        let result = self
            .durably
            .trigger_json(&self.name, Self::to_json(&input)?, options)
            .await?;
        Ok(TriggerResult {
            run: result.run.into_typed()?,
            disposition: result.disposition,
        })
    }

    /// Triggers many runs in one transaction; every input is validated before any is stored.
    pub async fn batch_trigger(
        &self,
        items: impl IntoIterator<Item = (I, TriggerOptions)>,
    ) -> Result<Vec<TriggerResult<I, O>>> {
        let items = items
            .into_iter()
            .map(|(input, options)| Ok((Self::to_json(&input)?, options)))
            .collect::<Result<Vec<_>>>()?;
        self.durably
            .batch_trigger_json(&self.name, items)
            .await?
            .into_iter()
            .map(|result| {
                Ok(TriggerResult {
                    run: result.run.into_typed()?,
                    disposition: result.disposition,
                })
            })
            .collect()
    }

    /// Triggers a run and waits for its output (see [`Durably::wait_for_run`](crate::Durably::wait_for_run)).
    pub async fn trigger_and_wait(
        &self,
        input: I,
        options: TriggerOptions,
        wait: WaitOptions,
    ) -> Result<TriggerAndWaitResult<O>> {
        let result = self
            .durably
            .trigger_and_wait_json(&self.name, Self::to_json(&input)?, options, wait)
            .await?;
        let output = match result.output {
            None | Some(Value::Null) => None,
            Some(value) => Some(serde_json::from_value(value).map_err(|e| {
                Error::Validation(format!(
                    "Output of run {} does not match the job's output type: {e}",
                    result.id
                ))
            })?),
        };
        Ok(TriggerAndWaitResult {
            id: result.id,
            output,
            disposition: result.disposition,
        })
    }

    /// A run of this job (`None` if missing or a run of another job).
    pub async fn get_run(&self, id: &str) -> Result<Option<Run<I, O>>> {
        match self.durably.get_run(id).await? {
            Some(run) if run.job_name == *self.name => Ok(Some(run.into_typed()?)),
            _ => Ok(None),
        }
    }

    /// Runs of this job matching `filter` (its job names are replaced by this job's).
    pub async fn get_runs(&self, filter: RunFilter) -> Result<Vec<Run<I, O>>> {
        let filter = RunFilter {
            job_names: vec![self.name.to_string()],
            ..filter
        };
        self.durably
            .get_runs(&filter)
            .await?
            .into_iter()
            .map(Run::into_typed)
            .collect()
    }
}
