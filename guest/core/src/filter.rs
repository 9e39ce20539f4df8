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

    /// Parses a filter from JSON text, as the WIT interfaces carry it.
    pub fn parse_text(json: &str) -> Result<Filter, FilterError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| FilterError(format!("the filter is not JSON: {e}")))?;
        Self::parse(&value)
    }

    /// Evaluates the filter against a document's metadata.
    pub fn matches(&self, metadata: &Map<String, Value>) -> bool {
        self.matches_with(&|field| metadata.get(field))
    }

    /// Evaluates the filter with `value_of` giving a field's value (`None` when absent).
    fn matches_with<'v>(&self, value_of: &impl Fn(&str) -> Option<&'v Value>) -> bool {
        match self {
            Filter::And(parts) => parts.iter().all(|f| f.matches_with(value_of)),
            Filter::Or(parts) => parts.iter().any(|f| f.matches_with(value_of)),
            Filter::Not(inner) => !inner.matches_with(value_of),
            Filter::Field { field, conditions } => {
                let value = value_of(field).unwrap_or(&Value::Null);
                conditions.iter().all(|c| c.holds(value))
            }
        }
    }

    /// The top-level metadata fields the filter reads, each once.
    pub fn fields(&self) -> Vec<&str> {
        fn collect<'f>(filter: &'f Filter, out: &mut Vec<&'f str>) {
            match filter {
                Filter::And(parts) | Filter::Or(parts) => parts.iter().for_each(|f| collect(f, out)),
                Filter::Not(inner) => collect(inner, out),
                Filter::Field { field, .. } => {
                    if !out.contains(&field.as_str()) {
                        out.push(field)
                    }
                }
            }
        }
        let mut out = Vec::new();
        collect(self, &mut out);
        out
    }

    /// Evaluates the filter against metadata stored as a JSON object, parsing only the values
    /// of `fields` (from [`Filter::fields`]); `values` is scratch space reused across calls.
    /// Unparsable metadata matches nothing.
    pub fn matches_json(&self, json: &[u8], fields: &[&str], values: &mut Vec<Option<Value>>) -> bool {
        values.clear();
        values.resize(fields.len(), None);
        if !json.is_empty() && project_fields(json, fields, values).is_err() {
            return false;
        }
        let values = &*values;
        self.matches_with(&|field| fields.iter().position(|f| *f == field).and_then(|i| values[i].as_ref()))
    }
}

/// Reads the top-level values of `fields` from the JSON object `json` into `values` (index for
/// index), skipping every other value without building it.
fn project_fields(json: &[u8], fields: &[&str], values: &mut [Option<Value>]) -> serde_json::Result<()> {
    use serde::Deserializer as _;
    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

    struct Projection<'a> {
        fields: &'a [&'a str],
        values: &'a mut [Option<Value>],
    }
    impl<'de> Visitor<'de> for Projection<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a metadata object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(index) = map.next_key_seed(FieldIndex(self.fields))? {
                match index {
                    Some(i) => self.values[i] = Some(map.next_value()?),
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(())
        }
    }
    /// Deserialises a key to its index in `fields` without allocating it.
    struct FieldIndex<'a>(&'a [&'a str]);
    impl<'de> DeserializeSeed<'de> for FieldIndex<'_> {
        type Value = Option<usize>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl<'de> Visitor<'de> for FieldIndex<'_> {
        type Value = Option<usize>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a field name")
        }
        fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<usize>, E> {
            Ok(self.0.iter().position(|f| *f == key))
        }
    }

    let mut de = serde_json::Deserializer::from_slice(json);
    de.deserialize_map(Projection { fields, values })?;
    de.end()
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

    /// Evaluates both ways, on a parsed map and on the stored JSON, and checks they agree.
    fn check(filter: Value, metadata: Value) -> bool {
        let Value::Object(m) = metadata else {
            panic!("metadata must be an object")
        };
        let filter = Filter::parse(&filter).expect("valid filter");
        let on_map = filter.matches(&m);
        let json = serde_json::to_vec(&m).expect("json");
        let on_json = filter.matches_json(&json, &filter.fields(), &mut Vec::new());
        assert_eq!(
            on_map, on_json,
            "map and JSON evaluation differ for {filter:?} on {m:?}"
        );
        on_map
    }

    #[test]
    fn json_evaluation_reads_escaped_keys_and_skips_other_values() {
        let filter = Filter::parse(&json!({"$or": [{"t\"ag": "x"}, {"n": {"$gt": 2}}]})).expect("valid");
        assert_eq!(filter.fields(), ["t\"ag", "n"]);
        let mut scratch = Vec::new();
        let json = br#"{"big": {"deep": [1, {"n": 9}]}, "t\"ag": "x"}"#;
        assert!(filter.matches_json(json, &filter.fields(), &mut scratch));
        let json = br#"{"big": {"n": 9}, "n": 1}"#;
        assert!(
            !filter.matches_json(json, &filter.fields(), &mut scratch),
            "nested n is not top-level n"
        );
        assert!(!filter.matches_json(b"{not json", &filter.fields(), &mut scratch));
        let missing = Filter::parse(&json!({"gone": null})).expect("valid");
        assert!(
            missing.matches_json(b"", &missing.fields(), &mut scratch),
            "no metadata: null"
        );
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
