//! Test-only access to `fixtures/reference_values.json`, the values computed by scipy, numpy,
//! scikit-learn and river in `fixtures/make_fixtures.py` (see that script for versions and seed).

use serde_json::Value;
use std::vec::Vec;

/// The parsed fixture file.
pub(crate) fn data() -> Value {
    serde_json::from_str(include_str!("../fixtures/reference_values.json")).expect("fixture JSON parses")
}

/// A number, or one of the strings "inf", "-inf", "NaN" used for non-finite values.
pub(crate) fn num(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        Value::String(s) if s == "NaN" => f64::NAN,
        other => other.as_f64().expect("fixture value is a number"),
    }
}

pub(crate) fn nums(v: &Value) -> Vec<f64> {
    v.as_array().expect("fixture value is an array").iter().map(num).collect()
}

pub(crate) fn ints(v: &Value) -> Vec<i64> {
    v.as_array().expect("fixture value is an array").iter().map(|x| x.as_i64().expect("integer")).collect()
}

pub(crate) fn cases<'a>(data: &'a Value, key: &str) -> &'a [Value] {
    data[key].as_array().map(Vec::as_slice).unwrap_or_else(|| panic!("fixture has no {key}"))
}

/// `|got - want| <= abs + rel * |want|`, with infinities and NaN compared exactly.
pub(crate) fn close(got: f64, want: f64, rel: f64, abs: f64) -> bool {
    if want.is_nan() {
        return got.is_nan();
    }
    if want.is_infinite() {
        return got == want;
    }
    (got - want).abs() <= abs + rel * want.abs()
}
