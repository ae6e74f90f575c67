//! Values, statements and batches (with their step conditions).

use super::*;

/// A value bound to a statement or read from a row.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit integer (a decimal string on the wire).
    Integer(i64),
    /// A finite double.
    Float(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes (base64 on the wire).
    Blob(Vec<u8>),
}

impl Value {
    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The text, if this is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Value::Integer(value)
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Self {
        Value::Float(value)
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Self {
        Value::Text(value.to_owned())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Self {
        Value::Text(value)
    }
}

impl From<Vec<u8>> for Value {
    fn from(value: Vec<u8>) -> Self {
        Value::Blob(value)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}

/// Blobs are sent padded (what sqld writes); padded and unpadded base64 are read (tursodb
/// writes it unpadded).
pub(super) const BASE64_OUT: base64::engine::GeneralPurpose =
    base64::engine::general_purpose::STANDARD;
pub(super) const BASE64_IN: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        match self {
            Value::Null => map.serialize_entry("type", "null")?,
            Value::Integer(i) => {
                map.serialize_entry("type", "integer")?;
                map.serialize_entry("value", &i.to_string())?;
            }
            Value::Float(f) => {
                if !f.is_finite() {
                    return Err(S::Error::custom(format!(
                        "the float {f} has no Hrana encoding (NaN and infinities are not JSON numbers)"
                    )));
                }
                map.serialize_entry("type", "float")?;
                map.serialize_entry("value", f)?;
            }
            Value::Text(s) => {
                map.serialize_entry("type", "text")?;
                map.serialize_entry("value", s)?;
            }
            Value::Blob(b) => {
                map.serialize_entry("type", "blob")?;
                map.serialize_entry("base64", &BASE64_OUT.encode(b))?;
            }
        }
        map.end()
    }
}

/// A value as the wire has it, before it is checked.
#[derive(Deserialize)]
pub(super) struct WireValue {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    value: Option<serde_json::Value>,
    #[serde(default)]
    base64: Option<String>,
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let wire = WireValue::deserialize(deserializer)?;
        let missing = || D::Error::custom(format!("a {} value without its value", wire.kind));
        Ok(match wire.kind.as_str() {
            "null" => Value::Null,
            "integer" => match wire.value.ok_or_else(missing)? {
                serde_json::Value::String(s) => Value::Integer(
                    s.parse()
                        .map_err(|_| D::Error::custom(format!("bad integer {s:?}")))?,
                ),
                serde_json::Value::Number(n) => Value::Integer(
                    n.as_i64()
                        .ok_or_else(|| D::Error::custom(format!("bad integer {n}")))?,
                ),
                other => return Err(D::Error::custom(format!("bad integer {other}"))),
            },
            "float" => match wire.value.ok_or_else(missing)? {
                serde_json::Value::Number(n) => Value::Float(
                    n.as_f64()
                        .ok_or_else(|| D::Error::custom(format!("bad float {n}")))?,
                ),
                other => return Err(D::Error::custom(format!("bad float {other}"))),
            },
            "text" => match wire.value.ok_or_else(missing)? {
                serde_json::Value::String(s) => Value::Text(s),
                other => return Err(D::Error::custom(format!("bad text {other}"))),
            },
            "blob" => {
                let encoded = wire.base64.ok_or_else(missing)?;
                Value::Blob(
                    BASE64_IN
                        .decode(&encoded)
                        .map_err(|e| D::Error::custom(format!("bad base64 blob: {e}")))?,
                )
            }
            other => return Err(D::Error::custom(format!("unknown value type {other:?}"))),
        })
    }
}

/// One SQL statement with its positional arguments (`?` or `?N`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Statement {
    /// The SQL text: one statement.
    pub sql: String,
    /// The arguments, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Value>,
    /// Whether the server should return the rows (default `true`).
    pub want_rows: bool,
}

impl Statement {
    /// A statement without arguments.
    pub fn new(sql: impl Into<String>) -> Self {
        Statement {
            sql: sql.into(),
            args: Vec::new(),
            want_rows: true,
        }
    }

    /// A statement with arguments.
    pub fn with_args(sql: impl Into<String>, args: impl IntoIterator<Item = Value>) -> Self {
        Statement {
            args: args.into_iter().collect(),
            ..Statement::new(sql)
        }
    }

