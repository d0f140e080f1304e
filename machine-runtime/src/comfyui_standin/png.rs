//! A minimal PNG writer for the ComfyUI stand-in's `SaveImage`: 8-bit RGB, one colour per image (what
//! `EmptyImage` makes), `tEXt` chunks for the metadata the fork embeds (`prompt`, `extra_pnginfo` keys).
//!
//! Format: PNG 1.2 (ISO/IEC 15948): signature, `IHDR`, `tEXt`…, `IDAT` (a zlib stream, RFC 1950, of
//! stored DEFLATE blocks, RFC 1951 §3.2.4: no compression, so no compressor is needed), `IEND`; every
//! chunk carries the CRC-32 of its type and data. Rows are written one at a time, so an image never has to
//! be held in memory as pixels.

use std::io::{self, Write};

/// The 8 bytes every PNG file starts with.
const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
/// Largest stored DEFLATE block (its length field is 16 bits).
const MAX_STORED: usize = 65_535;

/// The CRC-32 (ISO 3309, polynomial 0xEDB88320, reflected) table, computed at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

/// A running CRC-32.
struct Crc(u32);

impl Crc {
    fn new() -> Self {
        Crc(0xFFFF_FFFF)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = CRC_TABLE[((self.0 ^ u32::from(b)) & 0xFF) as usize] ^ (self.0 >> 8);
        }
    }

    fn finish(&self) -> u32 {
        self.0 ^ 0xFFFF_FFFF
    }
}

/// A running Adler-32 (RFC 1950 §8.2).
struct Adler {
    a: u32,
    b: u32,
}

impl Adler {
    fn new() -> Self {
        Adler { a: 1, b: 0 }
    }

    fn update(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.a = (self.a + u32::from(byte)) % 65_521;
            self.b = (self.b + self.a) % 65_521;
        }
    }

    fn finish(&self) -> u32 {
        (self.b << 16) | self.a
    }
}

fn chunk(out: &mut impl Write, kind: &[u8; 4], data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "png chunk over 4 GiB"))?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(kind)?;
    out.write_all(data)?;
    let mut crc = Crc::new();
    crc.update(kind);
    crc.update(data);
    out.write_all(&crc.finish().to_be_bytes())
}

/// Writes a `width`×`height` PNG filled with `rgb`, with one `tEXt` chunk per `(keyword, text)`.
///
/// Keywords are 1–79 Latin-1 characters; text that is not Latin-1 is written as UTF-8 bytes (readers such
/// as Pillow decode `tEXt` as Latin-1, which is what the fork's JSON, being ASCII-escaped, is anyway).
/// The `IDAT` data is one zlib stream split into chunks of at most 64 KiB.
pub fn write_solid_rgb(
    out: &mut impl Write,
    width: u32,
    height: u32,
    rgb: [u8; 3],
    texts: &[(&str, &str)],
) -> io::Result<()> {
    if width == 0 || height == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a png has at least one pixel",
        ));
    }
    out.write_all(&SIGNATURE)?;
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // Bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(out, b"IHDR", &ihdr)?;
    for (keyword, text) in texts {
        let mut data = Vec::with_capacity(keyword.len() + 1 + text.len());
        data.extend_from_slice(keyword.as_bytes());
        data.push(0);
        data.extend_from_slice(text.as_bytes());
        chunk(out, b"tEXt", &data)?;
    }
    // One scanline: filter type 0 (none), then the pixels.
    let mut row = Vec::with_capacity(1 + width as usize * 3);
    row.push(0);
    for _ in 0..width {
        row.extend_from_slice(&rgb);
    }
    let total = row.len() as u64 * u64::from(height);
    let mut idat = IdatWriter {
        out,
        buffer: Vec::with_capacity(MAX_STORED + 5),
    };
    // zlib header: deflate, 32 KiB window, no dictionary, fastest level; FCHECK makes it divisible by 31.
    idat.push(&[0x78, 0x01])?;
    let mut adler = Adler::new();
    let mut left = total;
    let mut in_block = 0usize;
    let mut rows_left = height;
    let mut offset = 0usize;
    while left > 0 {
        if in_block == 0 {
            let size = usize::try_from(left.min(MAX_STORED as u64)).unwrap_or(MAX_STORED);
            let last = u64::try_from(size).unwrap_or(u64::MAX) == left;
            let len = u16::try_from(size).unwrap_or(u16::MAX);
            idat.push(&[u8::from(last)])?;
            idat.push(&len.to_le_bytes())?;
            idat.push(&(!len).to_le_bytes())?;
            in_block = size;
        }
        let take = in_block.min(row.len() - offset);
        let piece = &row[offset..offset + take];
        adler.update(piece);
        idat.push(piece)?;
        in_block -= take;
        offset += take;
        left -= take as u64;
        if offset == row.len() {
            offset = 0;
            rows_left -= 1;
        }
    }
    debug_assert_eq!(rows_left, 0);
    idat.push(&adler.finish().to_be_bytes())?;
    idat.flush()?;
    chunk(out, b"IEND", &[])
}

