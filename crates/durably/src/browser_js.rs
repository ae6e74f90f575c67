//! The JavaScript API of durably in a browser (feature `browser`, target
//! `wasm32-unknown-unknown`), shaped like upstream's instance as its SPA hooks use it:
//! `createDurably(options)`, `register({ key: { name, run } })` (returning an instance whose
//! `jobs` has a handle per key: `trigger`, `batchTrigger`, `getRun`, `getRuns`) or
//! `register(name, fn)`, `trigger`, `getRun`, `getRuns`, `on`, `cancel`, `retrigger`,
//! `deleteRun`, `init`/`migrate`/`start`/`stop`, `processUntilIdle`.
//!
//! A job is a JavaScript function `(step, input) => output | Promise<output>`; `step.run(name,
//! fn)` returns a promise of the step's output, stored on its first execution and replayed
//! from the database afterwards (the function is not called again). Values cross between
//! JavaScript and the engine as JSON (`JSON.stringify` / `JSON.parse`): `undefined` becomes
//! `null`, and runs, trigger results and events have upstream's camelCase JSON shape.
//!
//! The engine requires `Send` jobs; a JavaScript function or promise is not. Each is wrapped
//! in a [`SendWrapper`], which checks at run time that it is only used on the thread that made
//! it; wasm32-unknown-unknown has one thread, so the check always holds.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use js_sys::{Function, JSON, Object, Promise, Reflect};
use send_wrapper::SendWrapper;
use serde_json::{Map, Value};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, future_to_promise};

use crate::events::EventType;
use crate::{
    Coalesce, Durably, Error, Job, Labels, RunFilter, RunStatus, StepContext, TriggerOptions,
};

/// Every event type, to find one by its wire string.
const EVENT_TYPES: [EventType; 16] = [
    EventType::RunTrigger,
    EventType::RunCoalesced,
    EventType::RunWaiting,
    EventType::RunLeased,
    EventType::RunLeaseRenewed,
    EventType::RunComplete,
    EventType::RunFail,
    EventType::RunCancel,
    EventType::RunDelete,
    EventType::RunProgress,
    EventType::StepStart,
    EventType::StepComplete,
    EventType::StepFail,
    EventType::StepCancel,
    EventType::LogWrite,
    EventType::WorkerError,
];

/// A durably instance for JavaScript (`Durably` in JavaScript), made by [`create_durably`].
/// `register({ ... })` returns another one sharing everything but its `jobs`, as upstream.
#[wasm_bindgen(js_name = Durably)]
pub struct JsDurably {
    durably: Durably,
    /// The handles of the jobs registered through this instance's chain, by key.
    jobs: Object,
    /// Every registered job by name: the definition registered (for upstream's "same object:
    /// same handle" rule) and its handle. Shared by all instances of the chain.
    registry: Rc<RefCell<HashMap<String, (JsValue, JsValue)>>>,
}

/// Creates an instance (`createDurably(options?)` in JavaScript). `options`, all optional:
/// `opfs` (a database name in the origin's private file system, kept across page loads; from
/// a dedicated worker only; without it the database is in memory), `pollingIntervalMs`,
/// `leaseMs`, `preserveSteps`. Nothing is migrated or started: call `init()`.
#[wasm_bindgen(js_name = createDurably)]
pub async fn create_durably(options: JsValue) -> Result<JsDurably, JsValue> {
    let options = object_option(&options, "createDurably options").map_err(js_error)?;
    let mut builder = Durably::builder();
    builder = match options.get("opfs") {
        None | Some(Value::Null) => builder.sqlite(":memory:"),
        Some(Value::String(name)) => builder.store(
            crate::SqliteStore::open_opfs(name)
                .await
                .map_err(js_error)?,
        ),
        Some(other) => {
            return Err(js_error(format!(
                "createDurably: opfs must be a database name (a string; got {other})"
            )));
        }
    };
    if let Some(ms) = whole_option(&options, "pollingIntervalMs").map_err(js_error)? {
        builder = builder.polling_interval(Duration::from_millis(ms));
    }
    if let Some(ms) = whole_option(&options, "leaseMs").map_err(js_error)? {
        builder = builder.lease_duration(Duration::from_millis(ms));
    }
    match options.get("preserveSteps") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(preserve)) => builder = builder.preserve_steps(*preserve),
        Some(other) => {
            return Err(js_error(format!(
                "createDurably: preserveSteps must be a boolean (got {other})"
            )));
        }
    }
    Ok(JsDurably {
        durably: builder.build().map_err(js_error)?,
        jobs: Object::new(),
        registry: Rc::default(),
    })
}

