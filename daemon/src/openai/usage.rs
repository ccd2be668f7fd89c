//! Token counts of a passed-through OpenAI response, read from its `usage` object as the bytes
//! go by. The relay stays byte-transparent: nothing is buffered but the usage object itself
//! (a few hundred bytes) and the last few bytes of each frame, in case the key is split
//! between two frames.
//!
//! vLLM writes compact JSON: `"usage":{"prompt_tokens":…}` in a non-streamed answer, and in
//! the last event of a stream when the client asked for it (`stream_options.include_usage`;
//! with `continuous_usage_stats` every event has one, and the last one counts). The key with
//! its quotes cannot occur inside a JSON string (quotes there are escaped), so a match is
//! always the real field.

use serde::Deserialize;

use crate::needle::Needle;

/// Searched for in every answer (a searcher built per call cost the pass-through's
/// non-streamed answer ~650 instructions).
static KEY: Needle = Needle::new(b"\"usage\":{");

/// A usage object longer than this is not one (it is dropped, not buffered further).
const MAX_OBJECT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A usage object as OpenAI's chat and completions write it (`prompt_tokens`), or as the
/// Responses and Anthropic APIs do (`input_tokens`). A member it lacks keeps the value seen
/// before: embeddings have no completion tokens, and Anthropic's `message_delta` may carry
/// only the output tokens.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
struct Raw {
    #[serde(alias = "input_tokens")]
    prompt_tokens: Option<u64>,
    #[serde(alias = "output_tokens")]
    completion_tokens: Option<u64>,
}

/// Follows one response body.
#[derive(Debug, Default)]
pub struct UsageScan {
    /// Outside an object: the last `KEY.len() - 1` bytes seen. Inside: the object so far.
    buf: Vec<u8>,
    object: Option<ObjectState>,
    last: Option<Usage>,
}

#[derive(Debug, Default)]
struct ObjectState {
    depth: u32,
    in_string: bool,
    escaped: bool,
}

impl UsageScan {
    /// The last usage object seen whole.
    pub fn usage(&self) -> Option<Usage> {
        self.last
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            data = match self.object {
                Some(_) => self.capture(data),
                None => self.search(data),
            };
        }
    }

    /// Looks for the key; returns what follows its `{` (that brace included), or nothing.
    // Offsets come from `memmem::find` on the same slices and are in bounds by construction;
    // fuzzed (the fuzz's "engine event streams"): indexing kept, the lint allowed here and in
    // `capture`.
    #[allow(clippy::indexing_slicing)]
    fn search<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        // A key split between the previous frame and this one.
        if !self.buf.is_empty() {
            let kept = self.buf.len();
            self.buf
                .extend_from_slice(&data[..data.len().min(KEY.len() - 1)]);
            if let Some(at) = KEY.find(&self.buf) {
                return self.open(&data[at + KEY.len() - 1 - kept..]);
            }
            if data.len() < KEY.len() - 1 {
                // A small frame: what was kept and the frame are the new tail.
                self.keep_tail();
                return &[];
            }
            self.buf.clear();
        }
        if let Some(at) = KEY.find(data) {
            return self.open(&data[at + KEY.len() - 1..]);
        }
        self.buf
            .extend_from_slice(&data[data.len().saturating_sub(KEY.len() - 1)..]);
        self.keep_tail();
        &[]
    }

    fn keep_tail(&mut self) {
        let excess = self.buf.len().saturating_sub(KEY.len() - 1);
        self.buf.drain(..excess);
    }

    fn open<'a>(&mut self, from_brace: &'a [u8]) -> &'a [u8] {
        self.buf.clear();
        self.object = Some(ObjectState::default());
        from_brace
    }

    /// Takes bytes of the object until its closing brace; returns what follows it.
    #[allow(clippy::indexing_slicing)]
    fn capture<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        let Some(state) = self.object.as_mut() else {
            return data;
        };
        let mut end = None;
        for (i, &b) in data.iter().enumerate() {
            if state.in_string {
                match b {
                    _ if state.escaped => state.escaped = false,
                    b'\\' => state.escaped = true,
                    b'"' => state.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => state.in_string = true,
                b'{' => state.depth += 1,
                b'}' => {
                    state.depth = state.depth.saturating_sub(1);
                    if state.depth == 0 {
                        end = Some(i + 1);
                        break;
                    }
                }
                _ => {}
            }
        }
        let taken = end.unwrap_or(data.len());
        if self.buf.len() + taken > MAX_OBJECT {
            self.object = None;
            self.buf.clear();
            return &data[taken..];
        }
        self.buf.extend_from_slice(&data[..taken]);
        if end.is_some() {
            self.object = None;
            let raw = match plain(&self.buf) {
                Some(raw) => Ok(raw),
                None => serde_json::from_slice::<Raw>(&self.buf),
            };
            if let Ok(raw) = raw {
                if raw.prompt_tokens.is_some() || raw.completion_tokens.is_some() {
                    let before = self.last.unwrap_or(Usage {
                        prompt_tokens: 0,
                        completion_tokens: 0,
                    });
                    self.last = Some(Usage {
                        prompt_tokens: raw.prompt_tokens.unwrap_or(before.prompt_tokens),
                        completion_tokens: raw
                            .completion_tokens
                            .unwrap_or(before.completion_tokens),
                    });
                }
            }
            self.buf.clear();
        }
        &data[taken..]
    }
}

