//! Scalar value types of the YAML contract: human durations, byte sizes, `${ENV}`-expanded
//! text, secrets. Each validates itself while deserializing, so a bad value is reported with
//! the line and column it came from.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written the human way: `250ms`, `5s`, `1m30s`, `24h`, or `0s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    /// Shorthand for a whole number of seconds.
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    /// Shorthand for a whole number of milliseconds.
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl Dur {
    /// The longest duration any key accepts: 365 days. Nothing meshlet times is meant to
    /// last longer; a larger value is a typo (`1000d` for `1000s`), and a bound keeps
    /// every deadline and `Instant` addition far from overflow.
    pub const MAX: Dur = Dur(Duration::from_secs(365 * 24 * 3600));
}

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "0" {
            return Ok(Dur(Duration::ZERO));
        }
        // humantime panics (`Duration::new` overflowing) on a sum of spans that reaches
        // u64::MAX seconds (found by fuzzing): anything far over the bound is refused first.
        if upper_bound_secs(s).is_some_and(|secs| secs > 2.0 * Dur::MAX.0.as_secs_f64()) {
            return Err(format!(
                "duration `{s}` is longer than 365 days, the most any key accepts"
            ));
        }
        let d = humantime::parse_duration(s).map_err(|e| {
            format!("invalid duration `{s}` ({e}); expected e.g. `250ms`, `5s`, `1m`")
        })?;
        if d > Dur::MAX.0 {
            return Err(format!(
                "duration `{s}` is longer than 365 days, the most any key accepts"
            ));
        }
        Ok(Dur(d))
    }
}

