//! A chunk read in one pass over its bytes, for the shape vLLM writes: compact or spaced
//! JSON, keys without escapes, the members the Ollama answer reads as strings, integers,
//! lists of them, `null` or the small objects of the chunk's types. serde's derive spent
//! ~6 000 instructions an event here (every key and skipped string a UTF-8 check, a visitor
//! call a member): the event of each token, streamed or not.
//!
//! Whatever falls outside that shape — an `error` member, log probabilities, a `\u` escape in
//! a text, a number that is no plain count, a member named twice, nesting deeper than
//! [`MAX_DEPTH`], anything serde would refuse — is `None`, and serde reads the event: the
//! answer is serde's either way (the fuzz target "chunk reader" checks it on mutated
//! recordings).

use std::borrow::Cow;

use serde::de::IgnoredAny;

use super::{Choice, Chunk, Delta, Field, FunctionDelta, Text, ToolCallDelta, Usage};

/// How deeply a skipped member may nest before serde is left to read the event.
const MAX_DEPTH: u32 = 32;

/// The chunk, when the event has the shape read here.
pub(crate) fn chunk(data: &[u8]) -> Option<Chunk<'_>> {
    let mut r = Reader { s: data, at: 0 };
    let mut c = Chunk::default();
    let mut seen = Seen::default();
    r.object(|r, key| {
        match key {
            b"choices" => {
                seen.once(0)?;
                c.choices = r.option(|r| r.array(Reader::choice))?;
            }
            b"usage" => {
                seen.once(1)?;
                c.usage = r.option(Reader::usage)?;
            }
            b"prompt_token_ids" => {
                seen.once(2)?;
                c.prompt_token_ids = r.option(Reader::counts)?;
            }
            b"error" => return None,
            _ => r.skip(0)?,
        }
        Some(())
    })?;
    r.ws();
    (r.at == data.len()).then_some(c)
}

/// The members of one struct read so far: serde refuses a struct's member named twice.
#[derive(Default)]
struct Seen(u8);

impl Seen {
    fn once(&mut self, member: u8) -> Option<()> {
        let bit = 1 << member;
        let first = self.0 & bit == 0;
        self.0 |= bit;
        first.then_some(())
    }
}

