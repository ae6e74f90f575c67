//! Jobs: a name, serde input/output types and an async function `(step, input) -> output`.
//!
//! ```
//! use durably::{Job, StepContext};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Input { user_id: u64 }
//! #[derive(Serialize, Deserialize)]
//! struct Output { sent: bool }
//!
//! let welcome = Job::new("send-welcome", |step: StepContext, input: Input| async move {
//!     let address = step.run("look-up", |_| async move {
//!         Ok(format!("user{}@example.com", input.user_id))
//!     }).await?;
//!     step.run("send", |_| async move { Ok(address.len()) }).await?;
//!     Ok(Output { sent: true })
//! })
//! .validate(|input: &Input| if input.user_id == 0 { Err("user_id must be positive".into()) } else { Ok(()) });
//! assert_eq!(welcome.name(), "send-welcome");
//! ```

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{BoxError, Error, Result};
use crate::retry::RetryPolicy;
use crate::step::StepContext;

/// Bounds every job input and output type satisfies.
pub trait JobData: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> JobData for T {}

type JobFn<I, O> = dyn Fn(StepContext, I) -> BoxFuture<'static, Result<O, BoxError>> + Send + Sync;
type Validator<T> = dyn Fn(&T) -> Result<(), String> + Send + Sync;

/// A job definition. Cheap to clone; clones are the *same* definition, so registering a clone
/// again returns the existing handle, while another definition with the same name is an error.
pub struct Job<I, O> {
    name: String,
    run: Arc<JobFn<I, O>>,
    validate_input: Option<Arc<Validator<I>>>,
    validate_output: Option<Arc<Validator<O>>>,
    input_schema: Option<Arc<Value>>,
    retry: Option<RetryPolicy>,
}

impl<I, O> Clone for Job<I, O> {
    fn clone(&self) -> Self {
        Job {
            name: self.name.clone(),
            run: self.run.clone(),
            validate_input: self.validate_input.clone(),
            validate_output: self.validate_output.clone(),
            input_schema: self.input_schema.clone(),
            retry: self.retry.clone(),
        }
    }
}

impl<I: JobData, O: JobData> Job<I, O> {
    /// Defines a job. The function gets the step context and the deserialized input, and
    /// returns [`durably::Result`](crate::Result): `?` on a step, an invoke or a wait passes
    /// their errors on, `Ok(output)` needs no annotation. Another error type of the job's own
    /// code converts with [`Error::job`](crate::Error::job) (`.map_err(Error::job)?`); inside a
    /// step any error converts by itself ([`StepResult`](crate::StepResult)).
    ///
    /// ```
    /// use durably::{Job, StepContext};
    /// let double = Job::new("double", |step: StepContext, n: u64| async move {
    ///     let twice = step.run("double", |_| async move { Ok(n * 2) }).await?;
    ///     Ok(twice)
    /// });
    /// # let _ = double;
    /// ```
    pub fn new<F, Fut>(name: impl Into<String>, run: F) -> Self
    where
        F: Fn(StepContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = crate::Result<O>> + Send + 'static,
    {
        let run = move |step: StepContext, input: I| -> BoxFuture<'static, Result<O, BoxError>> {
            let future = run(step, input);
            Box::pin(async move { future.await.map_err(Into::into) })
        };
        Job {
            name: name.into(),
            run: Arc::new(run),
            validate_input: None,
            validate_output: None,
            input_schema: None,
            retry: None,
        }
    }

    /// Retries the whole run when the job function fails: the run is executed again from the
    /// top after the policy's delay, its completed steps replayed (not executed again), until
    /// an execution succeeds, the attempts are used up (the run then fails with the last
    /// error), or the error is [`NonRetryable`](crate::NonRetryable). Between attempts the run
    /// is `waiting` on a durable timer named `run-retry:<attempt>` (no lease, no slot), whose
    /// metadata keeps that attempt's error; an operator ends the delay early by signalling it.
    /// Cancellation, a lost lease, invalid input or output and panics are not retried.
    ///
    /// ```
    /// use std::time::Duration;
    /// use durably::{Job, RetryPolicy, StepContext};
    /// let sync = Job::new("sync", |step: StepContext, _input: ()| async move {
    ///     step.run("pull", |_| async { Ok(1) }).await
    /// })
    /// .retry(RetryPolicy::exponential(5, Duration::from_secs(30)));
    /// # let _ = sync;
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Adds input validation beyond deserialization; a rejection fails the trigger with
    /// `Invalid input: <message>` and stores nothing.
    pub fn validate(
        mut self,
        check: impl Fn(&I) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.validate_input = Some(Arc::new(check));
        self
    }

    /// Adds output validation; a rejection fails the run with `Invalid output: <message>`.
    pub fn validate_output(
        mut self,
        check: impl Fn(&O) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.validate_output = Some(Arc::new(check));
        self
    }