    /// Adds the next argument.
    pub fn arg(mut self, value: impl Into<Value>) -> Self {
        self.args.push(value.into());
        self
    }
}

impl From<&str> for Statement {
    fn from(sql: &str) -> Self {
        Statement::new(sql)
    }
}

/// When a batch step runs, from the outcome of earlier steps (indexes into the batch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Condition {
    /// The step ran and succeeded.
    Ok {
        /// The earlier step.
        step: usize,
    },
    /// The step ran and failed.
    Error {
        /// The earlier step.
        step: usize,
    },
    /// The condition does not hold (a skipped step is neither `Ok` nor `Error`).
    Not {
        /// The negated condition.
        cond: Box<Condition>,
    },
    /// All conditions hold.
    And {
        /// The conditions.
        conds: Vec<Condition>,
    },
    /// Any condition holds.
    Or {
        /// The conditions.
        conds: Vec<Condition>,
    },
    /// The connection is in autocommit mode (no transaction open).
    IsAutocommit,
}

impl Condition {
    /// Step `step` succeeded.
    pub fn ok(step: usize) -> Self {
        Condition::Ok { step }
    }

    /// Step `step` failed.
    pub fn error(step: usize) -> Self {
        Condition::Error { step }
    }

    /// The negation of `cond`.
    #[allow(clippy::should_implement_trait)]
    pub fn not(cond: Condition) -> Self {
        Condition::Not {
            cond: Box::new(cond),
        }
    }

    /// All of `conds`.
    pub fn and(conds: impl IntoIterator<Item = Condition>) -> Self {
        Condition::And {
            conds: conds.into_iter().collect(),
        }
    }

    /// Any of `conds`.
    pub fn or(conds: impl IntoIterator<Item = Condition>) -> Self {
        Condition::Or {
            conds: conds.into_iter().collect(),
        }
    }
}

/// One step of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchStep {
    /// Runs the step only when this holds (always when `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
    /// The statement.
    pub stmt: Statement,
}

/// Statements run in order in one request, each under an optional [`Condition`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Batch {
    /// The steps.
    pub steps: Vec<BatchStep>,
    /// The `ROLLBACK` step of a [`Batch::transaction`], whose condition depends on the
    /// negotiated version ([`HranaVersion`]).
    #[serde(skip)]
    pub(super) rollback: Option<usize>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Appends a step; returns its index for the conditions of later steps.
    pub fn step(&mut self, condition: Option<Condition>, stmt: impl Into<Statement>) -> usize {
        self.steps.push(BatchStep {
            condition,
            stmt: stmt.into(),
        });
        self.steps.len() - 1
    }

    /// `statements` in one transaction, all or nothing: `BEGIN IMMEDIATE`, each statement only
    /// if the one before succeeded, `COMMIT` if the last did, and `ROLLBACK` if `BEGIN`
    /// succeeded, `COMMIT` did not run or failed, and the transaction is still open. Read the
    /// outcome with [`BatchResult::transaction`]. On Hrana 2, which has no `is_autocommit`
    /// condition, the `ROLLBACK` runs whenever `BEGIN` succeeded and `COMMIT` did not (and
    /// then fails harmlessly when the server already rolled back). (The `ROLLBACK` depends on this batch's own
    /// `BEGIN`: a server that shares one connection between requests, as `tursodb` does, must
    /// not see it roll back a transaction it did not open; and on the transaction still being
    /// open: `tursodb` already rolls it back when a statement fails while evaluating, e.g. on
    /// malformed JSON or an integer overflow.)
    pub fn transaction(statements: impl IntoIterator<Item = Statement>) -> Self {
        let mut batch = Batch::new();
        let begin = batch.step(None, "BEGIN IMMEDIATE");
        let mut last = begin;
        for stmt in statements {
            last = batch.step(Some(Condition::ok(last)), stmt);
        }
        let commit = batch.step(Some(Condition::ok(last)), "COMMIT");
        let rollback = batch.step(
            Some(Condition::and([
                Condition::ok(begin),
                Condition::not(Condition::ok(commit)),
                Condition::not(Condition::IsAutocommit),
            ])),
            "ROLLBACK",
        );
        batch.rollback = Some(rollback);
        batch
    }
}