#[wasm_bindgen(js_class = Durably)]
impl JsDurably {
    /// Registers jobs, in either of two forms:
    /// - `register({ key: { name, run, retry? }, ... })`, upstream's: returns a new instance
    ///   (sharing this one's engine and database) whose `jobs` has a handle per key
    ///   (`trigger`, `batchTrigger`, `getRun`, `getRuns`). Registering the same definition
    ///   object again returns its handle; another definition under a registered name is an
    ///   error.
    /// - `register(name, run, options?)`: returns nothing.
    ///
    /// `run(step, input)` returns the output or a promise of it. `retry` (durably's addition,
    /// in the definition or in `options`): `{ maxAttempts, delayMs }` executes a failed run
    /// again, its completed steps replayed, up to `maxAttempts` attempts in all.
    #[wasm_bindgen(js_name = register)]
    pub fn register_js(
        &self,
        jobs_or_name: JsValue,
        run: JsValue,
        options: JsValue,
    ) -> Result<JsValue, JsValue> {
        if let Some(name) = jobs_or_name.as_string() {
            let run = run.dyn_into::<Function>().map_err(|_| {
                js_error(format!(
                    "register: the second argument must be the job function of \"{name}\""
                ))
            })?;
            self.register(name, run, options)?;
            return Ok(JsValue::UNDEFINED);
        }
        if !jobs_or_name.is_object() || jobs_or_name.is_function() {
            return Err(js_error(
                "register: pass an object of job definitions ({ key: { name, run } }) or a name and a function",
            ));
        }
        let jobs = Object::assign(&Object::new(), &self.jobs);
        let definitions = Object::entries(jobs_or_name.unchecked_ref());
        for entry in definitions.iter() {
            let entry: js_sys::Array = entry.unchecked_into();
            let key = entry.get(0);
            let definition = entry.get(1);
            let key_text = key.as_string().unwrap_or_default();
            let field = |name: &str| Reflect::get(&definition, &JsValue::from_str(name));
            let name = field("name").ok().and_then(|name| name.as_string());
            let run = field("run")
                .ok()
                .and_then(|run| run.dyn_into::<Function>().ok());
            let (Some(name), Some(run)) = (name, run) else {
                return Err(js_error(format!(
                    "register: {key_text} must be a job definition {{ name: string, run: function }}"
                )));
            };
            let existing = self.registry.borrow().get(&name).cloned();
            let handle = match existing {
                Some((registered, handle)) if Object::is(&registered, &definition) => handle,
                Some(_) => {
                    return Err(js_error(format!(
                        "Job \"{name}\" is already registered with a different definition"
                    )));
                }
                None => {
                    let options = Object::new();
                    if let Ok(retry) = field("retry")
                        && !retry.is_undefined()
                    {
                        Reflect::set(&options, &JsValue::from_str("retry"), &retry)?;
                    }
                    self.register(name.clone(), run, options.into())?;
                    // Registered under the definition (not its function), for the rule above.
                    let mut registry = self.registry.borrow_mut();
                    let entry = registry.get_mut(&name).ok_or_else(|| {
                        js_error(format!(
                            "register: job \"{name}\" vanished while registering"
                        ))
                    })?;
                    entry.0 = definition.clone();
                    entry.1.clone()
                }
            };
            Reflect::set(&jobs, &key, &handle)?;
        }
        Ok(JsDurably {
            durably: self.durably.clone(),
            jobs,
            registry: self.registry.clone(),
        }
        .into())
    }

