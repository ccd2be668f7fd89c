//! Human-friendly units in the configuration: durations (`"30s"`, `"1h30m"`, Go's syntax,
//! which Ollama's `keep_alive` uses too) and byte sizes (`"32MiB"`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("empty value")]
    Empty,
    #[error("`{0}` is not a duration: write a number and a unit, e.g. \"30s\", \"5m\", \"1h30m\" (units: ns, us, ms, s, m, h)")]
    BadDuration(String),
    #[error("`{0}` is negative: a duration here must be zero or more")]
    NegativeDuration(String),
    #[error("`{0}` is not a size: write bytes or a number and a unit, e.g. \"512KiB\", \"32MiB\", \"8GiB\"")]
    BadSize(String),
    #[error("`{0}` is too large")]
    Overflow(String),
}

/// A signed Go-style duration, e.g. `-1s`, `1.5h`, `1h30m`, `300ms`. Returned as signed
/// nanoseconds: callers decide what a negative value means (Ollama's keep_alive: forever).
pub fn parse_go_duration_nanos(text: &str) -> Result<i128, UnitError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(UnitError::Empty);
    }
    let bad = || UnitError::BadDuration(text.to_string());
    let (negative, mut rest) = match (s.strip_prefix('-'), s.strip_prefix('+')) {
        (Some(r), _) => (true, r),
        (None, Some(r)) => (false, r),
        (None, None) => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let (number, after) = rest.split_at_checked(num_len).ok_or_else(bad)?;
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at_checked(unit_len).ok_or_else(bad)?;
        rest = after;
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += value * scale;
    }
    if !total.is_finite() || total > 9.2e18 {
        return Err(UnitError::Overflow(text.to_string()));
    }
    let nanos = total.round() as i128;
    Ok(if negative { -nanos } else { nanos })
}