    /// Attaches the JSON Schema of the job's input, for tools: `GET /jobs` of
    /// `durably::http` (feature `http`) lists it and the dashboard renders a trigger form from it.
    /// Documentation only: inputs are still checked by deserialization and
    /// [`validate`](Job::validate), not against this schema.
    ///
    /// ```
    /// # use durably::{Job, StepContext};
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Serialize, Deserialize)]
    /// struct Input { ms: u64 }
    /// let job = Job::new("sleep", |_step: StepContext, input: Input| async move {
    ///     Ok(input.ms)
    /// })
    /// .input_schema(serde_json::json!({
    ///     "type": "object",
    ///     "required": ["ms"],
    ///     "properties": { "ms": { "type": "integer", "minimum": 0 } }
    /// }));
    /// assert!(job.get_input_schema().is_some());
    /// ```
    pub fn input_schema(mut self, schema: Value) -> Self {
        self.input_schema = Some(Arc::new(schema));
        self
    }

    /// The JSON Schema given with [`input_schema`](Job::input_schema), if any.
    pub fn get_input_schema(&self) -> Option<&Value> {
        self.input_schema.as_deref()
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn identity(&self) -> usize {
        Arc::as_ptr(&self.run) as *const () as usize
    }

    pub(crate) fn into_registered(self) -> RegisteredJob {
        let identity = self.identity();
        let name = self.name.clone();
        let input_schema = self.input_schema.as_deref().cloned();
        let parse_job = self.clone();
        let run_job = self;
        RegisteredJob {
            name,
            identity,
            type_id: std::any::TypeId::of::<(I, O)>(),
            input_schema,
            parse_input: Box::new(move |input| parse_job.parse_input(input).map(|(_, v)| v)),
            execute: Box::new(move |step, input| {
                let job = run_job.clone();
                Box::pin(async move { job.execute(step, input).await })
            }),
        }
    }

    /// Deserializes and validates an input; returns it typed and normalized as JSON.
    fn parse_input(&self, input: Value) -> Result<(I, Value), String> {
        let typed: I = crate::json_terms::from_json(input)?;
        if let Some(check) = &self.validate_input {
            check(&typed)?;
        }
        let normalized = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
        Ok((typed, normalized))
    }

    async fn execute(&self, step: StepContext, input: Value) -> Result<Value, ExecutionError> {
        let typed: I = crate::json_terms::from_json(input)
            .map_err(|e| ExecutionError::Message(format!("Invalid input: {e}")))?;
        let output = match (self.run)(step.clone(), typed).await {
            Ok(output) => output,
            Err(error) => {
                return Err(ExecutionError::Job(match &self.retry {
                    Some(policy) => crate::retry::after_run_failure(&step, policy, error).await,
                    None => error,
                }));
            }
        };
        if let Some(check) = &self.validate_output {
            check(&output).map_err(|e| ExecutionError::Message(format!("Invalid output: {e}")))?;
        }
        serde_json::to_value(&output)
            .map_err(|e| ExecutionError::Message(format!("Invalid output: {e}")))
    }
}

/// Reads JSON numbers as JavaScript and JSON Schema do: a float with no fractional part
/// (`106.0`, `1e2`, `-0.0`) is the integer it equals, so an integer field of a job's input
/// accepts it (serde refuses a float for an integer type; upstream, `JSON.parse` cannot tell
/// them apart). Only within JavaScript's safe integers (|n| < 2^53), where a float is exact:
/// beyond, an integral float may be a rounded integer literal (`-9223372036854775809` parses
/// as -2^63), so it stays a float and an integer field refuses it.
fn integral_floats_as_integers(value: &mut Value) {
    const TWO_POW_53: f64 = 9_007_199_254_740_992.0;
    match value {
        Value::Number(number) => {
            if let Some(float) = number.as_f64().filter(|_| number.is_f64())
                && float.fract() == 0.0
                && float.abs() < TWO_POW_53
            {
                *value = Value::from(float as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_as_integers),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

/// Why an execution did not produce an output.
pub(crate) enum ExecutionError {
    /// The job function returned an error.
    Job(BoxError),
    /// Input or output did not validate.
    Message(String),
}

type ParseFn = dyn Fn(Value) -> Result<Value, String> + Send + Sync;
type ExecuteFn =
    dyn Fn(StepContext, Value) -> BoxFuture<'static, Result<Value, ExecutionError>> + Send + Sync;

/// A registered job with its types erased (what the worker and the HTTP layer use).
pub(crate) struct RegisteredJob {
    pub(crate) name: String,
    identity: usize,
    type_id: std::any::TypeId,
    pub(crate) input_schema: Option<Value>,
    parse_input: Box<ParseFn>,
    pub(crate) execute: Box<ExecuteFn>,
}

impl RegisteredJob {
    /// Validates and normalizes an untyped input (`Invalid input: …` on failure).
    pub(crate) fn parse_input(&self, mut input: Value) -> Result<Value> {
        integral_floats_as_integers(&mut input);
        (self.parse_input)(input).map_err(|e| Error::Validation(format!("Invalid input: {e}")))
    }

    /// Same definition as `other` (clones of one [`Job`] are the same definition).
    pub(crate) fn same_definition(&self, other: &RegisteredJob) -> bool {
        self.identity == other.identity && self.type_id == other.type_id
    }

    pub(crate) fn type_id(&self) -> std::any::TypeId {
        self.type_id
    }
}
