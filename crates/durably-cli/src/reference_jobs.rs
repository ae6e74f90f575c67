//! The reference jobs of `shared/spec/demo-jobs.md`: `echo`, `steps` and `sleep`, and those
//! of the capabilities beyond upstream 0.15 that have landed: `approval` (durable waits),
//! `fanout` (parallel steps), `flaky` (step retries), `nap` (durable sleep) and `parent`
//! (child runs).

use std::time::Duration;

use durably::{
    CancellationToken, Durably, Job, JobHandle, NewWait, Result, RetryPolicy, StepContext,
    StepOptions, WaitResult,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Input of `echo`.
#[derive(Serialize, Deserialize, Debug)]
pub struct EchoInput {
    /// Any JSON value (required).
    pub value: Value,
}

/// Input of `steps`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct StepsInput {
    /// Number of steps, 1..=1000.
    pub count: u32,
    /// Fail at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_at: Option<i64>,
    /// Milliseconds each step sleeps, 0..=60000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ms: Option<u64>,
}

/// Input of `sleep`.
#[derive(Serialize, Deserialize, Debug)]
pub struct SleepInput {
    /// Milliseconds to sleep, 0..=600000.
    pub ms: u64,
}

/// Waits `ms`, or fails early when the run's token fires (cancel or lease loss).
async fn sleep_unless_aborted(token: CancellationToken, ms: u64) -> durably::StepResult<()> {
    if ms == 0 {
        return Ok(());
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
        _ = token.cancelled() => Err("aborted".into()),
    }
}

/// `echo`: one step returning `value`; output `{ "value": value }`.
pub fn echo() -> Job<EchoInput, Value> {
    Job::new("echo", |step: StepContext, input: EchoInput| async move {
        let value = step
            .run("echo", |_| async move { Ok(input.value) })
            .await?;
        Ok(json!({ "value": value }))
    })
    .input_schema(json!({
        "type": "object",
        "required": ["value"],
        "properties": {
            "value": { "description": "Any JSON value, returned as the output", "examples": ["hello"] }
        }
    }))
}

/// `steps`: `count` steps `step-{i}`, each sleeping `stepMs`, failing at `failAt`, reporting
/// progress and a log line; output `{ "sum": 1 + … + count }`.
pub fn steps() -> Job<StepsInput, Value> {
    Job::new("steps", |step: StepContext, input: StepsInput| async move {
        let count = u64::from(input.count);
        let step_ms = input.step_ms.unwrap_or(0);
        let mut sum: u64 = 0;
        for i in 1..=count {
            let value = step
                .run(&format!("step-{i}"), |token| async move {
                    sleep_unless_aborted(token, step_ms).await?;
                    if input.fail_at == Some(i as i64) {
                        return Err(format!("failed at step {i}").into());
                    }
                    Ok(i)
                })
                .await?;
            sum += value;
            step.progress(i, Some(count), Some(&format!("step {i}/{count}")))
                .await?;
            step.log()
                .info(format!("step {i} done"), json!({ "i": i }))
                .await?;
        }
        Ok(json!({ "sum": sum }))
    })
    .input_schema(json!({
        "type": "object",
        "required": ["count"],
        "properties": {
            "count": { "type": "integer", "minimum": 1, "maximum": 1000, "description": "Number of steps", "examples": [5] },
            "stepMs": { "type": ["integer", "null"], "minimum": 0, "maximum": 60000, "description": "Milliseconds each step sleeps (null: 0)", "examples": [500] },
            "failAt": { "type": ["integer", "null"], "minimum": i64::MIN, "maximum": i64::MAX, "description": "Fail at this step (optional; null: never)" }
        }
    }))
    .validate(|input| {
        if !(1..=1000).contains(&input.count) {
            return Err(format!(
                "count must be between 1 and 1000 (got {})",
                input.count
            ));
        }
        match input.step_ms {
            Some(ms) if ms > 60_000 => {
                Err(format!("stepMs must be between 0 and 60000 (got {ms})"))
            }
            _ => Ok(()),
        }
    })
}

/// `sleep`: one step `sleep` waiting `ms` (aborted by cancel); output `{ "slept": ms }`.
pub fn sleep() -> Job<SleepInput, Value> {
    Job::new("sleep", |step: StepContext, input: SleepInput| async move {
        let ms = input.ms;
        step.run("sleep", |token| async move {
            sleep_unless_aborted(token, ms).await
        })
        .await?;
        Ok(json!({ "slept": ms }))
    })
    .input_schema(json!({
        "type": "object",
        "required": ["ms"],
        "properties": {
            "ms": { "type": "integer", "minimum": 0, "maximum": 600000, "description": "Milliseconds to sleep", "examples": [30000] }
        }
    }))
    .validate(|input| {
        if input.ms > 600_000 {
            Err(format!(
                "ms must be between 0 and 600000 (got {})",
                input.ms
            ))
        } else {
            Ok(())
        }
    })
}