    /// The handles of the jobs registered through `register({ ... })` on this instance's chain,
    /// by the keys given there.
    #[wasm_bindgen(getter)]
    pub fn jobs(&self) -> Object {
        self.jobs.clone()
    }

    /// Triggers a run of `jobName` with `input`; resolves to the run (upstream's JSON) plus its
    /// `disposition`. `options`: `idempotencyKey`, `concurrencyKey`, `labels` (strings),
    /// `coalesce` (`skip`, `queue` or `active`), `priority` (a whole number).
    pub fn trigger(&self, job_name: String, input: JsValue, options: JsValue) -> Promise {
        trigger(&self.durably, job_name, &input, &options)
    }

    /// Resolves to the run `id` (upstream's JSON) or `null`.
    #[wasm_bindgen(js_name = getRun)]
    pub fn get_run(&self, id: String) -> Promise {
        let durably = self.durably.clone();
        future_to_promise(async move {
            let run = durably.get_run(&id).await.map_err(js_error)?;
            to_js(&run)
        })
    }

    /// Resolves to the runs matching `filter` (newest first): `status` and `jobName` (one or
    /// an array), `labels`, `limit`, `offset`.
    #[wasm_bindgen(js_name = getRuns)]
    pub fn get_runs(&self, filter: JsValue) -> Promise {
        let durably = self.durably.clone();
        let filter = run_filter(&filter);
        future_to_promise(async move {
            let runs = durably.get_runs(&filter?).await.map_err(js_error)?;
            to_js(&runs)
        })
    }

