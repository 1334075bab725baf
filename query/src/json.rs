//! `json_get_str(json, key)`: the string (or number/bool as text) under
//! `key` of a JSON object, NULL when absent; for log `attributes`, e.g.
//! `WHERE json_get_str(attributes, 'region') = 'eu'`.

use arrow::array::StringArray;
use arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};

use crate::udf::{map_text, scalar_str};

#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct JsonGetStr {
    signature: Signature,
}

impl JsonGetStr {
    pub(crate) fn new() -> Self {
        Self { signature: Signature::string(2, Volatility::Immutable) }
    }
}

fn get(json: &str, key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    match v.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

impl ScalarUDFImpl for JsonGetStr {
    fn name(&self) -> &str {
        "json_get_str"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [json, key] = args.args.as_slice() else {
            return plan_err!("json_get_str(json, key) takes two arguments");
        };
        let ColumnarValue::Scalar(key) = key else {
            return exec_err!("json_get_str(): the key must be a constant string");
        };
        let Some(key) = scalar_str(key) else {
            return exec_err!("json_get_str(): the key must be a non-NULL string");
        };
        map_text::<String, StringArray>(json, |j| get(j, key), ScalarValue::Utf8)
    }
}

#[cfg(test)]
mod tests {
    use super::get;

    #[test]
    fn reads_a_key_of_a_json_object() {
        assert_eq!(get(r#"{"region":"eu","code":502,"ok":false}"#, "region").as_deref(), Some("eu"));
        assert_eq!(get(r#"{"region":"eu","code":502}"#, "code").as_deref(), Some("502"));
        assert_eq!(get(r#"{"region":"eu"}"#, "missing"), None);
        assert_eq!(get("not json", "region"), None);
    }
}
