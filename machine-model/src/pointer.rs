//! JSON pointers (RFC 6901) into a profile's text: one segment escaped, and the line and column where
//! the value a pointer names starts, so that a diagnostic about a value can point into the file.
//! Leaf module: the diagnostics, the loader and the component checks all locate values this way.

/// One segment of a JSON pointer, escaped (RFC 6901: `~` → `~0`, `/` → `~1`).
pub fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The 1-based line and column where the value at `pointer` starts (the closest existing ancestor when
/// the pointer does not exist, the start of the document when nothing matches).
pub fn locate(text: &str, pointer: &str) -> (usize, usize) {
    let segments: Vec<String> = if pointer.is_empty() {
        Vec::new()
    } else {
        pointer
            .trim_start_matches('/')
            .split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect()
    };
    let mut scanner = Scanner {
        bytes: text.as_bytes(),
        pos: 0,
    };
    scanner.skip_ws();
    let mut best = scanner.pos;
    for seg in &segments {
        match scanner.enter(seg) {
            Some(p) => best = p,
            None => break,
        }
    }
    position_of(text, best)
}

fn position_of(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A minimal JSON walker that finds byte offsets of values; tolerant: gives up (None) on malformed input.
struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.bytes.len() && self.bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    /// With `pos` at a value, moves to the child `seg` and returns its offset.
    fn enter(&mut self, seg: &str) -> Option<usize> {
        match self.bytes.get(self.pos)? {
            b'{' => {
                self.pos += 1;
                loop {
                    self.skip_ws();
                    if self.bytes.get(self.pos)? == &b'}' {
                        return None;
                    }
                    let key = self.string()?;
                    self.skip_ws();
                    if self.bytes.get(self.pos)? != &b':' {
                        return None;
                    }
                    self.pos += 1;
                    self.skip_ws();
                    if key == seg {
                        return Some(self.pos);
                    }
                    self.skip_value()?;
                    self.skip_ws();
                    match self.bytes.get(self.pos)? {
                        b',' => self.pos += 1,
                        _ => return None,
                    }
                }
            }
            b'[' => {
                let want: usize = seg.parse().ok()?;
                self.pos += 1;
                let mut i = 0;
                loop {
                    self.skip_ws();
                    if self.bytes.get(self.pos)? == &b']' {
                        return None;
                    }
                    if i == want {
                        return Some(self.pos);
                    }
                    self.skip_value()?;
                    self.skip_ws();
                    match self.bytes.get(self.pos)? {
                        b',' => self.pos += 1,
                        _ => return None,
                    }
                    i += 1;
                }
            }
            _ => None,
        }
    }

    fn string(&mut self) -> Option<String> {
        if self.bytes.get(self.pos)? != &b'"' {
            return None;
        }
        let start = self.pos;
        self.pos += 1;
        while *self.bytes.get(self.pos)? != b'"' {
            if self.bytes[self.pos] == b'\\' {
                self.pos += 1;
            }
            self.pos += 1;
        }
        self.pos += 1;
        serde_json::from_slice(&self.bytes[start..self.pos]).ok()
    }

    fn skip_value(&mut self) -> Option<()> {
        match self.bytes.get(self.pos)? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.bytes.get(self.pos)? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.pos += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.pos += 1;
                }
            }
            _ => {
                while self.pos < self.bytes.len()
                    && !matches!(self.bytes[self.pos], b',' | b'}' | b']')
                {
                    self.pos += 1;
                }
                Some(())
            }
        }
    }
}
