//! The streamed remote read response decoder: frames (uvarint length, CRC32C, protobuf) as
//! they arrive in pieces, and the XOR chunks inside them.

use tenantgate::migrate::wire::{ChunkedReadResponse, FrameReader};
use tenantgate::migrate::xor;

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Every frame of `stream` fed in pieces of `piece` bytes, up to the first error.
fn frames(stream: &[u8], piece: usize) -> (Vec<ChunkedReadResponse>, Option<String>, usize) {
    let mut reader = FrameReader::new();
    let mut out = Vec::new();
    for chunk in stream.chunks(piece.max(1)) {
        reader.push(chunk);
        loop {
            match reader.next_frame() {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                // What is still buffered then depends on how much had arrived: not compared.
                Err(e) => return (out, Some(e), 0),
            }
        }
    }
    let left = reader.buffered();
    (out, None, left)
}

/// Checks one XOR chunk: decoding agrees with the count its header states.
fn check_chunk(data: &[u8]) {
    let mut each = Vec::new();
    let streamed = xor::decode_each(data, |t, v| each.push((t, v.to_bits())));
    if let Ok(all) = xor::decode(data) {
        assert!(streamed.is_ok());
        assert_eq!(
            Ok(all.len()),
            xor::sample_count(data),
            "decoded count vs header"
        );
        let bits: Vec<(i64, u64)> = all.iter().map(|(t, v)| (*t, v.to_bits())).collect();
        assert_eq!(bits, each, "decode and decode_each disagree");
    } else {
        assert!(streamed.is_err(), "decode failed where decode_each did not");
    }
}

/// The input as frame payloads: each a length byte and that many bytes, framed with a correct
/// CRC so that the fuzzer reaches the protobuf and XOR decoders behind the checksum.
fn framed(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some((&n, rest)) = data.split_first() {
        let n = usize::from(n).min(rest.len());
        let (payload, rest) = rest.split_at(n);
        prost::encoding::encode_varint(payload.len() as u64, &mut out);
        out.extend_from_slice(&CASTAGNOLI.checksum(payload).to_be_bytes());
        out.extend_from_slice(payload);
        data = rest;
    }
    out
}

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Bits 0-1: the input is the raw stream (0, 3), payloads to frame (1), or one XOR chunk (2).
    let stream = match mode & 3 {
        1 => framed(rest),
        2 => return check_chunk(rest),
        _ => rest.to_vec(),
    };
    // Bits 2-7: the size of the pieces the body arrives in, less one. However it is cut, the same
    // frames come out, then the same error.
    let piece = usize::from(mode >> 2) + 1;
    let whole = frames(&stream, stream.len());
    let pieces = frames(&stream, piece);
    assert_eq!(
        whole, pieces,
        "{piece}-byte pieces decode differently from the whole"
    );
    let (frames, _, _) = whole;
    for f in &frames {
        for s in &f.chunked_series {
            for c in &s.chunks {
                check_chunk(&c.data);
            }
        }
    }
}