struct Reader<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    /// JSON's whitespace, as serde reads it.
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    /// Takes `b` after any whitespace, if it is next.
    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        let next = self.peek() == Some(b);
        if next {
            self.at += 1;
        }
        next
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        self.eat(b).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let there = self.s.get(self.at..)?.starts_with(word);
        self.at += word.len();
        there.then_some(())
    }

    /// `null` (`Some(None)`), or what `value` reads.
    fn option<T>(&mut self, value: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        self.ws();
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            return Some(None);
        }
        value(self).map(Some)
    }

    /// A member's value that may be `null`, kept apart from one that is missing.
    fn field<T>(&mut self, value: impl FnOnce(&mut Self) -> Option<T>) -> Option<Field<T>> {
        Some(match self.option(value)? {
            Some(v) => Field::Value(v),
            None => Field::Null,
        })
    }

    /// An object, each member's key handed to `member` with the reader at its value.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            self.ws();
            let key = self.key()?;
            self.expect(b':')?;
            self.ws();
            member(self, key)?;
            if !self.eat(b',') {
                return self.expect(b'}');
            }
        }
    }

    fn array<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        self.expect(b'[')?;
        let mut items = Vec::new();
        if self.eat(b']') {
            return Some(items);
        }
        loop {
            self.ws();
            items.push(item(self)?);
            if !self.eat(b',') {
                self.expect(b']')?;
                return Some(items);
            }
        }
    }

    /// An object read into a `T`: each member's key handed to `member` with the reader at
    /// its value, and the members seen so far (a member named twice is serde's to refuse).
    fn read<T: Default>(
        &mut self,
        mut member: impl FnMut(&mut Self, &mut T, &mut Seen, &'a [u8]) -> Option<()>,
    ) -> Option<T> {
        let mut out = T::default();
        let mut seen = Seen::default();
        self.object(|r, key| member(r, &mut out, &mut seen, key))?;
        Some(out)
    }

    /// A string's raw bytes between its quotes, and whether it holds escapes (checked as
    /// serde checks them). A control character is refused, as serde refuses it.
    fn raw_string(&mut self) -> Option<(&'a [u8], Escapes)> {
        let s = self.s;
        if s.get(self.at) != Some(&b'"') {
            return None;
        }
        let start = self.at + 1;
        let end = stop(s, start)?;
        // Most strings end at their first stop; one with escapes goes on (kept out of line,
        // so that the common path saves no registers for it).
        let (end, escapes) = match s.get(end) {
            Some(b'"') => (end, Escapes::None),
            Some(b'\\') => escaped(s, end)?,
            _ => return None,
        };
        self.at = end + 1;
        Some((s.get(start..end)?, escapes))
    }

    /// A key: plain ASCII (one with escapes or other bytes is left to serde, which would
    /// compare it unescaped or check its UTF-8).
    fn key(&mut self) -> Option<&'a [u8]> {
        match self.raw_string()? {
            (raw, Escapes::None) if raw.is_ascii() => Some(raw),
            _ => None,
        }
    }

    /// A string value, borrowed unless it had escapes (serde's `Cow<str>`); `\u` escapes are
    /// left to serde.
    fn text(&mut self) -> Option<Text<'a>> {
        let (raw, escapes) = self.raw_string()?;
        let text = std::str::from_utf8(raw).ok()?;
        Some(Text(match escapes {
            Escapes::None => Cow::Borrowed(text),
            Escapes::Simple => Cow::Owned(unescape(text)?),
            Escapes::Unicode => return None,
        }))
    }

    /// A count: a JSON integer that fits a `u64` (a sign, a fraction or an exponent is left
    /// to serde, which refuses or reads it).
    fn count(&mut self) -> Option<u64> {
        let digits = self.digits()?;
        if let Some(b'.' | b'e' | b'E') = self.peek() {
            return None;
        }
        digits.iter().try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
    }

    /// An integer's digits: one `0`, or digits that do not start with one.
    fn digits(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        let digits = self.s.get(start..self.at)?;
        match digits {
            [] => None,
            [b'0', _, ..] => None,
            _ => Some(digits),
        }
    }

    /// A number as serde's grammar has it, skipped.
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        self.digits()?;
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.digits_after()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.digits_after()?;
        }
        Some(())
    }

    /// At least one digit (a fraction's or an exponent's: leading zeros allowed).
    fn digits_after(&mut self) -> Option<()> {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        (self.at > start).then_some(())
    }

    /// Any value, skipped, as serde checks a value it ignores.
    fn skip(&mut self, depth: u32) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => self.raw_string().map(drop),
            b'{' if depth < MAX_DEPTH => self.object(|r, _| r.skip(depth + 1)),
            b'[' if depth < MAX_DEPTH => self.array(|r| r.skip(depth + 1)).map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn counts(&mut self) -> Option<Vec<u64>> {
        self.array(Reader::count)
    }

    fn usage(&mut self) -> Option<Usage> {
        self.read(|r, u: &mut Usage, seen, key| {
            match key {
                b"prompt_tokens" => {
                    seen.once(0)?;
                    u.prompt_tokens = r.option(Reader::count)?;
                }
                b"completion_tokens" => {
                    seen.once(1)?;
                    u.completion_tokens = r.option(Reader::count)?;
                }
                _ => r.skip(1)?,
            }
            Some(())
        })
    }

    fn choice(&mut self) -> Option<Choice<'a>> {
        self.read(|r, c: &mut Choice<'a>, seen, key| {
            match key {
                b"delta" => {
                    seen.once(0)?;
                    c.delta = r.option(Reader::delta)?;
                }
                b"text" => {
                    seen.once(1)?;
                    c.text = r.field(Reader::text)?;
                }
                b"token_ids" => {
                    seen.once(2)?;
                    c.token_ids = r.option(Reader::counts)?;
                }
                b"prompt_token_ids" => {
                    seen.once(3)?;
                    c.prompt_token_ids = r.option(Reader::counts)?;
                }
                b"logprobs" => {
                    seen.once(4)?;
                    // log probabilities are kept as JSON values: serde builds them
                    r.option(|_| None::<()>)?;
                }
                b"finish_reason" => {
                    seen.once(5)?;
                    c.finish_reason = r.option(Reader::text)?;
                }
                _ => r.skip(2)?,
            }
            Some(())
        })
    }

    fn delta(&mut self) -> Option<Delta<'a>> {
        self.read(|r, d: &mut Delta<'a>, seen, key| {
            match key {
                b"role" => {
                    seen.once(0)?;
                    d.role = r.field(|r| r.skip(3).map(|()| IgnoredAny))?;
                }
                b"content" => {
                    seen.once(1)?;
                    d.content = r.field(Reader::text)?;
                }
                b"reasoning" => {
                    seen.once(2)?;
                    d.reasoning = r.option(Reader::text)?;
                }
                b"reasoning_content" => {
                    seen.once(3)?;
                    d.reasoning_content = r.option(Reader::text)?;
                }
                b"tool_calls" => {
                    seen.once(4)?;
                    d.tool_calls = r.field(|r| r.array(Reader::tool_call))?;
                }
                _ => r.skip(3)?,
            }
            Some(())
        })
    }

    fn tool_call(&mut self) -> Option<ToolCallDelta<'a>> {
        self.read(|r, t: &mut ToolCallDelta<'a>, seen, key| {
            match key {
                b"index" => {
                    seen.once(0)?;
                    t.index = r.option(Reader::count)?;
                }
                b"function" => {
                    seen.once(1)?;
                    t.function = r.option(Reader::function)?;
                }
                _ => r.skip(5)?,
            }
            Some(())
        })
    }

    fn function(&mut self) -> Option<FunctionDelta<'a>> {
        self.read(|r, f: &mut FunctionDelta<'a>, seen, key| {
            match key {
                b"name" => {
                    seen.once(0)?;
                    f.name = r.option(Reader::text)?;
                }
                b"arguments" => {
                    seen.once(1)?;
                    f.arguments = r.option(Reader::text)?;
                }
                _ => r.skip(6)?,
            }
            Some(())
        })
    }
}