    /// Cancels the run `id` (pending, leased or waiting); its job sees its steps reject.
    pub fn cancel(&self, id: String) -> Promise {
        let durably = self.durably.clone();
        future_to_promise(async move {
            durably.cancel(&id).await.map_err(js_error)?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Creates a new pending run with the input of the ended run `id`; resolves to it.
    pub fn retrigger(&self, id: String) -> Promise {
        let durably = self.durably.clone();
        future_to_promise(async move {
            let run = durably.retrigger(&id).await.map_err(js_error)?;
            to_js(&run)
        })
    }

    /// Deletes the run `id` with its steps and logs.
    #[wasm_bindgen(js_name = deleteRun)]
    pub fn delete_run(&self, id: String) -> Promise {
        let durably = self.durably.clone();
        future_to_promise(async move {
            durably.delete_run(&id).await.map_err(js_error)?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Calls `listener(event)` for every event of `eventType` (e.g. `run:complete`) with
    /// upstream's event JSON; returns the function that unsubscribes it.
    pub fn on(&self, event_type: String, listener: Function) -> Result<Function, JsValue> {
        let Some(kind) = EVENT_TYPES
            .into_iter()
            .find(|kind| kind.as_str() == event_type)
        else {
            return Err(js_error(format!(
                "on: unknown event type \"{event_type}\" (one of: {})",
                EVENT_TYPES.map(EventType::as_str).join(", ")
            )));
        };
        let listener = SendWrapper::new(listener);
        let unsubscribe = self.durably.on(kind, move |event| {
            // A listener that throws is the page's bug; it must not stop the others.
            if let Ok(event) = to_js(event) {
                let _ = listener.call1(&JsValue::UNDEFINED, &event);
            }
        });
        let unsubscribe = Cell::new(Some(unsubscribe));
        let closure = Closure::<dyn FnMut()>::new(move || {
            if let Some(unsubscribe) = unsubscribe.take() {
                unsubscribe.unsubscribe();
            }
        });
        Ok(closure.into_js_value().unchecked_into())
    }

    /// Creates or upgrades the database schema (idempotent).
    pub fn migrate(&self) -> Promise {
        let durably = self.durably.clone();
        future_to_promise(async move {
            durably.migrate().await.map_err(js_error)?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Migrates, then starts the worker.
    pub fn init(&self) -> Promise {
        let durably = self.durably.clone();
        future_to_promise(async move {
            durably.init().await.map_err(js_error)?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Starts the worker (a no-op when it runs).
    pub fn start(&self) {
        self.durably.start();
    }

    /// Stops the worker; resolves once its in-flight runs finished.
    pub fn stop(&self) -> Promise {
        let durably = self.durably.clone();
        future_to_promise(async move {
            durably.stop().await;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Whether the worker runs.
    #[wasm_bindgen(js_name = isRunning)]
    pub fn is_running(&self) -> bool {
        self.durably.is_running()
    }

    /// Processes runs on the caller's task until none is ready; resolves to how many.
    #[wasm_bindgen(js_name = processUntilIdle)]
    pub fn process_until_idle(&self) -> Promise {
        let durably = self.durably.clone();
        future_to_promise(async move {
            let processed = durably
                .process_until_idle(None, None)
                .await
                .map_err(js_error)?;
            Ok(JsValue::from(processed as f64))
        })
    }
}

impl JsDurably {
    /// Registers the job `name`, run by `run(step, input)` (a function returning the output or
    /// a promise of it), as `register(name, run, options)` does in JavaScript. Registering
    /// another function under a registered name is an error. `options` (optional, durably's
    /// addition): `retry: { maxAttempts, delayMs }` executes a failed run again, its completed
    /// steps replayed, up to `maxAttempts` attempts in all.
    pub fn register(&self, name: String, run: Function, options: JsValue) -> Result<(), JsValue> {
        let options = object_option(&options, "register options").map_err(js_error)?;
        let definition = JsValue::from(run.clone());
        let run = SendWrapper::new(run);
        let name_of_job = name.clone();
        let mut job = Job::<Value, Value>::new(name, move |step: StepContext, input: Value| {
            let run = (*run).clone();
            SendWrapper::new(async move { run_job(&run, step, input).await })
        });
        match options.get("retry") {
            None | Some(Value::Null) => {}
            Some(Value::Object(retry)) => {
                let attempts = whole_option(retry, "maxAttempts")
                    .map_err(js_error)?
                    .and_then(|attempts| u32::try_from(attempts).ok())
                    .filter(|attempts| *attempts >= 1)
                    .ok_or_else(|| {
                        js_error("register: retry.maxAttempts must be a whole number >= 1")
                    })?;
                let delay = whole_option(retry, "delayMs")
                    .map_err(js_error)?
                    .unwrap_or(0);
                job = job.retry(crate::RetryPolicy::constant(
                    attempts,
                    Duration::from_millis(delay),
                ));
            }
            Some(other) => {
                return Err(js_error(format!(
                    "register: retry must be an object {{ maxAttempts, delayMs? }} (got {other})"
                )));
            }
        }
        self.durably.register(job).map_err(js_error)?;
        let handle = JsJobHandle {
            durably: self.durably.clone(),
            name: name_of_job.clone(),
        };
        self.registry
            .borrow_mut()
            .insert(name_of_job, (definition, handle.into()));
        Ok(())
    }
}

/// A job's handle (`JobHandle` in JavaScript), from `register({ key: definition })`'s `jobs`.
#[wasm_bindgen(js_name = JobHandle)]
pub struct JsJobHandle {
    durably: Durably,
    name: String,
}

#[wasm_bindgen(js_class = JobHandle)]
impl JsJobHandle {
    /// The job's name.
    #[wasm_bindgen(getter)]
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// Triggers a run of this job, as the instance's `trigger(name, input, options)`.
    pub fn trigger(&self, input: JsValue, options: JsValue) -> Promise {
        trigger(&self.durably, self.name.clone(), &input, &options)
    }

    /// Triggers many runs of this job in one transaction; resolves to their results in order.
    /// Each item is an input, or `{ input, options }` (any object with an `input` key, as
    /// upstream). Nothing is stored when one is invalid or conflicts.
    #[wasm_bindgen(js_name = batchTrigger)]
    pub fn batch_trigger(&self, items: js_sys::Array) -> Promise {
        let durably = self.durably.clone();
        let name = self.name.clone();
        let items: Result<Vec<(Value, TriggerOptions)>, JsValue> = items
            .iter()
            .map(|item| {
                let wrapped = item.is_object()
                    && Reflect::has(&item, &JsValue::from_str("input")).unwrap_or(false);
                if !wrapped {
                    return Ok((
                        to_json(&item, "the input").map_err(js_error)?,
                        TriggerOptions::new(),
                    ));
                }
                let input = Reflect::get(&item, &JsValue::from_str("input"))?;
                let options = Reflect::get(&item, &JsValue::from_str("options"))?;
                Ok((
                    to_json(&input, "the input").map_err(js_error)?,
                    trigger_options(&options)?,
                ))
            })
            .collect();
        future_to_promise(async move {
            let results = durably
                .batch_trigger_json(&name, items?)
                .await
                .map_err(js_error)?;
            to_js(&results)
        })
    }

    /// Resolves to the run `id` (upstream's JSON), or `null` when there is none of this job.
    #[wasm_bindgen(js_name = getRun)]
    pub fn get_run(&self, id: String) -> Promise {
        let durably = self.durably.clone();
        let name = self.name.clone();
        future_to_promise(async move {
            let run = durably.get_run(&id).await.map_err(js_error)?;
            to_js(&run.filter(|run| run.job_name == name))
        })
    }

    /// Resolves to this job's runs matching `filter` (its `jobName`, if any, is replaced).
    #[wasm_bindgen(js_name = getRuns)]
    pub fn get_runs(&self, filter: JsValue) -> Promise {
        let durably = self.durably.clone();
        let filter = run_filter(&filter).map(|mut filter| {
            filter.job_names = vec![self.name.clone()];
            filter
        });
        future_to_promise(async move {
            let runs = durably.get_runs(&filter?).await.map_err(js_error)?;
            to_js(&runs)
        })
    }
}

/// The step context of a JavaScript job (`step`, its first argument).
#[wasm_bindgen(js_name = StepContext)]
pub struct JsStep {
    step: StepContext,
}

#[wasm_bindgen(js_class = StepContext)]
impl JsStep {
    /// The run's id.
    #[wasm_bindgen(getter, js_name = runId)]
    pub fn run_id(&self) -> String {
        self.step.run_id().to_owned()
    }

    /// Runs the step `name`: `fn()` (returning the output or a promise of it) on the first
    /// execution, its stored output on a replay. Resolves to the output; rejects with the
    /// step's error.
    pub fn run(&self, name: String, run: Function) -> Promise {
        let step = self.step.clone();
        future_to_promise(async move {
            let output: Value = step
                .run(&name, |_token| async move {
                    let returned = run
                        .call0(&JsValue::UNDEFINED)
                        .map_err(|thrown| describe(&thrown))?;
                    let output = JsFuture::from(Promise::resolve(&returned))
                        .await
                        .map_err(|thrown| describe(&thrown))?;
                    Ok(to_json(&output, "the step's output")?)
                })
                .await
                .map_err(js_error)?;
            to_js(&output)
        })
    }

    /// Reports progress (`current` of `total`, with a message), stored on the run.
    pub fn progress(&self, current: f64, total: Option<f64>, message: Option<String>) -> Promise {
        let step = self.step.clone();
        future_to_promise(async move {
            let current = count("progress: current", current)?;
            let total = total
                .map(|total| count("progress: total", total))
                .transpose()?;
            step.progress(current, total, message.as_deref())
                .await
                .map_err(js_error)?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The run's log (`step.log.info(message, data?)`, `warn`, `error`).
    #[wasm_bindgen(getter)]
    pub fn log(&self) -> JsStepLog {
        JsStepLog {
            step: self.step.clone(),
        }
    }
}

/// `step.log` of a JavaScript job.
#[wasm_bindgen(js_name = StepLog)]
pub struct JsStepLog {
    step: StepContext,
}

#[wasm_bindgen(js_class = StepLog)]
impl JsStepLog {
    /// Writes an `info` entry, `data` any JSON value.
    pub fn info(&self, message: String, data: JsValue) -> Promise {
        self.write(crate::run::LogLevel::Info, message, data)
    }

    /// Writes a `warn` entry.
    pub fn warn(&self, message: String, data: JsValue) -> Promise {
        self.write(crate::run::LogLevel::Warn, message, data)
    }

    /// Writes an `error` entry.
    pub fn error(&self, message: String, data: JsValue) -> Promise {
        self.write(crate::run::LogLevel::Error, message, data)
    }
}

impl JsStepLog {
    fn write(&self, level: crate::run::LogLevel, message: String, data: JsValue) -> Promise {
        let step = self.step.clone();
        let data = to_json(&data, "the log data");
        future_to_promise(async move {
            let data = match data.map_err(js_error)? {
                Value::Null => None,
                data => Some(data),
            };
            step.log()
                .write(level, message, data)
                .await
                .map_err(js_error)?;
            Ok(JsValue::UNDEFINED)
        })
    }
}

/// `trigger` of an instance or a job handle.
fn trigger(durably: &Durably, job_name: String, input: &JsValue, options: &JsValue) -> Promise {
    let durably = durably.clone();
    let input = to_json(input, "the input");
    let options = trigger_options(options);
    future_to_promise(async move {
        let result = durably
            .trigger_json(&job_name, input.map_err(js_error)?, options?)
            .await
            .map_err(js_error)?;
        to_js(&result)
    })
}

/// One execution of a JavaScript job: `run(step, input)`, its result awaited.
async fn run_job(run: &Function, step: StepContext, input: Value) -> crate::Result<Value> {
    let input = to_js(&input).map_err(|error| Error::job(describe(&error)))?;
    let step = JsValue::from(JsStep { step });
    // A rejection after the run had to stop (cancelled, lease lost) is an ordinary error here:
    // the engine checks the run's state first and records it as such.
    let thrown = |thrown: JsValue| Error::job(describe(&thrown));
    let returned = run
        .call2(&JsValue::UNDEFINED, &step, &input)
        .map_err(thrown)?;
    let output = JsFuture::from(Promise::resolve(&returned))
        .await
        .map_err(thrown)?;
    to_json(&output, "the job's output")
}

/// A JavaScript value as JSON (`undefined` is `null`).
fn to_json(value: &JsValue, what: &str) -> crate::Result<Value> {
    if value.is_undefined() {
        return Ok(Value::Null);
    }
    let text = JSON::stringify(value)
        .map_err(|thrown| Error::Validation(format!("{what} is not JSON: {}", describe(&thrown))))?
        .as_string()
        .ok_or_else(|| {
            Error::Validation(format!(
                "{what} is not JSON (a function or symbol has no JSON form)"
            ))
        })?;
    serde_json::from_str(&text)
        .map_err(|error| Error::Validation(format!("{what} is not JSON: {error}")))
}

/// A serializable value as a JavaScript value (through JSON).
fn to_js(value: &impl serde::Serialize) -> Result<JsValue, JsValue> {
    let text = serde_json::to_string(value).map_err(js_error)?;
    JSON::parse(&text)
}

/// A JavaScript error with `message`.
fn js_error(message: impl std::fmt::Display) -> JsValue {
    JsError::new(&message.to_string()).into()
}

/// The message of a thrown JavaScript value: an `Error`'s message, a string, or its JSON.
fn describe(thrown: &JsValue) -> String {
    if let Some(error) = thrown.dyn_ref::<js_sys::Error>() {
        return String::from(error.message());
    }
    if let Some(text) = thrown.as_string() {
        return text;
    }
    JSON::stringify(thrown)
        .ok()
        .and_then(|text| text.as_string())
        .unwrap_or_else(|| "a JavaScript value that is not an Error".to_owned())
}

/// An options object as a JSON map (`undefined` and `null` are empty).
fn object_option(value: &JsValue, what: &str) -> crate::Result<Map<String, Value>> {
    match to_json(value, what)? {
        Value::Null => Ok(Map::new()),
        Value::Object(map) => Ok(map),
        other => Err(Error::Validation(format!(
            "{what} must be an object (got {other})"
        ))),
    }
}

/// A non-negative whole number under `key`.
fn whole_option(options: &Map<String, Value>, key: &str) -> crate::Result<Option<u64>> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            Error::Validation(format!("{key} must be a whole number >= 0 (got {value})"))
        }),
    }
}

/// A non-negative whole number from JavaScript.
fn count(what: &str, value: f64) -> Result<u64, JsValue> {
    if value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= u64::MAX as f64 {
        Ok(value as u64)
    } else {
        Err(js_error(format!(
            "{what} must be a whole number >= 0 (got {value})"
        )))
    }
}

/// An optional string under `key`.
fn string_option(options: &Map<String, Value>, key: &str) -> Result<Option<String>, JsValue> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(js_error(format!("{key} must be a string (got {other})"))),
    }
}

/// Labels under `key`: an object of strings.
fn labels_option(options: &Map<String, Value>, key: &str) -> Result<Option<Labels>, JsValue> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => {
            let mut labels = Labels::new();
            for (name, value) in map {
                let Value::String(value) = value else {
                    return Err(js_error(format!(
                        "{key}: the value of label \"{name}\" must be a string (got {value})"
                    )));
                };
                labels.insert(name.clone(), value.clone());
            }
            Ok(Some(labels))
        }
        Some(other) => Err(js_error(format!(
            "{key} must be an object of string values (got {other})"
        ))),
    }
}

/// One string or an array of strings under `key`.
fn strings_option(options: &Map<String, Value>, key: &str) -> Result<Vec<String>, JsValue> {
    let invalid = |value: &Value| {
        js_error(format!(
            "{key} must be a string or an array of strings (got {value})"
        ))
    };
    match options.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![text.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(item))
            })
            .collect(),
        Some(other) => Err(invalid(other)),
    }
}

/// `trigger`'s options.
fn trigger_options(options: &JsValue) -> Result<TriggerOptions, JsValue> {
    let options = object_option(options, "trigger options").map_err(js_error)?;
    let mut trigger = TriggerOptions::new();
    trigger.idempotency_key = string_option(&options, "idempotencyKey")?;
    trigger.concurrency_key = string_option(&options, "concurrencyKey")?;
    trigger.labels = labels_option(&options, "labels")?;
    trigger.coalesce = string_option(&options, "coalesce")?
        .map(|coalesce| coalesce.parse::<Coalesce>().map_err(js_error))
        .transpose()?;
    trigger.priority = match options.get("priority") {
        None | Some(Value::Null) => 0,
        Some(value) => value
            .as_i64()
            .and_then(|priority| i32::try_from(priority).ok())
            .ok_or_else(|| js_error(format!("priority must be a whole number (got {value})")))?,
    };
    Ok(trigger)
}

/// `getRuns`' filter.
fn run_filter(filter: &JsValue) -> Result<RunFilter, JsValue> {
    let filter = object_option(filter, "getRuns filter").map_err(js_error)?;
    let mut runs = RunFilter::new();
    runs.statuses = strings_option(&filter, "status")?
        .iter()
        .map(|status| status.parse::<RunStatus>().map_err(js_error))
        .collect::<Result<_, _>>()?;
    runs.job_names = strings_option(&filter, "jobName")?;
    runs.labels = labels_option(&filter, "labels")?.unwrap_or_default();
    for (key, slot) in [("limit", &mut runs.limit), ("offset", &mut runs.offset)] {
        *slot = match filter.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.as_u64().ok_or_else(|| {
                js_error(format!("{key} must be a whole number >= 0 (got {value})"))
            })?),
        };
    }
    Ok(runs)
}