/// Collects the zlib stream and writes it as `IDAT` chunks of at most [`MAX_STORED`] bytes.
struct IdatWriter<'a, W: Write> {
    out: &'a mut W,
    buffer: Vec<u8>,
}

impl<W: Write> IdatWriter<'_, W> {
    fn push(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let room = MAX_STORED - self.buffer.len();
            let take = room.min(bytes.len());
            self.buffer.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buffer.len() == MAX_STORED {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            chunk(self.out, b"IDAT", &self.buffer)?;
            self.buffer.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the chunks, checking every CRC; returns (type, data) pairs.
    fn chunks(png: &[u8]) -> Vec<(String, Vec<u8>)> {
        assert_eq!(&png[..8], &SIGNATURE);
        let mut at = 8;
        let mut out = Vec::new();
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let kind = &png[at + 4..at + 8];
            let data = &png[at + 8..at + 8 + len];
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            let mut check = Crc::new();
            check.update(kind);
            check.update(data);
            assert_eq!(
                crc,
                check.finish(),
                "crc of {}",
                String::from_utf8_lossy(kind)
            );
            out.push((String::from_utf8_lossy(kind).into_owned(), data.to_vec()));
            at += 12 + len;
        }
        out
    }

    /// Inflates a zlib stream of stored blocks (all this writer makes), checking the Adler-32.
    fn inflate_stored(z: &[u8]) -> Vec<u8> {
        assert_eq!((u16::from(z[0]) << 8 | u16::from(z[1])) % 31, 0, "FCHECK");
        let mut at = 2;
        let mut out = Vec::new();
        loop {
            let last = z[at] & 1 == 1;
            assert_eq!(z[at] >> 1, 0, "stored block");
            let len = u16::from_le_bytes([z[at + 1], z[at + 2]]);
            let nlen = u16::from_le_bytes([z[at + 3], z[at + 4]]);
            assert_eq!(len, !nlen);
            out.extend_from_slice(&z[at + 5..at + 5 + len as usize]);
            at += 5 + len as usize;
            if last {
                break;
            }
        }
        let mut adler = Adler::new();
        adler.update(&out);
        assert_eq!(
            u32::from_be_bytes(z[at..at + 4].try_into().unwrap()),
            adler.finish()
        );
        assert_eq!(at + 4, z.len());
        out
    }

    #[test]
    fn the_crc_and_adler_of_known_inputs() {
        let mut crc = Crc::new();
        crc.update(b"123456789");
        assert_eq!(crc.finish(), 0xCBF4_3926);
        let mut adler = Adler::new();
        adler.update(b"Wikipedia");
        assert_eq!(adler.finish(), 0x11E6_0398);
    }

    #[test]
    fn a_small_image_has_its_header_text_and_pixels() {
        let mut png = Vec::new();
        write_solid_rgb(
            &mut png,
            3,
            2,
            [0xFF, 0x80, 0x01],
            &[("prompt", "{\"1\":{}}")],
        )
        .unwrap();
        let chunks = chunks(&png);
        let kinds: Vec<&str> = chunks.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["IHDR", "tEXt", "IDAT", "IEND"]);
        assert_eq!(chunks[0].1, [0, 0, 0, 3, 0, 0, 0, 2, 8, 2, 0, 0, 0]);
        assert_eq!(chunks[1].1, b"prompt\0{\"1\":{}}");
        let raw = inflate_stored(&chunks[2].1);
        let row = [0, 0xFF, 0x80, 0x01, 0xFF, 0x80, 0x01, 0xFF, 0x80, 0x01];
        assert_eq!(raw, [row, row].concat());
    }

    #[test]
    fn a_large_image_spans_several_blocks_and_idat_chunks() {
        let (w, h) = (300u32, 200u32);
        let mut png = Vec::new();
        write_solid_rgb(&mut png, w, h, [1, 2, 3], &[]).unwrap();
        let chunks = chunks(&png);
        let idat: Vec<u8> = chunks
            .iter()
            .filter(|(k, _)| k == "IDAT")
            .flat_map(|(_, d)| d.clone())
            .collect();
        assert!(chunks.iter().filter(|(k, _)| k == "IDAT").count() > 1);
        let raw = inflate_stored(&idat);
        assert_eq!(raw.len(), (1 + w as usize * 3) * h as usize);
        for line in raw.chunks(1 + w as usize * 3) {
            assert_eq!(line[0], 0);
            assert!(line[1..].chunks(3).all(|p| p == [1, 2, 3]));
        }
        assert!(write_solid_rgb(&mut Vec::new(), 0, 1, [0; 3], &[]).is_err());
    }
}