/// Input of `approval`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalInput {
    /// How long the approval may take, 1..=86400000 ms (none: no deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// What a signal to `approval`'s wait carries.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Approval {
    approved: bool,
    #[serde(default)]
    by: Option<String>,
}

/// `approval`: prepares the wait `approval` (with `timeoutMs` when given) and waits for it
/// without holding a worker; output `{ "approved", "by" }` from the signal's payload, or
/// `{ "timedOut": true }`. Another payload fails the run with `Invalid approval payload`.
pub fn approval() -> Job<ApprovalInput, Value> {
    Job::new("approval", |step: StepContext, input: ApprovalInput| async move {
        let mut wait = NewWait::new("approval");
        if let Some(timeout) = input.timeout_ms {
            wait = wait.timeout_ms(timeout);
        }
        let wait = step.prepare_wait(wait).await?;
        match step.wait_for(&wait).await? {
            WaitResult::Signal { payload } => match serde_json::from_value::<Approval>(payload) {
                Ok(approval) => Ok(json!({ "approved": approval.approved, "by": approval.by })),
                Err(_) => Err(durably::Error::Job("Invalid approval payload".into())),
            },
            WaitResult::Timeout => Ok(json!({ "timedOut": true })),
            _ => Err(durably::Error::Job("Invalid approval payload".into())),
        }
    })
    .input_schema(json!({
        "type": "object",
        "properties": {
            "timeoutMs": { "type": ["integer", "null"], "minimum": 1, "maximum": 86400000, "description": "Milliseconds before the approval times out (null: never)", "examples": [60000] }
        }
    }))
    .validate(|input| match input.timeout_ms {
        Some(ms) if !(1..=86_400_000).contains(&ms) => Err(format!(
            "timeoutMs must be between 1 and 86400000 (got {ms})"
        )),
        _ => Ok(()),
    })
}

/// Input of `fanout`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct FanoutInput {
    /// Parallel branches, 1..=50.
    pub branches: u32,
    /// Fail the branch with this number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_at: Option<i64>,
    /// Milliseconds each branch sleeps, 0..=60000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ms: Option<u64>,
}

/// `fanout`: steps `branch-{i}` for i in 1..=branches, all at once (one `step.all`), each
/// sleeping `stepMs` and failing when i == `failAt`; output `{ "sum": 1 + … + branches }`.
pub fn fanout() -> Job<FanoutInput, Value> {
    Job::new("fanout", |step: StepContext, input: FanoutInput| async move {
        let step_ms = input.step_ms.unwrap_or(0);
        let fail_at = input.fail_at;
        let branches: Vec<_> = (1..=u64::from(input.branches))
            .map(|i| {
                let step = step.clone();
                async move {
                    step.run(&format!("branch-{i}"), |token| async move {
                        sleep_unless_aborted(token, step_ms).await?;
                        if fail_at == Some(i as i64) {
                            return Err(format!("branch {i} failed").into());
                        }
                        Ok(i)
                    })
                    .await
                }
            })
            .collect();
        let values = step.all(branches).await?;
        Ok(json!({ "sum": values.iter().sum::<u64>() }))
    })
    .input_schema(json!({
        "type": "object",
        "required": ["branches"],
        "properties": {
            "branches": { "type": "integer", "minimum": 1, "maximum": 50, "description": "Parallel branches", "examples": [5] },
            "stepMs": { "type": ["integer", "null"], "minimum": 0, "maximum": 60000, "description": "Milliseconds each branch sleeps (null: 0)", "examples": [500] },
            "failAt": { "type": ["integer", "null"], "minimum": i64::MIN, "maximum": i64::MAX, "description": "Fail this branch (optional; null: never)" }
        }
    }))
    .validate(|input| {
        if !(1..=50).contains(&input.branches) {
            return Err(format!(
                "branches must be between 1 and 50 (got {})",
                input.branches
            ));
        }
        match input.step_ms {
            Some(ms) if ms > 60_000 => {
                Err(format!("stepMs must be between 0 and 60000 (got {ms})"))
            }
            _ => Ok(()),
        }
    })
}

/// Input of `flaky`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct FlakyInput {
    /// Attempts that fail, 0..=20.
    pub fail_times: u32,
    /// Attempts in all, 1..=20.
    pub max_attempts: u32,
    /// Milliseconds between attempts, 0..=3600000 (none: 0). Over 10 s the run waits
    /// suspended, without a worker slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

