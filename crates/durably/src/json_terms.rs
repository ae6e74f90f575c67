//! Deserialization errors in the terms of the JSON a user sent: the field path and the
//! expected shape (`count: expected a non-negative integer, got "x"`), never a Rust type name
//! (`expected u32`, `struct EchoInput`).

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Deserializes `value` as `T`; the error names the field path and says what was expected
/// and what came, in JSON terms.
pub(crate) fn from_json<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let message = in_json_terms(&error.into_inner().to_string());
        match path.as_str() {
            "." => message,
            _ => format!("{path}: {message}"),
        }
    })
}

/// serde's message (`invalid type: string "x", expected u32`) in JSON terms.
fn in_json_terms(message: &str) -> String {
    let unexpected_expected = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|rest| rest.rsplit_once(", expected "));
    if let Some((got, expected)) = unexpected_expected {
        return format!(
            "expected {}, got {}",
            expected_shape(expected),
            got_value(got)
        );
    }
    // An array given for a struct or a tuple of another size.
    if let Some((length, expected)) = message
        .strip_prefix("invalid length ")
        .and_then(|rest| rest.split_once(", expected "))
    {
        let items = |n: &str| match n {
            "1" => "an array of 1 item".to_owned(),
            n => format!("an array of {n} items"),
        };
        let size = expected
            .strip_prefix("a tuple of size ")
            .or_else(|| expected.strip_prefix("an array of length "))
            .or_else(|| {
                let (_, n) = expected.strip_suffix(" elements")?.rsplit_once(' ')?;
                Some(n)
            })
            .filter(|n| n.parse::<usize>().is_ok());
        let shape = match size {
            _ if expected.starts_with("struct ") => "an object".to_owned(),
            Some(n) => items(n),
            None => expected_shape(expected),
        };
        return format!("expected {shape}, got {}", items(length));
    }
    // `missing field `count``, `unknown field `x`, expected one of `a`, `b``,
    // `unknown variant `x`, expected ...`: JSON's quotes instead of Rust's backticks.
    quote_backticks(message)
}

/// What serde expected (a Rust type or a visitor's words) as a JSON shape.
fn expected_shape(expected: &str) -> String {
    let shape = match expected {
        "u8" => "an integer from 0 to 255",
        "u16" => "an integer from 0 to 65535",
        "u32" => "an integer from 0 to 4294967295",
        "u64" | "u128" | "usize" => "a non-negative integer",
        "i8" => "an integer from -128 to 127",
        "i16" => "an integer from -32768 to 32767",
        "i32" => "an integer from -2147483648 to 2147483647",
        "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "true or false",
        "a string" | "a borrowed string" | "a string or bytes" => "a string",
        "a character" | "char" => "a string of one character",
        "a sequence" | "a vector" | "a tuple" => "an array",
        "a map" => "an object",
        "unit" => "null",
        other => {
            if other.starts_with("struct ") || other.starts_with("a map") {
                "an object"
            } else if other.starts_with("tuple struct ")
                || other.starts_with("a tuple of size")
                || other.starts_with("an array")
            {
                "an array"
            } else if other.starts_with("enum ") || other.starts_with("variant identifier") {
                "one of the allowed values"
            } else if other.starts_with("unit struct ") {
                "null"
            } else {
                return quote_backticks(other);
            }
        }
    };
    shape.to_owned()
}

/// What serde got (its `Unexpected` display) as the JSON value.
fn got_value(got: &str) -> String {
    let quoted = |prefix: &str| {
        got.strip_prefix(prefix)
            .map(|v| v.trim_matches('`').to_owned())
    };
    if let Some(v) = quoted("integer ")
        .or_else(|| quoted("floating point "))
        .or_else(|| quoted("boolean "))
    {
        return v;
    }
    if let Some(s) = got.strip_prefix("string ") {
        return s.to_owned();
    }
    match got {
        "unit value" | "null" => "null".to_owned(),
        "sequence" => "an array".to_owned(),
        "map" => "an object".to_owned(),
        other => quote_backticks(other),
    }
}

fn quote_backticks(text: &str) -> String {
    text.replace('`', "\"")
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::from_json;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Order {
        count: u32,
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Item {
        sku: String,
        price: f64,
        #[serde(default)]
        gift: bool,
    }

    fn error(value: serde_json::Value) -> String {
        from_json::<Order>(value).expect_err("invalid")
    }

    #[test]
    fn names_the_path_and_the_json_shape() {
        let items = json!([{"sku": "a", "price": 1.0}]);
        assert_eq!(
            error(json!({"count": "x", "items": items})),
            r#"count: expected an integer from 0 to 4294967295, got "x""#
        );
        assert_eq!(
            error(json!({"count": -1, "items": items})),
            "count: expected an integer from 0 to 4294967295, got -1"
        );
        assert_eq!(
            error(json!({"count": 1, "items": [{"sku": "a", "price": "1"}]})),
            r#"items[0].price: expected a number, got "1""#
        );
        assert_eq!(
            error(json!({"count": 1, "items": [{"sku": 5, "price": 1}]})),
            "items[0].sku: expected a string, got 5"
        );
        assert_eq!(
            error(json!({"count": 1, "items": [{"sku": "a", "price": 1, "gift": null}]})),
            "items[0].gift: expected true or false, got null"
        );
        assert_eq!(
            error(json!({"count": 1, "items": {}})),
            "items: expected an array, got an object"
        );
        assert_eq!(error(json!("x")), r#"expected an object, got "x""#);
        assert_eq!(
            error(json!([1])),
            "expected an object, got an array of 1 item"
        );
        assert_eq!(
            from_json::<(u8, u8, u8)>(json!([1, 2])).expect_err("short"),
            "expected an array of 3 items, got an array of 2 items"
        );
        assert_eq!(error(json!({"items": []})), r#"missing field "count""#);
        assert_eq!(
            error(json!({"count": 1, "items": [{"price": 1}]})),
            r#"items[0]: missing field "sku""#
        );
    }
}
