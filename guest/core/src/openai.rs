//! The `input` of OpenAI's embeddings request, read the same way by `tvs serve` and tvs on
//! Spin: a text, texts, token ids, or lists of token ids. What a server does with token ids
//! (decode them, or refuse them) is its own.

use serde_json::Value;

/// Most inputs per request, as OpenAI allows.
pub const MAX_INPUTS: usize = 2048;

/// One input.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Text(String),
    TokenIds(Vec<u64>),
}

fn token_ids(index: usize, ids: &[Value]) -> Result<Input, String> {
    let ids = ids
        .iter()
        .map(|id| {
            id.as_u64()
                .ok_or_else(|| format!("input[{index}]: token ids are whole numbers ≥ 0, got {id}"))
        })
        .collect::<Result<Vec<u64>, _>>()?;
    if ids.is_empty() {
        return Err(format!("input[{index}] is an empty list of token ids"));
    }
    Ok(Input::TokenIds(ids))
}

/// The inputs of an OpenAI `input`, or why it is not acceptable.
pub fn inputs(input: Value) -> Result<Vec<Input>, String> {
    let inputs = match input {
        Value::String(text) => vec![Input::Text(text)],
        // One input given as token ids.
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
            vec![token_ids(0, &items)?]
        }
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::String(text) => Ok(Input::Text(text)),
                Value::Array(ids) => token_ids(index, &ids),
                _ => Err(format!("input[{index}] must be a text or a list of token ids")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("input must be a text, a list of texts, or lists of token ids".into()),
    };
    if inputs.is_empty() {
        return Err("input is empty".into());
    }
    if inputs.len() > MAX_INPUTS {
        return Err(format!("at most {MAX_INPUTS} inputs per request"));
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_every_shape_openai_takes() {
        assert_eq!(inputs(json!("a")), Ok(vec![Input::Text("a".into())]));
        assert_eq!(inputs(json!([1, 2])), Ok(vec![Input::TokenIds(vec![1, 2])]));
        assert_eq!(
            inputs(json!(["a", [3]])),
            Ok(vec![Input::Text("a".into()), Input::TokenIds(vec![3])])
        );
        assert!(inputs(json!([])).is_err());
        assert!(inputs(json!([[-1]])).expect_err("negative").contains("input[0]"));
        assert!(inputs(json!(["a", []])).expect_err("empty ids").contains("input[1]"));
        assert!(inputs(json!({"a": 1})).is_err());
        assert!(inputs(Value::Array(vec![json!("x"); MAX_INPUTS + 1])).is_err());
    }
}