/// An upper bound of what a humantime duration (`1h 30m`, `0.5s`, `2days`) adds up to,
/// in seconds, from its numbers and unit words alone: each span's number rounded up times
/// its unit (humantime's unit words; it stops with an error at any other, so that span adds
/// nothing). `None` when the text is not spans (humantime then reports it); nothing here
/// can overflow.
fn upper_bound_secs(s: &str) -> Option<f64> {
    let mut total = 0.0_f64;
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let whole = rest[..number_len].split('.').next().unwrap_or("");
        let number = whole.parse::<f64>().unwrap_or(0.0) + 1.0;
        rest = rest[number_len..].trim_start();
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "nanos" | "nsec" | "ns" => 1e-9,
            "usec" | "us" | "µs" => 1e-6,
            "millis" | "msec" | "ms" => 1e-3,
            "seconds" | "second" | "secs" | "sec" | "s" => 1.0,
            "minutes" | "minute" | "min" | "mins" | "m" => 60.0,
            "hours" | "hour" | "hr" | "hrs" | "h" => 3600.0,
            "days" | "day" | "d" => 86_400.0,
            "weeks" | "week" | "wk" | "wks" | "w" => 604_800.0,
            "months" | "month" | "M" => 2_630_016.0,
            "years" | "year" | "yr" | "yrs" | "y" => 31_557_600.0,
            // humantime stops at this span with its own error: it adds nothing.
            _ => 0.0,
        };
        total += number * unit;
        rest = rest[unit_len..].trim_start();
    }
    Some(total)
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as `250ms` or `5s`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                if v == 0 {
                    Ok(Dur(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "a bare number `{v}` is ambiguous; write a unit, e.g. `{v}s` or `{v}ms`"
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_zero() {
            return s.serialize_str("0s");
        }
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A size in bytes: `512`, `64KiB`, `16MiB`, `1GiB` (binary), or `1KB`/`1MB` (decimal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` kibibytes.
    pub const fn kib(n: u64) -> Self {
        ByteSize(n * 1024)
    }
    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
    /// The size as a `usize`, saturating on 32-bit targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || format!("invalid size `{s}`; expected e.g. `512`, `64KiB`, `16MiB`");
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as `64KiB` or `16MiB`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let b = self.0;
        let text = if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            format!("{}MiB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            format!("{}KiB", b >> 10)
        } else {
            b.to_string()
        };
        s.serialize_str(&text)
    }
}

/// Replaces every `${NAME}` (or `${NAME:-fallback}`) in `raw` with the environment's value.
///
/// A missing variable without a fallback is an error that names it: a sidecar that silently
/// sent `Bearer ` to a partner API would be worse than one that refuses to start.
pub fn expand_env(raw: &str) -> Result<String, String> {
    expand_with(raw, |name| std::env::var(name).ok())
}

pub(crate) fn expand_with(
    raw: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in `{raw}`"))?;
        let expr = &after[..end];
        let (name, fallback) = match expr.split_once(":-") {
            Some((n, f)) => (n, Some(f)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name `{name}` in `${{{expr}}}`"));
        }
        match (lookup(name), fallback) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(f)) => out.push_str(f),
            (None, None) => {
                return Err(format!(
                    "environment variable `{name}` is not set (write `${{{name}:-default}}` for an optional one)"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A string with `${ENV}` references expanded at load time.
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Text(pub String);

impl Text {
    /// The expanded text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(s.to_owned())
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env(&raw).map(Text).map_err(de::Error::custom)
    }
}

/// A secret value: expanded like [`Text`], never shown by `Debug`, logs or `/v1/config`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// The secret itself; call only where it is used, never where it is printed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        // The error names the variable, never the value.
        expand_env(&raw).map(Secret).map_err(de::Error::custom)
    }
}

/// One secret or a list of them (key rotation: the first signs, all verify).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secrets(pub Vec<Secret>);

impl<'de> Deserialize<'de> for Secrets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(Secret),
            Many(Vec<Secret>),
        }
        let list = match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        if list.is_empty() || list.iter().any(|s| s.expose().is_empty()) {
            return Err(de::Error::custom("secrets must be non-empty"));
        }
        Ok(Secrets(list))
    }
}

/// A value parsed with `FromStr` after `${ENV}` expansion (socket addresses, URLs, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed<T>(pub T);

impl<'de, T> Deserialize<'de> for Parsed<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let text = expand_env(&raw).map_err(de::Error::custom)?;
        text.parse()
            .map(Parsed)
            .map_err(|e| de::Error::custom(format!("`{text}`: {e}")))
    }
}

impl<T: fmt::Display> Serialize for Parsed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_human_forms() {
        assert_eq!("250ms".parse::<Dur>().unwrap(), Dur::millis(250));
        assert_eq!("5s".parse::<Dur>().unwrap(), Dur::secs(5));
        assert_eq!("1m30s".parse::<Dur>().unwrap(), Dur::secs(90));
        assert_eq!("0s".parse::<Dur>().unwrap(), Dur::secs(0));
        assert!("5 parsecs".parse::<Dur>().is_err());
    }

    #[test]
    fn durations_above_365_days_are_refused() {
        assert_eq!("365d".parse::<Dur>().unwrap(), Dur::MAX);
        let e = "366d".parse::<Dur>().unwrap_err();
        assert!(e.contains("longer than 365 days"), "{e}");
        assert!("1000d".parse::<Dur>().is_err());
        assert!("100years".parse::<Dur>().is_err());
    }

    #[test]
    fn spans_that_add_up_to_u64_seconds_are_refused_not_a_panic() {
        // Found by fuzzing (target `units`): humantime's `Duration::new` overflowed.
        let e = "0.1s018446744073709551615.4s0.5s5114s5ss"
            .parse::<Dur>()
            .unwrap_err();
        assert!(e.contains("longer than 365 days"), "{e}");
        let e = "584542046090y 8051615s 999999999ns 1ns"
            .parse::<Dur>()
            .unwrap_err();
        assert!(e.contains("longer than 365 days"), "{e}");
        // The bound never stands in for humantime's own errors.
        let e = "5".parse::<Dur>().unwrap_err();
        assert!(e.contains("invalid duration"), "{e}");
        assert_eq!("1h 30m".parse::<Dur>().unwrap(), Dur::secs(5400));
        assert_eq!("0.5s".parse::<Dur>().unwrap(), Dur::millis(500));
        assert!("2months".parse::<Dur>().is_ok());
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!("64KiB".parse::<ByteSize>().unwrap(), ByteSize(65536));
        assert_eq!("16MiB".parse::<ByteSize>().unwrap(), ByteSize(16 << 20));
        assert_eq!("1KB".parse::<ByteSize>().unwrap(), ByteSize(1000));
        assert_eq!("512".parse::<ByteSize>().unwrap(), ByteSize(512));
        assert!("12 apples".parse::<ByteSize>().is_err());
    }

    #[test]
    fn env_expansion_names_the_missing_variable() {
        let env = |n: &str| (n == "HOST").then(|| "10.0.0.7".to_owned());
        assert_eq!(expand_with("${HOST}:15006", env).unwrap(), "10.0.0.7:15006");
        assert_eq!(expand_with("${NOPE:-x}", env).unwrap(), "x");
        let err = expand_with("Bearer ${WEATHER_KEY}", env).unwrap_err();
        assert!(err.contains("WEATHER_KEY"), "{err}");
        assert!(expand_with("${BROKEN", env).is_err());
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<redacted>\"");
    }
}