/// The counts of a usage object as vLLM writes it, read in one pass (serde's derive was
/// ~2 500 instructions a response: every key a string read, every other member skipped
/// value by value). Only that shape is read here — compact, keys without escapes, each
/// member a plain integer, `null` or an object of those (`prompt_tokens_details`), no count
/// named twice; anything else is `None`, and serde reads the object, so the answer is
/// serde's either way.
fn plain(obj: &[u8]) -> Option<Raw> {
    let mut raw = Raw::default();
    let mut seen = (false, false);
    members(obj, 0, &mut |key, value, nested| {
        let (slot, seen) = match key {
            b"prompt_tokens" | b"input_tokens" => (&mut raw.prompt_tokens, &mut seen.0),
            b"completion_tokens" | b"output_tokens" => (&mut raw.completion_tokens, &mut seen.1),
            _ => return true,
        };
        // serde calls a second one an error, and an object is no count
        if nested || std::mem::replace(seen, true) {
            return false;
        }
        *slot = value;
        true
    })
    .filter(|&end| end == obj.len())
    .map(|_| raw)
}

/// What `members` hands each member to: its key, its count, whether it was an object; `false`
/// stops the reading.
type Member<'a> = dyn FnMut(&[u8], Option<u64>, bool) -> bool + 'a;

/// Reads the object at `at` whose members are counts (or, at the top, objects of counts),
/// handing each top-level one to `member` (key, its count, whether it was an object) until
/// that says no; returns where the object ends.
fn members(obj: &[u8], mut at: usize, member: &mut Member<'_>) -> Option<usize> {
    if obj.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    if obj.get(at) == Some(&b'}') {
        return Some(at + 1);
    }
    loop {
        if obj.get(at) != Some(&b'"') {
            return None;
        }
        let rest = obj.get(at + 1..)?;
        let len = memchr::memchr2(b'"', b'\\', rest)?;
        if rest.get(len) != Some(&b'"') || rest.get(len + 1) != Some(&b':') {
            return None;
        }
        let key = rest.get(..len)?;
        at += len + 3;
        let (value, nested) = if obj.get(at) == Some(&b'{') {
            at = members(obj, at, &mut |_, _, nested| !nested)?;
            (None, true)
        } else {
            let (value, end) = count(obj, at)?;
            at = end;
            (value, false)
        };
        if !member(key, value, nested) {
            return None;
        }
        match obj.get(at) {
            Some(b',') => at += 1,
            Some(b'}') => return Some(at + 1),
            _ => return None,
        }
    }
}

