//! Mongo-style metadata filters, with the semantics of LangChain's FAISS store.
//!
//! `{"field": value}` is equality, `{"field": [a, b]}` is membership, `{"field": {"$gt": 1}}`
//! applies operators (several are ANDed), `$and`/`$or` take lists, `$not` takes one filter, and
//! several keys in one object are ANDed. A missing field compares as `null`, as Python's
//! `dict.get` does. Ordering operators compare numbers with numbers and strings with strings;
//! any other pairing is false (where Python would raise).

use std::cmp::Ordering;

use serde_json::{Map, Value};

/// A parsed, validated filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Field { field: String, conditions: Vec<Condition> },
}

/// One operator applied to a field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Eq(Value),
    Ne(Value),
    Gt(Value),
    Gte(Value),
    Lt(Value),
    Lte(Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
}

/// A filter that cannot be parsed; the message says which part is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter: {0}")]
pub struct FilterError(pub String);

/// Deepest nesting accepted, so a hostile filter cannot exhaust the stack.
const MAX_DEPTH: usize = 32;

impl Filter {
    /// Parses a filter from its JSON form.
    pub fn parse(value: &Value) -> Result<Filter, FilterError> {
        parse_object(value, 0)
    }

    /// Evaluates the filter against a document's metadata.
    pub fn matches(&self, metadata: &Map<String, Value>) -> bool {
        match self {
            Filter::And(parts) => parts.iter().all(|f| f.matches(metadata)),
            Filter::Or(parts) => parts.iter().any(|f| f.matches(metadata)),
            Filter::Not(inner) => !inner.matches(metadata),
            Filter::Field { field, conditions } => {
                let value = metadata.get(field).unwrap_or(&Value::Null);
                conditions.iter().all(|c| c.holds(value))
            }
        }
    }
}

fn parse_object(value: &Value, depth: usize) -> Result<Filter, FilterError> {
    if depth > MAX_DEPTH {
        return Err(FilterError(format!("nested deeper than {MAX_DEPTH} levels")));
    }
    let Value::Object(map) = value else {
        return Err(FilterError(format!("expected an object, got {}", kind(value))));
    };
    // LangChain gives $and/$or/$not precedence over sibling keys; tvs refuses the ambiguity.
    let logical = ["$and", "$or", "$not"].iter().filter(|k| map.contains_key(**k)).count();
    if logical > 0 && map.len() > 1 {
        return Err(FilterError(
            "$and, $or and $not must be the only key of their object".into(),
        ));
    }
    let mut parts = Vec::with_capacity(map.len());
    for (key, cond) in map {
        let part = match key.as_str() {
            "$and" | "$or" => {
                let Value::Array(items) = cond else {
                    return Err(FilterError(format!("{key} takes a list of filters")));
                };
                let subs = items
                    .iter()
                    .map(|v| parse_object(v, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                if key == "$and" {
                    Filter::And(subs)
                } else {
                    Filter::Or(subs)
                }
            }
            "$not" => Filter::Not(Box::new(parse_object(cond, depth + 1)?)),
            op if op.starts_with('$') => {
                return Err(FilterError(format!(
                    "unsupported operator {op} at the top level (fields may not start with $; \
                     operators: $eq $ne $gt $gte $lt $lte $in $nin $and $or $not)"
                )));
            }
            field => Filter::Field {
                field: field.to_owned(),
                conditions: parse_conditions(field, cond)?,
            },
        };
        parts.push(part);
    }
    Ok(if parts.len() == 1 {
        parts.remove(0)
    } else {
        Filter::And(parts)
    })
}

fn parse_conditions(field: &str, cond: &Value) -> Result<Vec<Condition>, FilterError> {
    match cond {
        Value::Object(ops) if ops.keys().any(|k| k.starts_with('$')) => ops
            .iter()
            .map(|(op, v)| {
                let list = || match v {
                    Value::Array(items) => Ok(items.clone()),
                    other => Err(FilterError(format!("{op} on {field:?} takes a list, got {}", kind(other)))),
                };
                Ok(match op.as_str() {
                    "$eq" => Condition::Eq(v.clone()),
                    "$ne" | "$neq" => Condition::Ne(v.clone()),
                    "$gt" => Condition::Gt(v.clone()),
                    "$gte" => Condition::Gte(v.clone()),
                    "$lt" => Condition::Lt(v.clone()),
                    "$lte" => Condition::Lte(v.clone()),
                    "$in" => Condition::In(list()?),
                    "$nin" => Condition::Nin(list()?),
                    other => {
                        return Err(FilterError(format!(
                            "unsupported operator {other} on {field:?} (expected one of $eq $ne $gt $gte $lt $lte $in $nin)"
                        )));
                    }
                })
            })
            .collect(),
        Value::Array(items) => Ok(vec![Condition::In(items.clone())]),
        other => Ok(vec![Condition::Eq(other.clone())]),
    }
}

impl Condition {
    fn holds(&self, value: &Value) -> bool {
        match self {
            Condition::Eq(x) => json_eq(value, x),
            Condition::Ne(x) => !json_eq(value, x),
            Condition::Gt(x) => order(value, x) == Some(Ordering::Greater),
            Condition::Gte(x) => matches!(order(value, x), Some(Ordering::Greater | Ordering::Equal)),
            Condition::Lt(x) => order(value, x) == Some(Ordering::Less),
            Condition::Lte(x) => matches!(order(value, x), Some(Ordering::Less | Ordering::Equal)),
            Condition::In(xs) => xs.iter().any(|x| json_eq(value, x)),
            Condition::Nin(xs) => !xs.iter().any(|x| json_eq(value, x)),
        }
    }
}

/// Equality as Python sees decoded JSON: `1 == 1.0`.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(xs), Value::Array(ys)) => xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| json_eq(x, y)),
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len() && xs.iter().all(|(k, x)| ys.get(k).is_some_and(|y| json_eq(x, y)))
        }
        _ => a == b,
    }
}

fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(filter: Value, metadata: Value) -> bool {
        let Value::Object(m) = metadata else {
            panic!("metadata must be an object")
        };
        Filter::parse(&filter).expect("valid filter").matches(&m)
    }

    #[test]
    fn plain_values_mean_equality_and_lists_mean_membership() {
        assert!(check(json!({"page": 1}), json!({"page": 1.0})));
        assert!(!check(json!({"page": 1}), json!({"page": 2})));
        assert!(check(json!({"tag": ["a", "b"]}), json!({"tag": "b"})));
        assert!(!check(json!({"tag": ["a", "b"]}), json!({"tag": "c"})));
        assert!(check(json!({"a": 1, "b": "x"}), json!({"a": 1, "b": "x"})));
        assert!(!check(json!({"a": 1, "b": "x"}), json!({"a": 1, "b": "y"})));
    }

    #[test]
    fn comparison_operators_follow_python() {
        let doc = json!({"n": 5, "s": "m"});
        assert!(check(json!({"n": {"$gt": 4}}), doc.clone()));
        assert!(!check(json!({"n": {"$gt": 5}}), doc.clone()));
        assert!(check(json!({"n": {"$gte": 5, "$lte": 5}}), doc.clone()));
        assert!(check(json!({"n": {"$lt": 5.5}}), doc.clone()));
        assert!(check(json!({"s": {"$gt": "a"}}), doc.clone()));
        assert!(
            !check(json!({"s": {"$gt": 1}}), doc.clone()),
            "str vs int is false, not an error"
        );
        assert!(check(json!({"n": {"$ne": 4}}), doc.clone()));
        assert!(
            check(json!({"n": {"$neq": 4}}), doc.clone()),
            "LangChain spells it $neq"
        );
        assert!(
            check(json!({"missing": {"$ne": 4}}), doc.clone()),
            "missing is null, null != 4"
        );
        assert!(check(json!({"missing": {"$nin": [1]}}), doc.clone()));
        assert!(!check(json!({"missing": {"$gt": 0}}), doc.clone()));
        assert!(check(json!({"missing": null}), doc));
    }

    #[test]
    fn logical_operators_nest() {
        let doc = json!({"a": 1, "b": 2});
        assert!(check(json!({"$and": [{"a": 1}, {"b": {"$in": [2, 3]}}]}), doc.clone()));
        assert!(check(json!({"$or": [{"a": 9}, {"b": 2}]}), doc.clone()));
        assert!(!check(json!({"$or": [{"a": 9}, {"b": 9}]}), doc.clone()));
        assert!(check(json!({"$not": {"a": 9}}), doc.clone()));
        assert!(!check(json!({"$not": {"$and": [{"a": 1}, {"b": 2}]}}), doc));
    }

    #[test]
    fn bad_filters_are_refused_with_the_reason() {
        for (bad, needle) in [
            (json!({"a": {"$regex": "x"}}), "$regex"),
            (json!({"$where": "1"}), "$where"),
            (json!({"$and": {"a": 1}}), "list"),
            (json!({"a": {"$in": 3}}), "list"),
            (json!([1, 2]), "object"),
            (json!({"$and": [{"a": 1}], "b": 2}), "only key"),
        ] {
            let err = Filter::parse(&bad).expect_err("must fail");
            assert!(err.to_string().contains(needle), "{err} should mention {needle}");
        }
        let mut deep = json!({"a": 1});
        for _ in 0..100 {
            deep = json!({ "$not": deep });
        }
        assert!(Filter::parse(&deep).is_err());
    }
}