/// Where the first byte at or after `at` that ends a string's plain run lies: a quote, a
/// backslash or a control character. Eight bytes at a time (the word tests of "Bit Twiddling
/// Hacks": a byte equal to one value, a byte under another; the lowest flagged byte is always
/// a true one, as a false flag needs a borrow from a true one below it), the last few one by
/// one.
#[inline(always)]
fn stop(s: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH;
    while let Some(word) = s.get(at..at + 8) {
        let w = u64::from_le_bytes(word.try_into().ok()?);
        let stops = below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1)
            | below(w, 0x20);
        if stops != 0 {
            return Some(at + (stops.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    while let Some(&b) = s.get(at) {
        if matches!(b, b'"' | b'\\' | 0..=0x1f) {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// The rest of a string from its first backslash at `at`: where its closing quote lies and
/// what its escapes need.
#[cold]
fn escaped(s: &[u8], mut at: usize) -> Option<(usize, Escapes)> {
    let mut escapes = Escapes::None;
    loop {
        match s.get(at) {
            Some(b'"') => return Some((at, escapes)),
            Some(b'\\') => {}
            _ => return None,
        }
        match *s.get(at + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                escapes = escapes.max(Escapes::Simple);
                at += 2;
            }
            b'u' => {
                let hex = s.get(at + 2..at + 6)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                escapes = Escapes::Unicode;
                at += 6;
            }
            _ => return None,
        }
        at = stop(s, at)?;
    }
}

/// What a string's escapes need: none, one-character ones, or `\u` (left to serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Escapes {
    None,
    Simple,
    Unicode,
}

/// A string's one-character escapes undone.
fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            c @ ('"' | '\\' | '/') => c,
            _ => return None,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde reads, as text to compare (a failure is `None`).
    fn serde_reads(data: &[u8]) -> Option<String> {
        serde_json::from_slice::<Chunk<'_>>(data)
            .ok()
            .map(|c| format!("{c:?}"))
    }

    fn events(file: &str) -> Vec<String> {
        let path = format!(
            "{}/../tests/fixtures/real-vllm/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(path)
            .unwrap()
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_recorded_vllm_event_is_read_here_as_serde_reads_it() {
        let mut read = 0;
        for file in [
            "chat-stream.sse",
            "completion-stream.sse",
            "chat-tool-call-stream.sse",
        ] {
            for e in events(file) {
                let fast = chunk(e.as_bytes()).unwrap_or_else(|| panic!("not read here: {e}"));
                assert_eq!(Some(format!("{fast:?}")), serde_reads(e.as_bytes()), "{e}");
                read += 1;
            }
        }
        assert!(read >= 25, "{read} events");
        // Log probabilities are serde's to build.
        let lp = events("chat-logprobs-stream.sse");
        assert!(lp.iter().any(|e| chunk(e.as_bytes()).is_none()));
    }

    #[test]
    fn texts_borrow_unless_they_had_escapes() {
        let c = chunk(br#"{"choices":[{"delta":{"content":"a\n\"b\"\\/"}}]}"#).unwrap();
        let delta = c.choice().unwrap().delta.as_ref().unwrap();
        let content = delta.content.value().unwrap();
        assert!(matches!(&content.0, Cow::Owned(s) if s == "a\n\"b\"\\/"));
        let utf8 = chunk("{\"choices\":[{\"text\":\"caf\u{e9} \u{1F600}\"}]}".as_bytes()).unwrap();
        let text = utf8.choice().unwrap().text.value().unwrap();
        assert!(matches!(text.0, Cow::Borrowed("caf\u{e9} \u{1F600}")));
    }

    #[test]
    fn a_run_ends_at_its_first_quote_backslash_or_control_character() {
        for (s, want) in [
            (&b"abc\"def"[..], Some(3)),
            (b"0123456789abcdef\\", Some(16)),
            (b"0123456\tx", Some(7)),
            (b"01234567\x1f", Some(8)),
            (b"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\"", Some(10)),
            (b"\x7f\x80\xff!#[]~ \x21\"", Some(10)),
            (b"no end at all, long enough", None),
            (b"", None),
        ] {
            assert_eq!(stop(s, 0), want, "{}", String::from_utf8_lossy(s));
            // from any place: the stop of the bytes from there on
            for from in 0..=s.len() {
                let rest = stop(&s[from..], 0).map(|w| w + from);
                assert_eq!(
                    stop(s, from),
                    rest,
                    "{} from {from}",
                    String::from_utf8_lossy(s)
                );
            }
        }
        // every byte, at every place in a word and after it, alone or before another stop
        for b in 0..=255u8 {
            for at in 0..12 {
                let mut s = vec![b'a'; 12];
                s[at] = b;
                let plain = !matches!(b, b'"' | b'\\' | 0..=0x1f);
                assert_eq!(stop(&s, 0), (!plain).then_some(at), "byte {b} at {at}");
                if let Some(next) = s.get_mut(at + 1) {
                    *next = b'\x01';
                    let want = if plain { at + 1 } else { at };
                    assert_eq!(stop(&s, 0), Some(want), "byte {b} at {at}, then 1");
                }
            }
        }
    }

    #[test]
    fn spaced_json_is_read_too() {
        let e = b" { \"choices\" : [ { \"delta\" : { \"content\" : \"x\" } , \"finish_reason\" : null } ] ,\n\t\"usage\" : { \"prompt_tokens\" : 3 , \"completion_tokens\" : null } } \n";
        let fast = chunk(e).unwrap();
        assert_eq!(Some(format!("{fast:?}")), serde_reads(e));
        assert_eq!(fast.usage.unwrap().prompt_tokens, Some(3));
    }

    #[test]
    fn what_serde_refuses_or_builds_itself_is_left_to_it() {
        for e in [
            // serde refuses these
            &br#"{"choices":[],"choices":[]}"#[..],
            br#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
            br#"{"usage":{"prompt_tokens":1.0}}"#,
            br#"{"usage":{"prompt_tokens":-1}}"#,
            br#"{"usage":{"prompt_tokens":012}}"#,
            br#"{"usage":{"prompt_tokens":99999999999999999999}}"#,
            br#"{"choices":[{"text":"a	b"}]}"#,
            br#"{"choices":[{"text":"\x"}]}"#,
            br#"{"id":"\u12"}"#,
            br#"{"id":1e}"#,
            br#"{"id":-}"#,
            br#"{"id":tru}"#,
            br#"{"choices":[],}"#,
            br#"{"choices":[1,]}"#,
            br#"{"choices":[]} x"#,
            br#"{"choices":[]"#,
            b"{\"choices\":[{\"text\":\"\xff\"}]}",
            br#"{"choices":{}}"#,
            br#"[]"#,
            b"",
            // serde reads these, and builds what is kept of them
            br#"{"error":{"message":"boom"}}"#,
            br#"{"choices":[{"logprobs":{"content":[]}}]}"#,
            br#"{"choices":[{"text":"\u00e9"}]}"#,
            br#"{"ch\u006fices":[]}"#,
            "{\"caf\u{e9}\":1}".as_bytes(),
        ] {
            assert!(
                chunk(e).is_none(),
                "read here: {}",
                String::from_utf8_lossy(e)
            );
        }
        // nesting deeper than the limit in a skipped member: serde's (it reads up to 128)
        let deep = format!(r#"{{"x":{}{}}}"#, "[".repeat(40), "]".repeat(40));
        assert!(chunk(deep.as_bytes()).is_none());
        assert!(serde_reads(deep.as_bytes()).is_some());
        let shallow = format!(r#"{{"x":{}{}}}"#, "[".repeat(20), "]".repeat(20));
        assert!(chunk(shallow.as_bytes()).is_some());
    }

    #[test]
    fn skipped_members_are_checked_as_serde_checks_them() {
        for e in [
            &br#"{"id":"x\"y\u00e9","n":-0.5e+3,"b":[true,false,null,{"k":[]}],"o":{}}"#[..],
            br#"{"n":0,"m":10.01,"e":1E9}"#,
        ] {
            let fast = chunk(e).unwrap();
            assert_eq!(Some(format!("{fast:?}")), serde_reads(e));
        }
    }
}
