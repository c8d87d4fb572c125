//! Timestamps and the temporal filter.
//!
//! Times are held as milliseconds since 1970-01-01T00:00:00Z in an `i64`. A hand-written
//! parser reads them because the attribute evaluator parses property strings on the hot path,
//! and it must neither allocate nor accept a different language from the SQL translation
//! (see `sql.rs`, which checks the same grammar before converting).

use serde_json::{Map, Value};

use crate::error::{FilterError, Result};

/// Milliseconds in a day.
pub(crate) const DAY_MS: i64 = 86_400_000;

/// A parsed timestamp: its first millisecond, and whether it was a bare date (which names
/// the whole day in interval relations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) ms: i64,
    pub(crate) date_only: bool,
}

impl Stamp {
    /// The last millisecond this timestamp covers: the same instant, or the end of the day.
    pub(crate) fn end(self) -> i64 {
        if self.date_only {
            self.ms + DAY_MS - 1
        } else {
            self.ms
        }
    }
}

/// Reads an RFC 3339 time (or a date, as its first millisecond) as milliseconds since the
/// Unix epoch; `None` when it is not one. The same reading temporal filters use.
pub fn parse_datetime_ms(s: &str) -> Option<i64> {
    parse_stamp(s).ok().map(|st| st.ms)
}

/// Parses `YYYY-MM-DD` or `YYYY-MM-DD(T| )HH:MM:SS[.fraction][Z|±HH:MM]`.
///
/// A time without an offset is read as UTC. Digits past the millisecond are dropped
/// (truncation, which is a floor because the fraction is never negative). Years run from
/// 0001 to 9999; leap seconds (`:60`) are refused because neither store can represent them.
pub(crate) fn parse_stamp(s: &str) -> std::result::Result<Stamp, &'static str> {
    let b = s.as_bytes();
    if b.len() < 10 {
        return Err("expected YYYY-MM-DD at the start");
    }
    let year = digits(b, 0, 4).ok_or("expected a 4-digit year")?;
    if b[4] != b'-' || b[7] != b'-' {
        return Err("expected YYYY-MM-DD at the start");
    }
    let month = digits(b, 5, 2).ok_or("expected a 2-digit month")?;
    let day = digits(b, 8, 2).ok_or("expected a 2-digit day")?;
    if year == 0 {
        return Err("year 0000 is not supported");
    }
    if !(1..=12).contains(&month) {
        return Err("month is outside 01..12");
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err("day does not exist in that month");
    }
    let days = days_from_civil(year, month, day);
    if b.len() == 10 {
        return Ok(Stamp {
            ms: days * DAY_MS,
            date_only: true,
        });
    }
    if b.len() < 19 || !(b[10] == b'T' || b[10] == b' ') || b[13] != b':' || b[16] != b':' {
        return Err("expected THH:MM:SS after the date");
    }
    let hour = digits(b, 11, 2).ok_or("expected a 2-digit hour")?;
    let minute = digits(b, 14, 2).ok_or("expected 2-digit minutes")?;
    let second = digits(b, 17, 2).ok_or("expected 2-digit seconds")?;
    if hour > 23 || minute > 59 || second > 59 {
        return Err("hour, minute or second out of range");
    }
    let mut pos = 19;
    let mut millis = 0i64;
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        let start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            if pos - start < 3 {
                millis = millis * 10 + i64::from(b[pos] - b'0');
            }
            pos += 1;
        }
        let n = pos - start;
        if n == 0 || n > 9 {
            return Err("expected 1 to 9 digits of fractional seconds");
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_min = match &b[pos..] {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let oh = digits(b, pos + 1, 2).ok_or("expected a ±HH:MM offset")?;
            let om = digits(b, pos + 4, 2).ok_or("expected a ±HH:MM offset")?;
            if oh > 23 || om > 59 {
                return Err("offset out of range");
            }
            let m = oh * 60 + om;
            if *sign == b'-' { -m } else { m }
        }
        _ => return Err("expected Z, ±HH:MM or nothing after the time"),
    };
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Ok(Stamp {
        ms: secs * 1000 + millis,
        date_only: false,
    })
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let mut v = 0i64;
    for &c in b.get(at..at + n)? {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
///
/// Counts in 400-year eras starting on March 1st, so February (and its leap day) falls at
/// the end of each counted year and needs no special case.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (m + 9) % 12; // March = 0 .. February = 11
    let day_of_year = (153 * shifted_month + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719468 = days from 0000-03-01 to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

/// Formats milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.sssZ`.
pub(crate) fn format_ms(ms: i64) -> String {
    let days = ms.div_euclid(DAY_MS);
    let rem = ms.rem_euclid(DAY_MS);
    // Inverse of `days_from_civil`, same era arithmetic.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// The time span a feature covers, read from its properties.
///
/// `datetime` (an instant, or a date meaning the whole day) wins when it is a string;
/// otherwise `start_datetime` / `end_datetime`, either of which may be absent (open end).
/// `None` when the feature has no usable time, including when a present value does not parse.
pub(crate) fn feature_span(props: &Map<String, Value>) -> Option<(i64, i64)> {
    if let Some(v) = props.get("datetime")
        && !v.is_null()
    {
        let s = parse_stamp(v.as_str()?).ok()?;
        return Some((s.ms, s.end()));
    }
    let start = match props.get("start_datetime") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_stamp(v.as_str()?).ok()?.ms),
    };
    let end = match props.get("end_datetime") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_stamp(v.as_str()?).ok()?.end()),
    };
    if start.is_none() && end.is_none() {
        return None;
    }
    Some((start.unwrap_or(i64::MIN), end.unwrap_or(i64::MAX)))
}

