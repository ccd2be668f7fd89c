//! An OpenAI request body with its `model` replaced and every other member passed on byte
//! for byte. The members' values are checked as JSON but not built into a tree: a 200 KB
//! prompt costs one scan and one copy, not a parse into thousands of allocations and a
//! re-serialisation.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("the request body must be a JSON object")]
    NotAnObject,
    #[error("`model` is required")]
    NoModel,
    #[error("`model` must be a string")]
    ModelNotAString,
}

/// The members of the body's top-level object, in order, values unparsed.
#[derive(Debug)]
pub struct RequestBody<'a> {
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// The position of the (last) `model` member in `members`.
    model_at: usize,
    model: String,
}

impl<'a> RequestBody<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, BodyError> {
        let Members(members) = serde_json::from_slice(body).map_err(|_| BodyError::NotAnObject)?;
        let model_at = members
            .iter()
            .rposition(|(k, _)| k == "model")
            .ok_or(BodyError::NoModel)?;
        let raw = members.get(model_at).ok_or(BodyError::NoModel)?.1.get();
        let model = serde_json::from_str::<String>(raw).map_err(|_| BodyError::ModelNotAString)?;
        Ok(RequestBody {
            members,
            model_at,
            model,
        })
    }

    /// The model the client asked for.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The body again, with `model` set to `name`.
    pub fn with_model(&self, name: &str) -> Vec<u8> {
        let size: usize = self
            .members
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum();
        let mut out = Vec::with_capacity(size + name.len() + 2);
        out.push(b'{');
        for (i, (key, value)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_string(&mut out, key);
            out.push(b':');
            if i == self.model_at {
                write_string(&mut out, name);
            } else {
                out.extend_from_slice(value.get().as_bytes());
            }
        }
        out.push(b'}');
        out
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

/// A key, borrowed from the body unless it has escapes.
#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Key(k), v)) = map.next_entry::<Key, &RawValue>()? {
                    members.push((k, v));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn rewrite(body: &str, name: &str) -> Result<(String, Value), BodyError> {
        let parsed = RequestBody::parse(body.as_bytes())?;
        let out = parsed.with_model(name);
        Ok((
            parsed.model().to_string(),
            serde_json::from_slice(&out).expect("valid JSON out"),
        ))
    }

    #[test]
    fn only_the_model_changes() {
        let body = r#"{"model":"tiny","messages":[{"role":"user","content":"h\u00e9 \"x\" ☃ {}"}],
            "max_tokens":5,"stream":true,"nested":{"model":"inner"},"n":1.5e3,"x":null}"#;
        let (asked, out) = rewrite(body, "tiny:latest").unwrap();
        assert_eq!(asked, "tiny");
        let mut want: Value = serde_json::from_str(body).unwrap();
        want["model"] = json!("tiny:latest");
        assert_eq!(out, want);
        // Members keep their order and their bytes.
        let bytes = RequestBody::parse(body.as_bytes())
            .unwrap()
            .with_model("m\"q");
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with(
                r#"{"model":"m\"q","messages":[{"role":"user","content":"h\u00e9 \"x\" ☃ {}"}]"#
            ),
            "{text}"
        );
    }

    #[test]
    fn escaped_keys_and_duplicates() {
        // An escaped key is still `model`; the last of two wins, as in serde_json's Value.
        let (asked, out) =
            rewrite(r#"{"mod\u0065l":"a","k\"ey":1,"model":"b"}"#, "served").unwrap();
        assert_eq!(asked, "b");
        assert_eq!(out, json!({"mod\u{65}l": "served", "k\"ey": 1}));
    }

    #[test]
    fn bad_bodies() {
        for (body, want) in [
            ("[1]", BodyError::NotAnObject),
            ("{\"model\":\"a\"", BodyError::NotAnObject),
            ("{\"model\":\"a\",\"x\":[1,}", BodyError::NotAnObject),
            ("", BodyError::NotAnObject),
            ("{\"messages\":[]}", BodyError::NoModel),
            ("{\"model\":7}", BodyError::ModelNotAString),
        ] {
            assert_eq!(
                RequestBody::parse(body.as_bytes()).unwrap_err(),
                want,
                "{body}"
            );
        }
    }
}
