//! Reading Redis's replies to the delivery steps: the entries the takeover and redelivery
//! scripts claimed, each with Redis's delivery counter, and the key/value pairs of XINFO.

use redis::Value;

use crate::events::envelope::{as_array, as_int, as_string, parse_entry, Entry};

/// The takeover script's reply: the cursor of the next sweep (`0-0` once a sweep went
/// through every pending entry) and the entries claimed, with their delivery counters.
pub(super) fn claimed(reply: &Value) -> Option<(String, Vec<(Entry, u64)>)> {
    let [next, claimed] = as_array(reply).and_then(|a| <&[Value; 2]>::try_from(a).ok())?;
    let cursor = as_string(next).unwrap_or_else(|| "0-0".to_owned());
    let entries = as_array(claimed)
        .unwrap_or_default()
        .iter()
        .filter_map(|item| {
            let parts = as_array(item)?;
            let entry = parse_entry(&Value::Array(parts.get(..2)?.to_vec()))?;
            let deliveries = as_int(parts.get(2)?)?.max(1) as u64;
            Some((entry, deliveries))
        })
        .collect();
    Some((cursor, entries))
}

/// The redelivery script's reply: the entry claimed again and its delivery counter, or
/// `None` when it is no longer pending for this consumer.
pub(super) fn redelivered(reply: &Value) -> Option<(Entry, u64)> {
    let parts = as_array(reply)?;
    let entry = parts.first().and_then(parse_entry);
    let deliveries = parts.get(1).and_then(as_int);
    entry.zip(deliveries.map(|d| d.max(1) as u64))
}

/// Key/value pairs of a RESP2 flat array or a RESP3 map.
pub(super) fn pairs(value: &Value) -> Vec<(String, &Value)> {
    match value {
        Value::Map(kv) => kv
            .iter()
            .filter_map(|(k, v)| Some((as_string(k)?, v)))
            .collect(),
        other => as_array(other)
            .unwrap_or_default()
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((as_string(k)?, v)),
                _ => None,
            })
            .collect(),
    }
}