/// A time interval a feature's own time must intersect, as in OGC API Features' `datetime`
/// query parameter.
///
/// Accepted forms: an instant (`2018-02-12T23:20:50Z`), a date (`2018-02-12`, the whole day),
/// and `start/end` where either side may be `..` or empty for an open end. In an interval a
/// date as start means its first millisecond and a date as end its last, so
/// `2018-02-12/2018-02-12` is that whole day. Both ends are inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemporalFilter {
    start: Option<i64>,
    end: Option<i64>,
}

impl TemporalFilter {
    /// Parses an OGC `datetime` value.
    pub fn parse(s: &str) -> Result<Self> {
        let err = |reason: &str| FilterError::InvalidDatetime {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let t = s.trim();
        let Some((a, b)) = t.split_once('/') else {
            if t.is_empty() || t == ".." {
                return Err(err("an instant is required; use start/end for an interval"));
            }
            let stamp = parse_stamp(t).map_err(err)?;
            return Ok(Self {
                start: Some(stamp.ms),
                end: Some(stamp.end()),
            });
        };
        if b.contains('/') {
            return Err(err("an interval has exactly one '/'"));
        }
        let bound = |part: &str| -> Result<Option<Stamp>> {
            let part = part.trim();
            if part.is_empty() || part == ".." {
                Ok(None)
            } else {
                parse_stamp(part).map(Some).map_err(err)
            }
        };
        let start = bound(a)?.map(|s| s.ms);
        let end = bound(b)?.map(Stamp::end);
        if let (Some(a), Some(b)) = (start, end)
            && a > b
        {
            return Err(err("the interval starts after it ends"));
        }
        Ok(Self { start, end })
    }

    /// Builds a filter from milliseconds since the epoch (`None` = open end).
    pub fn from_ms(start: Option<i64>, end: Option<i64>) -> Result<Self> {
        if let (Some(a), Some(b)) = (start, end)
            && a > b
        {
            return Err(FilterError::InvalidDatetime {
                input: format!("{a}/{b}"),
                reason: "the interval starts after it ends".to_string(),
            });
        }
        Ok(Self { start, end })
    }

    /// Whether the feature's time (see the crate docs) intersects this interval.
    /// A feature without a time never matches.
    pub fn matches(&self, props: &Map<String, Value>) -> bool {
        match feature_span(props) {
            Some((fs, fe)) => self.intersects_ms(fs, fe),
            None => false,
        }
    }

    /// Whether the closed span `start..=end` (milliseconds) intersects this interval.
    pub fn intersects_ms(&self, start: i64, end: i64) -> bool {
        self.start.is_none_or(|s| end >= s) && self.end.is_none_or(|e| start <= e)
    }

    /// The interval in milliseconds since the epoch; `None` is an open end.
    pub fn interval_ms(&self) -> (Option<i64>, Option<i64>) {
        (self.start, self.end)
    }
}

impl std::fmt::Display for TemporalFilter {
    /// Renders the interval in the form [`TemporalFilter::parse`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = |v: Option<i64>| v.map_or_else(|| "..".to_string(), format_ms);
        if self.start.is_some() && self.start == self.end {
            return f.write_str(&side(self.start));
        }
        write!(f, "{}/{}", side(self.start), side(self.end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ms(s: &str) -> i64 {
        parse_stamp(s).unwrap().ms
    }

    #[test]
    fn parses_instants_and_dates() {
        assert_eq!(ms("1970-01-01T00:00:00Z"), 0);
        assert_eq!(ms("1970-01-01"), 0);
        assert_eq!(ms("2018-02-12T23:20:50Z"), 1_518_477_650_000);
        assert_eq!(ms("2018-02-12T23:20:50.52Z"), 1_518_477_650_520);
        assert_eq!(ms("2018-02-12 23:20:50.123456789Z"), 1_518_477_650_123);
        assert_eq!(
            ms("2018-02-12T23:20:50+01:00"),
            1_518_477_650_000 - 3_600_000
        );
        assert_eq!(
            ms("2018-02-12T23:20:50-00:30"),
            1_518_477_650_000 + 1_800_000
        );
        assert_eq!(ms("2018-02-12T23:20:50"), 1_518_477_650_000);
        assert_eq!(ms("1969-12-31T23:59:59.999Z"), -1);
        assert_eq!(ms("2000-02-29"), 951_782_400_000);
        assert_eq!(ms("0001-01-01"), -62_135_596_800_000);
        assert!(parse_stamp("2018-02-12").unwrap().date_only);
    }

    #[test]
    fn refuses_malformed_timestamps() {
        for bad in [
            "",
            "2018",
            "2018-2-12",
            "2018-13-01",
            "2019-02-29",
            "2018-04-31",
            "2018-02-12T24:00:00Z",
            "2018-02-12T23:60:00Z",
            "2018-02-12T23:59:60Z",
            "2018-02-12T23:59",
            "2018-02-12T23:59:59.Z",
            "2018-02-12T23:59:59.1234567891Z",
            "2018-02-12T23:59:59+0100",
            "2018-02-12T23:59:59ZZ",
            "2018-02-12X23:59:59Z",
            "0000-01-01",
            "yesterday",
        ] {
            assert!(parse_stamp(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn formats_round_trip() {
        for s in [
            "1970-01-01T00:00:00.000Z",
            "2018-02-12T23:20:50.520Z",
            "1969-12-31T23:59:59.999Z",
            "2000-02-29T12:00:00.000Z",
            "0001-01-01T00:00:00.000Z",
            "9999-12-31T23:59:59.999Z",
        ] {
            assert_eq!(format_ms(ms(s)), s);
        }
    }

    #[test]
    fn temporal_filter_forms() {
        let f = TemporalFilter::parse("2018-02-12T23:20:50Z").unwrap();
        assert_eq!(
            f.interval_ms(),
            (Some(1_518_477_650_000), Some(1_518_477_650_000))
        );
        let f = TemporalFilter::parse("2018-02-12T00:00:00Z/2018-03-18T12:31:12Z").unwrap();
        assert_eq!(f.interval_ms().0, Some(ms("2018-02-12T00:00:00Z")));
        assert_eq!(f.interval_ms().1, Some(ms("2018-03-18T12:31:12Z")));
        assert_eq!(
            TemporalFilter::parse("../2018-03-18T12:31:12Z")
                .unwrap()
                .interval_ms(),
            (None, Some(ms("2018-03-18T12:31:12Z")))
        );
        assert_eq!(
            TemporalFilter::parse("2018-02-12T00:00:00Z/")
                .unwrap()
                .interval_ms(),
            (Some(ms("2018-02-12T00:00:00Z")), None)
        );
        assert_eq!(
            TemporalFilter::parse("../..").unwrap().interval_ms(),
            (None, None)
        );
        let day = TemporalFilter::parse("2018-02-12").unwrap();
        assert_eq!(
            day.interval_ms(),
            (Some(ms("2018-02-12")), Some(ms("2018-02-13") - 1))
        );
        assert_eq!(
            TemporalFilter::parse("2018-02-12/2018-02-12").unwrap(),
            day,
            "a date as the end of an interval includes its whole day"
        );
        assert_eq!(
            day.to_string(),
            "2018-02-12T00:00:00.000Z/2018-02-12T23:59:59.999Z"
        );
        assert_eq!(
            TemporalFilter::parse(&day.to_string()).unwrap(),
            day,
            "Display output parses back"
        );
    }

    #[test]
    fn temporal_filter_errors_say_what_is_wrong() {
        let e = TemporalFilter::parse("2018-02-30T00:00:00Z").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid datetime '2018-02-30T00:00:00Z': day does not exist in that month"
        );
        let e = TemporalFilter::parse("2018-03-01/2018-02-01").unwrap_err();
        assert!(e.to_string().contains("starts after it ends"), "{e}");
        assert!(TemporalFilter::parse("a/b/c").is_err());
        assert!(TemporalFilter::parse("").is_err());
        assert!(TemporalFilter::parse("..").is_err());
        assert!(TemporalFilter::parse("2018-02-12T00:00:00Z/nope").is_err());
    }

    #[test]
    fn feature_time_sources() {
        let f = TemporalFilter::parse("2018-02-01T00:00:00Z/2018-02-28T00:00:00Z").unwrap();
        let props = |v: Value| v.as_object().unwrap().clone();
        assert!(f.matches(&props(json!({"datetime": "2018-02-10T00:00:00Z"}))));
        assert!(
            f.matches(&props(json!({"datetime": "2018-02-01T00:00:00Z"}))),
            "inclusive start"
        );
        assert!(
            f.matches(&props(json!({"datetime": "2018-02-28T00:00:00Z"}))),
            "inclusive end"
        );
        assert!(!f.matches(&props(json!({"datetime": "2018-03-10T00:00:00Z"}))));
        assert!(!f.matches(&props(json!({"datetime": "2018-01-31"}))));
        assert!(
            f.matches(&props(json!({"datetime": "2018-02-28"}))),
            "a date is its whole day"
        );
        assert!(
            !f.matches(&props(json!({"name": "x"}))),
            "no time, no match"
        );
        assert!(!f.matches(&props(json!({"datetime": "garbage"}))));
        assert!(!f.matches(&props(json!({"datetime": 12}))));
        assert!(
            f.matches(&props(
                json!({"datetime": null, "start_datetime": "2018-01-01T00:00:00Z"})
            )),
            "open end"
        );
        assert!(
            f.matches(&props(json!({"end_datetime": "2018-02-01T00:00:00Z"}))),
            "open start"
        );
        assert!(!f.matches(&props(json!({"end_datetime": "2018-01-31T23:59:59Z"}))));
        assert!(!f.matches(&props(json!({
            "start_datetime": "2018-03-01T00:00:00Z", "end_datetime": "2018-04-01T00:00:00Z"
        }))));
        assert!(
            f.matches(&props(json!({
                "start_datetime": "2018-01-01T00:00:00Z", "end_datetime": "2018-04-01T00:00:00Z"
            }))),
            "a feature interval covering the filter"
        );
        let open = TemporalFilter::parse("../..").unwrap();
        assert!(open.matches(&props(json!({"datetime": "1900-01-01T00:00:00Z"}))));
        assert!(!open.matches(&props(json!({}))));
    }
}