/// A non-negative duration for the configuration; in TOML a string (`"30s"`) or a number of
/// seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn from_secs(secs: u64) -> Self {
        HumanDuration(Duration::from_secs(secs))
    }

    pub fn parse(text: &str) -> Result<Self, UnitError> {
        let nanos = parse_go_duration_nanos(text)?;
        let nanos = u64::try_from(nanos).map_err(|_| UnitError::NegativeDuration(text.into()))?;
        Ok(HumanDuration(Duration::from_nanos(nanos)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            let s = d.as_secs();
            if s != 0 && s % 3600 == 0 {
                write!(f, "{}h", s / 3600)
            } else if s != 0 && s % 60 == 0 {
                write!(f, "{}m", s / 60)
            } else {
                write!(f, "{s}s")
            }
        } else if d.subsec_nanos() % 1_000_000 == 0 {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a duration such as \"30s\", \"5m\" or \"1h30m\", or a number of seconds",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                HumanDuration::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                u64::try_from(v)
                    .map(HumanDuration::from_secs)
                    .map_err(|_| E::custom(UnitError::NegativeDuration(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                Ok(HumanDuration::from_secs(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<HumanDuration, E> {
                Duration::try_from_secs_f64(v)
                    .map(HumanDuration)
                    .map_err(|_| E::custom(UnitError::NegativeDuration(v.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

/// A size in bytes; in TOML a number of bytes or a string with a unit (`"32MiB"`, `"1GB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const KIB: u64 = 1024;
    pub const MIB: u64 = 1024 * 1024;
    pub const GIB: u64 = 1024 * 1024 * 1024;

    pub fn parse(text: &str) -> Result<Self, UnitError> {
        let s = text.trim();
        if s.is_empty() {
            return Err(UnitError::Empty);
        }
        let bad = || UnitError::BadSize(text.to_string());
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" => Self::KIB,
            "KB" | "kB" => 1000,
            "M" | "MiB" => Self::MIB,
            "MB" => 1000 * 1000,
            "G" | "GiB" => Self::GIB,
            "GB" => 1000 * 1000 * 1000,
            "T" | "TiB" => Self::GIB * 1024,
            "TB" => 1000 * 1000 * 1000 * 1000,
            _ => return Err(bad()),
        };
        let bytes = value * scale as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(UnitError::Overflow(text.to_string()));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, scale) in [("GiB", Self::GIB), ("MiB", Self::MIB), ("KiB", Self::KIB)] {
            if b != 0 && b % scale == 0 {
                return write!(f, "{}{unit}", b / scale);
            }
        }
        write!(f, "{b}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"32MiB\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(UnitError::BadSize(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// How long an idle model stays loaded: Ollama's `keep_alive`. In TOML and JSON a number of
/// seconds or a Go duration string; negative means forever, 0 means unload once idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    Forever,
    For(Duration),
}

impl KeepAlive {
    pub fn parse(text: &str) -> Result<Self, UnitError> {
        let text = text.trim();
        // Ollama also accepts a bare number of seconds as a string.
        if let Ok(secs) = text.parse::<f64>() {
            return Ok(Self::from_secs_f64(secs));
        }
        let nanos = parse_go_duration_nanos(text)?;
        Ok(match u64::try_from(nanos) {
            Ok(n) => KeepAlive::For(Duration::from_nanos(n)),
            Err(_) => KeepAlive::Forever,
        })
    }

    pub fn from_secs_f64(secs: f64) -> Self {
        if secs < 0.0 || !secs.is_finite() {
            KeepAlive::Forever
        } else {
            KeepAlive::For(Duration::from_secs_f64(secs.min(1e12)))
        }
    }
}

impl fmt::Display for KeepAlive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepAlive::Forever => f.write_str("-1"),
            KeepAlive::For(d) => HumanDuration(*d).fmt(f),
        }
    }
}

impl Serialize for KeepAlive {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeepAlive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeepAlive;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a keep_alive: seconds, or a duration such as \"5m\" (negative = forever)",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeepAlive, E> {
                KeepAlive::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeepAlive, E> {
                Ok(KeepAlive::from_secs_f64(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeepAlive, E> {
                Ok(KeepAlive::from_secs_f64(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeepAlive, E> {
                Ok(KeepAlive::from_secs_f64(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// RFC 3339 in UTC with millisecond precision.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration_nanos("0"), Ok(0));
        assert_eq!(parse_go_duration_nanos("5m"), Ok(300_000_000_000));
        assert_eq!(parse_go_duration_nanos("1h30m"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration_nanos("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration_nanos("-1s"), Ok(-1_000_000_000));
        assert_eq!(parse_go_duration_nanos("250ms"), Ok(250_000_000));
        assert_eq!(parse_go_duration_nanos("2us"), Ok(2_000));
        for bad in ["", "5", "m", "5x", "1h30", "--1s", "1.2.3s", "s5"] {
            assert!(parse_go_duration_nanos(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn human_duration_rejects_negative_and_round_trips() {
        assert_eq!(
            HumanDuration::parse("-5s"),
            Err(UnitError::NegativeDuration("-5s".into()))
        );
        for text in ["30s", "5m", "2h", "250ms", "0s"] {
            let d = HumanDuration::parse(text).unwrap();
            assert_eq!(d.to_string(), text);
        }
        assert_eq!(HumanDuration::parse("90s").unwrap().to_string(), "90s");
        assert_eq!(HumanDuration::parse("120s").unwrap().to_string(), "2m");
    }

    #[test]
    fn keep_alive_like_ollama() {
        let five = KeepAlive::For(Duration::from_secs(300));
        assert_eq!(KeepAlive::parse("5m"), Ok(five));
        assert_eq!(KeepAlive::parse("300"), Ok(five));
        assert_eq!(KeepAlive::parse("0"), Ok(KeepAlive::For(Duration::ZERO)));
        assert_eq!(KeepAlive::parse("-1"), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::parse("-5m"), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::from_secs_f64(-1.0), KeepAlive::Forever);
        assert!(KeepAlive::parse("soon").is_err());
        let json: KeepAlive = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(json, KeepAlive::For(Duration::from_secs(5400)));
        let json: KeepAlive = serde_json::from_str("-1").unwrap();
        assert_eq!(json, KeepAlive::Forever);
        assert_eq!(KeepAlive::Forever.to_string(), "-1");
        assert_eq!(five.to_string(), "5m");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("32MiB"), Ok(ByteSize(32 * ByteSize::MIB)));
        assert_eq!(ByteSize::parse("1GB"), Ok(ByteSize(1_000_000_000)));
        assert_eq!(ByteSize::parse("1.5KiB"), Ok(ByteSize(1536)));
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("").is_err());
        assert_eq!(ByteSize(8 * ByteSize::GIB).to_string(), "8GiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }
}
