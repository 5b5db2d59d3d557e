//! A decoder for Prometheus XOR chunks (`tsdb/chunkenc/xor.go`), the chunks of a streamed remote
//! read response.
//!
//! Layout: a 2-byte big-endian sample count, then a bit stream (most significant bit first):
//! - sample 0: timestamp as a signed varint, value as 64 raw bits;
//! - sample 1: timestamp delta as an unsigned varint, value XOR-encoded;
//! - later samples: delta-of-delta in buckets (`0`; `10`+14 bits; `110`+17; `1110`+20;
//!   `1111`+64), value XOR-encoded.
//!
//! A value is XOR-encoded against the previous one: `0` = same value; `10` = the meaningful bits
//! fit the previous leading/trailing-zero window; `11` + 5 bits leading zeros + 6 bits length
//! (0 meaning 64) + the bits = a new window. Values are kept as raw bits, so stale markers (a
//! special NaN) survive decoding unchanged.

struct Bits<'a> {
    data: &'a [u8],
    /// Position in bits.
    pos: usize,
}

impl Bits<'_> {
    fn end(&self) -> String {
        format!("bit stream ends at bit {}", self.pos)
    }

    fn bit(&mut self) -> Result<bool, String> {
        let byte = self.data.get(self.pos / 8).ok_or_else(|| self.end())?;
        let bit = byte & (0x80 >> (self.pos % 8)) != 0;
        self.pos += 1;
        Ok(bit)
    }

    /// The next `n` (at most 64) bits as an unsigned number, a byte at a time.
    fn bits(&mut self, n: u32) -> Result<u64, String> {
        if self.pos + n as usize > self.data.len() * 8 {
            return Err(self.end());
        }
        let mut v = 0u64;
        let mut left = n;
        while left > 0 {
            let byte = self.data[self.pos / 8];
            let offset = (self.pos % 8) as u32;
            let avail = 8 - offset;
            let take = avail.min(left);
            let chunk = (u32::from(byte) >> (avail - take)) & ((1u32 << take) - 1);
            v = (v << take) | u64::from(chunk);
            self.pos += take as usize;
            left -= take;
        }
        Ok(v)
    }

    fn uvarint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.bits(8)?;
            value |= (b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("overlong varint".into())
    }

    fn varint(&mut self) -> Result<i64, String> {
        let u = self.uvarint()?;
        // Zig-zag, as Go's binary.ReadVarint.
        let x = (u >> 1) as i64;
        Ok(if u & 1 != 0 { !x } else { x })
    }
}

/// Previous value and XOR window while reading values.
struct ValueState {
    bits: u64,
    leading: u32,
    trailing: u32,
}

impl ValueState {
    fn read(&mut self, r: &mut Bits<'_>) -> Result<f64, String> {
        if r.bit()? {
            if r.bit()? {
                self.leading = r.bits(5)? as u32;
                let mut significant = r.bits(6)? as u32;
                if significant == 0 {
                    significant = 64;
                }
                self.trailing = 64u32
                    .checked_sub(self.leading + significant)
                    .ok_or("XOR window wider than 64 bits")?;
            }
            let significant = 64 - self.leading - self.trailing;
            let delta = r.bits(significant)?;
            self.bits ^= delta << self.trailing;
        }
        Ok(f64::from_bits(self.bits))
    }
}

/// The number of samples an XOR chunk says it holds (its first two bytes).
pub fn sample_count(data: &[u8]) -> Result<usize, String> {
    match *data {
        [hi, lo, ..] => Ok(usize::from(u16::from_be_bytes([hi, lo]))),
        _ => Err(format!("{} bytes is too short for a chunk", data.len())),
    }
}

/// Calls `each(timestamp_ms, value)` for every sample of an XOR chunk, in order.
pub fn decode_each(data: &[u8], mut each: impl FnMut(i64, f64)) -> Result<(), String> {
    let count = sample_count(data)?;
    if count == 0 {
        return Ok(());
    }
    let mut r = Bits {
        data: &data[2..],
        pos: 0,
    };
    let mut t = r.varint()?;
    let mut value = ValueState {
        bits: r.bits(64)?,
        leading: 0,
        trailing: 0,
    };
    each(t, f64::from_bits(value.bits));
    let mut delta: i64 = 0;
    for i in 1..count {
        if i == 1 {
            delta = r.uvarint()? as i64;
        } else {
            let mut prefix = 0u8;
            for _ in 0..4 {
                prefix <<= 1;
                if !r.bit()? {
                    break;
                }
                prefix |= 1;
            }
            let dod = match prefix {
                0b0 => 0,
                0b10 => signed(r.bits(14)?, 14),
                0b110 => signed(r.bits(17)?, 17),
                0b1110 => signed(r.bits(20)?, 20),
                _ => r.bits(64)? as i64,
            };
            delta = delta.wrapping_add(dod);
        }
        t = t.wrapping_add(delta);
        let v = value.read(&mut r)?;
        each(t, v);
    }
    Ok(())
}