/// A count at `at`: a plain integer or `null`, and where it ends.
fn count(obj: &[u8], at: usize) -> Option<(Option<u64>, usize)> {
    let rest = obj.get(at..)?;
    if rest.starts_with(b"null") {
        return Some((None, at + 4));
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || (digits > 1 && rest.first() == Some(&b'0')) {
        return None;
    }
    let mut n: u64 = 0;
    for &d in rest.get(..digits)? {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some((Some(n), at + digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"say \\\"usage\\\":{ }\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"total_tokens\":19,\"completion_tokens\":7,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n\
data: [DONE]\n\n";

    fn scan(frames: &[&[u8]]) -> Option<Usage> {
        let mut s = UsageScan::default();
        for f in frames {
            s.feed(f);
        }
        s.usage()
    }

    #[test]
    fn finds_the_usage_whatever_the_framing() {
        let want = Some(Usage {
            prompt_tokens: 12,
            completion_tokens: 7,
        });
        assert_eq!(scan(&[STREAM]), want);
        for cut in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(cut);
            assert_eq!(scan(&[a, b]), want, "cut at {cut}");
        }
        for size in 1..=KEY.len() + 2 {
            let frames: Vec<&[u8]> = STREAM.chunks(size).collect();
            assert_eq!(scan(&frames), want, "frames of {size}");
        }
    }

    #[test]
    fn the_last_usage_counts_and_null_or_quoted_ones_do_not() {
        let continuous = b"data: {\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\n\
data: {\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n";
        assert_eq!(
            scan(&[continuous]),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 2
            })
        );
        assert_eq!(
            scan(&[b"{\"usage\":null,\"text\":\"\\\"usage\\\":{1}\"}"]),
            None
        );
        // Embeddings: no completion tokens.
        assert_eq!(
            scan(&[b"{\"data\":[],\"usage\":{\"prompt_tokens\":4,\"total_tokens\":4}}"]),
            Some(Usage {
                prompt_tokens: 4,
                completion_tokens: 0
            })
        );
    }

    #[test]
    fn responses_and_anthropic_usage() {
        // vLLM 0.32's Responses usage, recorded (nested details are skipped).
        let responses = br#"{"usage":{"input_tokens":16,"input_tokens_details":{"cached_tokens":0},"output_tokens":4,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":20}}"#;
        assert_eq!(
            scan(&[responses]),
            Some(Usage {
                prompt_tokens: 16,
                completion_tokens: 4
            })
        );
        // Anthropic: message_start, then a message_delta with only the output tokens.
        let anthropic = b"data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":15,\"output_tokens\":0}}}\n\n\
data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n\n";
        assert_eq!(
            scan(&[anthropic]),
            Some(Usage {
                prompt_tokens: 15,
                completion_tokens: 3
            })
        );
    }

    #[test]
    fn the_one_pass_reading_agrees_with_serde() {
        let objects: &[&[u8]] = &[
            br#"{"prompt_tokens":12,"total_tokens":19,"completion_tokens":7,"prompt_tokens_details":null}"#,
            br#"{"input_tokens":16,"input_tokens_details":{"cached_tokens":0},"output_tokens":4,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":20}"#,
            br#"{"output_tokens":3}"#,
            br#"{}"#,
            br#"{"prompt_tokens":null,"completion_tokens":0}"#,
            br#"{"prompt_tokens":1,"input_tokens":2}"#,
            br#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            br#"{"prompt_tokens":1.0}"#,
            br#"{"prompt_tokens":-1}"#,
            br#"{"prompt_tokens":01}"#,
            br#"{"prompt_tokens":18446744073709551616}"#,
            br#"{"prompt_tokens":"3"}"#,
            br#"{"note":"}{\"","prompt_tokens":1,"completion_tokens":3}"#,
            br#"{"a":[1,{"b":"]"}],"completion_tokens":9}"#,
            br#"{"pro\u006dpt_tokens":5}"#,
            br#"{ "prompt_tokens": 5 }"#,
            br#"{"prompt_tokens":5,}"#,
            br#"{"prompt_tokens":5"#,
            br#"{"prompt_tokens":true}"#,
            br#"{"x":tru,"prompt_tokens":1}"#,
            br#"{"x":{"y":{}},"prompt_tokens":1}"#,
            br#"{"prompt_tokens":{"a":1}}"#,
            br#"{"d":{"a":1,"b":null},"prompt_tokens":2}"#,
            br#"{"prompt_tokens":1}x"#,
            br#"{"prompt_tokens":12e1}"#,
        ];
        for obj in objects {
            let serde = serde_json::from_slice::<Raw>(obj).ok();
            if let Some(fast) = plain(obj) {
                assert_eq!(Some(fast), serde, "{}", String::from_utf8_lossy(obj));
            }
        }
        // The shapes vLLM writes are read without serde; an escaped key, a string member or
        // whitespace go to serde, which reads them.
        for i in [0, 1, 2, 3, 4, 22] {
            assert!(plain(objects[i]).is_some(), "{i}");
        }
        for (i, prompt) in [(12, 1), (14, 5), (15, 5)] {
            assert_eq!(plain(objects[i]), None, "{i}");
            assert_eq!(
                scan(&[b"{\"usage\":", objects[i], b"}"]).map(|u| u.prompt_tokens),
                Some(prompt),
                "{i}"
            );
        }
        // Every cut of a real one either agrees or falls back.
        for cut in 0..objects[1].len() {
            let obj = &objects[1][..cut];
            if let Some(fast) = plain(obj) {
                assert_eq!(Some(fast), serde_json::from_slice::<Raw>(obj).ok());
            }
        }
    }

    #[test]
    fn braces_in_strings_and_oversized_objects() {
        let tricky =
            b"{\"usage\":{\"note\":\"}{\\\"\",\"prompt_tokens\":1,\"completion_tokens\":3}}";
        assert_eq!(
            scan(&[tricky]),
            Some(Usage {
                prompt_tokens: 1,
                completion_tokens: 3
            })
        );
        let mut huge = b"{\"usage\":{\"pad\":\"".to_vec();
        huge.extend(std::iter::repeat_n(b'x', 2 * MAX_OBJECT));
        huge.extend_from_slice(b"\",\"prompt_tokens\":1}}");
        assert_eq!(scan(&[&huge]), None);
        // ... and the scan goes on after it.
        let after = b"{\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":2}}";
        let mut s = UsageScan::default();
        s.feed(&huge);
        s.feed(after);
        assert_eq!(s.usage().map(|u| u.prompt_tokens), Some(2));
    }
}
