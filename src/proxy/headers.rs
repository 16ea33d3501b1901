//! Header hygiene shared by both directions: hop-by-hop headers (RFC 9110 §7.6.1) are
//! dropped in one pass, including those a `Connection` header names; small numbers become
//! header values without formatting.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, TE, TRANSFER_ENCODING, UPGRADE,
};

// Names resolved once: a `&str` name is parsed again on every map lookup.
static HOP_BY_HOP: [HeaderName; 4] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("proxy-authenticate"),
    HeaderName::from_static("proxy-authorization"),
];

/// Which hop-by-hop names a message carries, as bits: [`HOP_BY_HOP`] by index, then
/// `connection`, `transfer-encoding`, `upgrade` and `te`. Names are matched as text (a
/// length switch, then a compare) rather than by equality with each `HeaderName`.
fn hop_by_hop_present(headers: &HeaderMap) -> u8 {
    let mut found = 0u8;
    for name in headers.keys() {
        let bit = match name.as_str() {
            "keep-alive" => 0,
            "proxy-connection" => 1,
            "proxy-authenticate" => 2,
            "proxy-authorization" => 3,
            "connection" => 4,
            "transfer-encoding" => 5,
            "upgrade" => 6,
            "te" => 7,
            _ => continue,
        };
        found |= 1 << bit;
    }
    found
}

/// What a message's headers say about its connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionHints {
    /// A `close` token in a `Connection` header.
    pub close: bool,
    /// A `transfer-encoding` header.
    pub transfer_encoding: bool,
}

/// [`ConnectionHints`] of `headers`: the same one scan of the names as
/// [`strip_hop_by_hop`], the `Connection` values read only when there is one.
pub fn connection_hints(headers: &HeaderMap) -> ConnectionHints {
    let found = hop_by_hop_present(headers);
    let close = found & (1 << 4) != 0
        && headers.get_all(CONNECTION).iter().any(|value| {
            value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
        });
    ConnectionHints {
        close,
        transfer_encoding: found & (1 << 5) != 0,
    }
}

/// Removes hop-by-hop headers. `te: trailers` survives: gRPC needs it end to end.
///
/// One scan of the names first, then a removal only for what is there: most messages
/// carry none, or only `connection: keep-alive`, and a scan is far cheaper than a hashed
/// lookup per hop-by-hop name.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let found = hop_by_hop_present(headers);
    if found == 0 {
        return;
    }
    if found & (1 << 4) != 0 {
        strip_connection(headers);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if found & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if found & (1 << 5) != 0 {
        headers.remove(TRANSFER_ENCODING);
    }
    if found & (1 << 6) != 0 {
        headers.remove(UPGRADE);
    }
    if found & (1 << 7) != 0 {
        let trailers = headers
            .get(TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        if !trailers {
            headers.remove(TE);
        }
    }
}

/// Removes `Connection` (every instance) and the names it lists (`te` excepted, see above).
fn strip_connection(headers: &mut HeaderMap) {
    // The common tokens name no header, or one removed anyway: nothing to parse or collect.
    let names_a_header = |token: &&str| {
        !(token.is_empty()
            || token.eq_ignore_ascii_case("keep-alive")
            || token.eq_ignore_ascii_case("close")
            || token.eq_ignore_ascii_case("upgrade")
            || token.eq_ignore_ascii_case("te"))
    };
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(str::trim)
        .filter(names_a_header)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    headers.remove(CONNECTION);
    for name in listed {
        headers.remove(name);
    }
}

/// A small number as a header value: 0..=99 come from a static table (no allocation, the
/// common case for attempt counts and upstream milliseconds), larger ones are formatted.
pub fn number(n: u64) -> HeaderValue {
    macro_rules! digits {
        ($($d:literal)*) => { [$(HeaderValue::from_static($d)),*] };
    }
    static SMALL: [HeaderValue; 100] = digits!(
        "0" "1" "2" "3" "4" "5" "6" "7" "8" "9" "10" "11" "12" "13" "14" "15" "16" "17" "18"
        "19" "20" "21" "22" "23" "24" "25" "26" "27" "28" "29" "30" "31" "32" "33" "34" "35"
        "36" "37" "38" "39" "40" "41" "42" "43" "44" "45" "46" "47" "48" "49" "50" "51" "52"
        "53" "54" "55" "56" "57" "58" "59" "60" "61" "62" "63" "64" "65" "66" "67" "68" "69"
        "70" "71" "72" "73" "74" "75" "76" "77" "78" "79" "80" "81" "82" "83" "84" "85" "86"
        "87" "88" "89" "90" "91" "92" "93" "94" "95" "96" "97" "98" "99"
    );
    match usize::try_from(n).ok().and_then(|i| SMALL.get(i)) {
        Some(v) => v.clone(),
        None => HeaderValue::from(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_connection_listed_ones_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("te", HeaderValue::from_static("gzip"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-end-to-end"));
    }

    #[test]
    fn every_connection_header_counts_and_common_tokens_name_nothing() {
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("keep-alive"));
        h.append("connection", HeaderValue::from_static("close, x-second"));
        h.insert("x-second", HeaderValue::from_static("1"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "te"]);
    }

    #[test]
    fn numbers_are_their_decimal_text() {
        for n in [0, 7, 42, 99, 100, 12_345] {
            assert_eq!(number(n), n.to_string().as_str());
        }
    }

    #[test]
    fn te_trailers_survives_for_grpc() {
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get("te").unwrap(), "trailers");
    }
}