/// Every (timestamp ms, value) in an XOR chunk.
pub fn decode(data: &[u8]) -> Result<Vec<(i64, f64)>, String> {
    let mut out = Vec::with_capacity(sample_count(data)?);
    decode_each(data, |t, v| out.push((t, v)))?;
    Ok(out)
}

/// An `n`-bit delta-of-delta as the encoder wrote it: values above 2^(n-1) are negative.
fn signed(bits: u64, n: u32) -> i64 {
    if bits > 1 << (n - 1) {
        bits as i64 - (1i64 << n)
    } else {
        bits as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (1000, 1.0), (2000, 1.0), (3000, 2.5), (4500, -7.0): a varint start, an unchanged value,
    /// a zero and a 14-bit delta-of-delta, two new XOR windows.
    #[test]
    fn decodes_a_chunk_with_every_kind_of_step() {
        // Written by hand from the layout above; the end-to-end tests read chunks from a real
        // Prometheus through this decoder.
        let mut w = BitWriter::default();
        w.varint(1000);
        w.bits(1.0f64.to_bits(), 64);
        w.uvarint(1000); // delta 1000
        w.bits(0, 1); // same value
        w.bits(0, 1); // dod 0 -> 3000
        // 2.5 xor 1.0: new window
        let x = 2.5f64.to_bits() ^ 1.0f64.to_bits();
        let (lead, trail) = (x.leading_zeros(), x.trailing_zeros());
        w.bits(0b11, 2);
        w.bits(u64::from(lead), 5);
        w.bits(u64::from(64 - lead - trail), 6);
        w.bits(x >> trail, 64 - lead - trail);
        w.bits(0b10, 2); // dod +500 in 14 bits
        w.bits(500, 14);
        let y = (-7.0f64).to_bits() ^ 2.5f64.to_bits();
        let (lead, trail) = (y.leading_zeros(), y.trailing_zeros());
        w.bits(0b11, 2);
        w.bits(u64::from(lead), 5);
        w.bits(u64::from((64 - lead - trail) % 64), 6);
        w.bits(y >> trail, 64 - lead - trail);
        let mut chunk = vec![0, 4];
        chunk.extend(w.finish());
        assert_eq!(
            decode(&chunk).unwrap(),
            vec![(1000, 1.0), (2000, 1.0), (3000, 2.5), (4500, -7.0)]
        );
        assert_eq!(sample_count(&chunk).unwrap(), 4);
        // Truncated: an error, never a panic.
        for n in 0..chunk.len() - 1 {
            assert!(decode(&chunk[..n]).is_err(), "{n} bytes decoded");
        }
    }

    #[test]
    fn negative_delta_of_delta_and_stale_markers_survive() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let mut w = BitWriter::default();
        w.varint(-5);
        w.bits(stale.to_bits(), 64);
        w.uvarint(100);
        w.bits(0, 1);
        w.bits(0b110, 3); // dod -30 in 17 bits
        w.bits((1u64 << 17) - 30, 17);
        w.bits(0, 1);
        let mut chunk = vec![0, 3];
        chunk.extend(w.finish());
        let got = decode(&chunk).unwrap();
        assert_eq!(
            got.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![-5, 95, 165]
        );
        assert!(got.iter().all(|s| s.1.to_bits() == stale.to_bits()));
    }

    #[derive(Default)]
    struct BitWriter {
        out: Vec<u8>,
        used: u32,
    }

    impl BitWriter {
        fn bits(&mut self, v: u64, n: u32) {
            for i in (0..n).rev() {
                if self.used.is_multiple_of(8) {
                    self.out.push(0);
                }
                if (v >> i) & 1 == 1 {
                    let last = self.out.len() - 1;
                    self.out[last] |= 0x80 >> (self.used % 8);
                }
                self.used += 1;
            }
        }
        fn uvarint(&mut self, mut v: u64) {
            while v >= 0x80 {
                self.bits((v & 0x7f) | 0x80, 8);
                v >>= 7;
            }
            self.bits(v, 8);
        }
        fn varint(&mut self, v: i64) {
            self.uvarint(((v << 1) ^ (v >> 63)) as u64);
        }
        fn finish(self) -> Vec<u8> {
            self.out
        }
    }
}
