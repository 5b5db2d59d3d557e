//! A decoder for Prometheus XOR chunks (`tsdb/chunkenc/xor.go`), enough to read back the samples
//! of a streamed remote read.
//!
//! Layout: a 2-byte big-endian sample count, then a bit stream (most significant bit first):
//! - sample 0: timestamp as a signed varint, value as 64 raw bits;
//! - sample 1: timestamp delta as an unsigned varint, value XOR-encoded;
//! - later samples: delta-of-delta in buckets (`0`; `10`+14 bits; `110`+17; `1110`+20;
//!   `1111`+64), value XOR-encoded.
//!
//! A value is XOR-encoded against the previous one: `0` = same value; `10` = the meaningful bits
//! fit the previous leading/trailing-zero window; `11` + 5 bits leading zeros + 6 bits length
//! (0 meaning 64) + the bits = a new window.

struct Bits<'a> {
    data: &'a [u8],
    /// Position in bits.
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Result<bool, String> {
        let byte = self
            .data
            .get(self.pos / 8)
            .ok_or_else(|| format!("bit stream ends at bit {}", self.pos))?;
        let bit = byte & (0x80 >> (self.pos % 8)) != 0;
        self.pos += 1;
        Ok(bit)
    }

    fn bits(&mut self, n: u32) -> Result<u64, String> {
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 1) | u64::from(self.bit()?);
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

/// Every (timestamp ms, value) in an XOR chunk.
pub fn decode(data: &[u8]) -> Result<Vec<(i64, f64)>, String> {
    let [hi, lo, ..] = *data else {
        return Err(format!("{} bytes is too short for a chunk", data.len()));
    };
    let count = usize::from(u16::from_be_bytes([hi, lo]));
    let mut r = Bits {
        data: &data[2..],
        pos: 0,
    };
    let mut out = Vec::with_capacity(count);
    if count == 0 {
        return Ok(out);
    }
    let mut t = r.varint()?;
    let mut value = ValueState {
        bits: r.bits(64)?,
        leading: 0,
        trailing: 0,
    };
    out.push((t, f64::from_bits(value.bits)));
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
            delta += dod;
        }
        t += delta;
        let v = value.read(&mut r)?;
        out.push((t, v));
    }
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