/// `flaky`: one step `flaky` retried up to `maxAttempts` times with a constant delay of
/// `delayMs`; attempt n fails with `attempt {n} failed` while n <= `failTimes`, else returns
/// n. Output `{ "attempts": n }`.
pub fn flaky() -> Job<FlakyInput, Value> {
    Job::new("flaky", |step: StepContext, input: FlakyInput| async move {
        let delay = Duration::from_millis(input.delay_ms.unwrap_or(0));
        let policy = RetryPolicy::constant(input.max_attempts, delay);
        let fail_times = input.fail_times;
        let attempts = step
            .run_retrying("flaky", StepOptions::new().retry(policy), |attempt| async move {
                let n = attempt.number();
                if n <= fail_times {
                    return Err(format!("attempt {n} failed").into());
                }
                Ok(n)
            })
            .await?;
        Ok(json!({ "attempts": attempts }))
    })
    .input_schema(json!({
        "type": "object",
        "required": ["failTimes", "maxAttempts"],
        "properties": {
            "failTimes": { "type": "integer", "minimum": 0, "maximum": 20, "description": "Attempts that fail", "examples": [2] },
            "maxAttempts": { "type": "integer", "minimum": 1, "maximum": 20, "description": "Attempts in all", "examples": [3] },
            "delayMs": { "type": ["integer", "null"], "minimum": 0, "maximum": 3600000, "description": "Milliseconds between attempts (null: 0; over 10 s the run waits without a worker slot)", "examples": [1000] }
        }
    }))
    .validate(|input| {
        if input.fail_times > 20 {
            return Err(format!(
                "failTimes must be between 0 and 20 (got {})",
                input.fail_times
            ));
        }
        if !(1..=20).contains(&input.max_attempts) {
            return Err(format!(
                "maxAttempts must be between 1 and 20 (got {})",
                input.max_attempts
            ));
        }
        match input.delay_ms {
            Some(ms) if ms > 3_600_000 => Err(format!(
                "delayMs must be between 0 and 3600000 (got {ms})"
            )),
            _ => Ok(()),
        }
    })
}

/// Input of `nap`.
#[derive(Serialize, Deserialize, Debug)]
pub struct NapInput {
    /// Milliseconds to sleep durably, 0..=86400000.
    pub ms: u64,
}

/// `nap`: one durable sleep named `nap` of `ms` (the wait `sleep:nap`); while asleep the run is
/// `waiting` and holds no worker slot; output `{ "slept": ms }`.
pub fn nap() -> Job<NapInput, Value> {
    Job::new("nap", |step: StepContext, input: NapInput| async move {
        step.sleep("nap", Duration::from_millis(input.ms)).await?;
        Ok(json!({ "slept": input.ms }))
    })
    .input_schema(json!({
        "type": "object",
        "required": ["ms"],
        "properties": {
            "ms": { "type": "integer", "minimum": 0, "maximum": 86400000, "description": "Milliseconds to sleep durably (the run waits without a worker slot)", "examples": [60000] }
        }
    }))
    .validate(|input| {
        if input.ms > 86_400_000 {
            Err(format!(
                "ms must be between 0 and 86400000 (got {})",
                input.ms
            ))
        } else {
            Ok(())
        }
    })
}

/// Input of `parent`.
#[derive(Serialize, Deserialize, Debug)]
pub struct ParentInput {
    /// Child runs to invoke, 1..=1000.
    pub children: u32,
}

/// `parent`: invokes `children` child runs of `echo` with `{ "value": i }` for i in
/// 1..=children (one `step.invoke_all` named `echo`) and waits for all of them without holding
/// a slot; output `{ "sum": 1 + … + children }`.
pub fn parent(echo: JobHandle<EchoInput, Value>) -> Job<ParentInput, Value> {
    Job::new("parent", move |step: StepContext, input: ParentInput| {
        let echo = echo.clone();
        async move {
            let inputs = (1..=u64::from(input.children))
                .map(|i| EchoInput { value: json!(i) })
                .collect();
            let outputs = step.invoke_all("echo", &echo, inputs).await?;
            let sum: u64 = outputs.iter().filter_map(|o| o["value"].as_u64()).sum();
            Ok(json!({ "sum": sum }))
        }
    })
    .input_schema(json!({
        "type": "object",
        "required": ["children"],
        "properties": {
            "children": { "type": "integer", "minimum": 1, "maximum": 1000, "description": "Child runs of echo to invoke and wait for (the parent waits without a worker slot)", "examples": [10] }
        }
    }))
    .validate(|input| {
        if (1..=1000).contains(&input.children) {
            Ok(())
        } else {
            Err(format!(
                "children must be between 1 and 1000 (got {})",
                input.children
            ))
        }
    })
}

/// Registers the reference jobs.
pub fn register_all(durably: &Durably) -> Result<()> {
    let echo = durably.register(echo())?;
    durably.register(parent(echo))?;
    durably.register(steps())?;
    durably.register(sleep())?;
    durably.register(approval())?;
    durably.register(fanout())?;
    durably.register(flaky())?;
    durably.register(nap())?;
    Ok(())
}
