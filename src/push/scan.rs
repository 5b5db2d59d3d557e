//! Counting a protobuf message's fields before decoding it, so that a small body cannot make a
//! large allocation: 16 MB of two-byte empty entries would otherwise become hundreds of megabytes
//! of decoded structs. Requests past these bounds are refused (400); real senders stay far below
//! them (Prometheus sends 2,000 samples per request by default).

use prost::encoding::{WireType, decode_key, decode_varint};

use super::split::SplitError;

/// Most series (1.0, 2.0) or resources (OTLP) in one request.
pub const MAX_SERIES: usize = 200_000;
/// Most metadata entries in one 1.0 request.
pub const MAX_METADATA: usize = 200_000;
/// Most labels of one series (Mimir's default limit is 30).
pub const MAX_LABELS: usize = 256;
/// Most symbols in one 2.0 request.
pub const MAX_SYMBOLS: usize = 1_000_000;

/// Walks the top-level fields of `buf`, calling `seen(tag, bytes)` for each: `bytes` is the
/// field's content for a length-delimited field, `None` for the others (which are skipped).
fn walk<'a>(
    mut buf: &'a [u8],
    mut seen: impl FnMut(u32, Option<&'a [u8]>),
) -> Result<(), SplitError> {
    let bad = |e: prost::DecodeError| SplitError::Decode(e.to_string());
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).map_err(bad)?;
        let n = match wire {
            WireType::Varint => {
                decode_varint(&mut buf).map_err(bad)?;
                seen(tag, None);
                continue;
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => usize::try_from(decode_varint(&mut buf).map_err(bad)?)
                .map_err(|_| SplitError::Decode("a field is too long".into()))?,
            WireType::StartGroup | WireType::EndGroup => {
                return Err(SplitError::Decode(
                    "protobuf groups are not used here".into(),
                ));
            }
        };
        let (Some(field), Some(rest)) = (buf.get(..n), buf.get(n..)) else {
            return Err(SplitError::Decode("a field is cut off".into()));
        };
        seen(tag, (wire == WireType::LengthDelimited).then_some(field));
        buf = rest;
    }
    Ok(())
}

/// How many times each of `tags` occurs at the top level of `buf`.
pub fn count(buf: &[u8], tags: &[u32]) -> Result<Vec<usize>, SplitError> {
    let mut counts = vec![0; tags.len()];
    walk(buf, |tag, _| {
        if let Some(i) = tags.iter().position(|t| *t == tag) {
            counts[i] += 1;
        }
    })?;
    Ok(counts)
}

/// The contents of every length-delimited field `tag` at the top level of `buf`, for counting
/// inside an embedded message.
pub fn embedded(buf: &[u8], tag: u32) -> Result<Vec<&[u8]>, SplitError> {
    let mut out = Vec::new();
    walk(buf, |t, field| {
        if let Some(field) = field.filter(|_| t == tag) {
            out.push(field);
        }
    })?;
    Ok(out)
}

/// Refuses `what` past `max`.
pub fn bound(n: usize, max: usize, what: &str) -> Result<(), SplitError> {
    if n > max {
        return Err(SplitError::Decode(format!(
            "{n} {what} in one request; at most {max} are accepted"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_without_decoding_them() {
        // field 1 (len 2), field 3 (len 0), field 2 varint, field 1 (len 0)
        let buf = [0x0a, 2, b'a', b'b', 0x1a, 0, 0x10, 0x96, 0x01, 0x0a, 0];
        assert_eq!(count(&buf, &[1, 3, 9]).unwrap(), [2, 1, 0]);
        assert!(count(&[0x0a, 5, b'a'], &[1]).is_err(), "cut off");
        assert!(
            bound(3, 2, "series")
                .unwrap_err()
                .to_string()
                .contains("at most 2")
        );
    }
}
