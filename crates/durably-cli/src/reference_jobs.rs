//! The reference jobs of `shared/spec/demo-jobs.md`: `echo`, `steps` and `sleep`.

use std::time::Duration;

use durably::{CancellationToken, Durably, Job, Result, StepContext};
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
async fn sleep_unless_aborted(
    token: CancellationToken,
    ms: u64,
) -> std::result::Result<(), String> {
    if ms == 0 {
        return Ok(());
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
        _ = token.cancelled() => Err("aborted".to_owned()),
    }
}

/// `echo`: one step returning `value`; output `{ "value": value }`.
pub fn echo() -> Job<EchoInput, Value> {
    Job::new("echo", |step: StepContext, input: EchoInput| async move {
        let value = step
            .run("echo", |_| async move { Ok::<_, String>(input.value) })
            .await?;
        Ok::<_, durably::Error>(json!({ "value": value }))
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
                        return Err(format!("failed at step {i}"));
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
        Ok::<_, durably::Error>(json!({ "sum": sum }))
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
        Ok::<_, durably::Error>(json!({ "slept": ms }))
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

/// Registers the three reference jobs.
pub fn register_all(durably: &Durably) -> Result<()> {
    durably.register(echo())?;
    durably.register(steps())?;
    durably.register(sleep())?;
    Ok(())
}
