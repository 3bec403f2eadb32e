//! Just enough of the WebAssembly binary format to find, add and remove custom
//! sections without understanding anything else: the 8-byte header, then
//! sections of `id`, LEB128 `size`, `size` bytes. The same walk reads core
//! modules and components.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Header of a core module: `\0asm`, version 1.
const CORE_MODULE_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
/// Header of a component: `\0asm`, version 0x0d, layer 1.
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
/// Length of the header every Wasm file starts with.
pub(crate) const HEADER_LEN: usize = 8;
/// Section id of a custom section.
const CUSTOM_SECTION_ID: u8 = 0;

/// What a Wasm file holds, as its header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WasmKind {
    /// A WASI 0.2 component (`wasm32-wasip2`).
    Component,
    /// A core module (`wasm32-wasip1`).
    CoreModule,
}

impl WasmKind {
    /// The kind a file's first eight bytes announce.
    pub fn of(bytes: &[u8]) -> Result<Self, WasmError> {
        if bytes.len() < 4 || bytes[..4] != CORE_MODULE_HEADER[..4] {
            return Err(WasmError::NotWasm);
        }
        let header = bytes.get(..HEADER_LEN).ok_or(WasmError::Truncated {
            offset: bytes.len(),
        })?;
        if header == CORE_MODULE_HEADER {
            Ok(WasmKind::CoreModule)
        } else if header == COMPONENT_HEADER {
            Ok(WasmKind::Component)
        } else {
            let mut version = [0u8; 4];
            version.copy_from_slice(&header[4..]);
            Err(WasmError::UnsupportedVersion(version))
        }
    }

    /// The name used in manifests: `component` or `core-module`.
    pub fn as_str(self) -> &'static str {
        match self {
            WasmKind::Component => "component",
            WasmKind::CoreModule => "core-module",
        }
    }
}

impl fmt::Display for WasmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WasmKind::Component => "component",
            WasmKind::CoreModule => "core module",
        })
    }
}

/// Why bytes are not a Wasm file this walk can read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WasmError {
    #[error("not a WebAssembly file (it does not start with `\\0asm`)")]
    NotWasm,
    #[error(
        "unsupported WebAssembly version {0:02x?} (expected a core module, version 1, or a component, version 0x0d layer 1)"
    )]
    UnsupportedVersion([u8; 4]),
    #[error("truncated WebAssembly file: it ends inside the section at byte {offset}")]
    Truncated { offset: usize },
    #[error("malformed section size at byte {offset}")]
    BadSize { offset: usize },
    #[error("custom section at byte {offset} has a malformed name")]
    BadName { offset: usize },
}

/// One section, borrowed from the file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Section<'a> {
    /// Where the section starts in the file (its id byte).
    pub offset: usize,
    /// The whole section as it is in the file: id, size and contents.
    pub raw: &'a [u8],
    /// For a custom section, its name and the data after the name.
    pub custom: Option<(&'a str, &'a [u8])>,
}

impl Section<'_> {
    pub fn is_custom(&self, name: &str) -> bool {
        matches!(self.custom, Some((n, _)) if n == name)
    }
}

/// A Wasm file split into its header and sections.
#[derive(Debug)]
pub(crate) struct WasmFile<'a> {
    pub kind: WasmKind,
    pub header: &'a [u8],
    pub sections: Vec<Section<'a>>,
}

impl<'a> WasmFile<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WasmError> {
        let kind = WasmKind::of(bytes)?;
        let mut sections = Vec::new();
        let mut pos = HEADER_LEN;
        while pos < bytes.len() {
            let offset = pos;
            let (size, size_len) =
                read_u32(&bytes[pos + 1..]).map_err(|truncated| match truncated {
                    true => WasmError::Truncated { offset },
                    false => WasmError::BadSize { offset },
                })?;
            let start = pos + 1 + size_len;
            let end = usize::try_from(size)
                .ok()
                .and_then(|size| start.checked_add(size))
                .filter(|&end| end <= bytes.len())
                .ok_or(WasmError::Truncated { offset })?;
            let contents = &bytes[start..end];
            let custom = if bytes[pos] == CUSTOM_SECTION_ID {
                Some(split_name(contents).ok_or(WasmError::BadName { offset })?)
            } else {
                None
            };
            sections.push(Section {
                offset,
                raw: &bytes[pos..end],
                custom,
            });
            pos = end;
        }
        Ok(WasmFile {
            kind,
            header: &bytes[..HEADER_LEN],
            sections,
        })
    }
}

/// A custom section with `name` and `data`, ready to append to a file.
pub(crate) fn custom_section(name: &str, data: &[u8]) -> Vec<u8> {
    let mut contents = Vec::with_capacity(name.len() + data.len() + 5);
    write_u32(&mut contents, name.len());
    contents.extend_from_slice(name.as_bytes());
    contents.extend_from_slice(data);
    let mut out = Vec::with_capacity(contents.len() + 6);
    out.push(CUSTOM_SECTION_ID);
    write_u32(&mut out, contents.len());
    out.extend_from_slice(&contents);
    out
}

fn split_name(contents: &[u8]) -> Option<(&str, &[u8])> {
    let (len, len_len) = read_u32(contents).ok()?;
    let end = len_len.checked_add(usize::try_from(len).ok()?)?;
    let name = std::str::from_utf8(contents.get(len_len..end)?).ok()?;
    Some((name, &contents[end..]))
}

/// Reads an unsigned LEB128 number of at most 32 bits; returns it and how
/// many bytes it took. The error is `true` when the bytes ran out, `false`
/// when the number is malformed or too large.
pub(crate) fn read_u32(bytes: &[u8]) -> Result<(u32, usize), bool> {
    let mut value: u32 = 0;
    for i in 0..5 {
        let byte = *bytes.get(i).ok_or(true)?;
        if i == 4 && byte & 0xf0 != 0 {
            return Err(false);
        }
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(false)
}

/// Appends `value` as unsigned LEB128.
pub(crate) fn write_u32(out: &mut Vec<u8>, value: usize) {
    let mut value = value as u64;
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest core module: header, no sections.
    pub const EMPTY_MODULE: &[u8] = &CORE_MODULE_HEADER;
    /// The smallest component.
    pub const EMPTY_COMPONENT: &[u8] = &COMPONENT_HEADER;

    #[test]
    fn reads_kinds_from_headers() {
        assert_eq!(WasmKind::of(EMPTY_MODULE), Ok(WasmKind::CoreModule));
        assert_eq!(WasmKind::of(EMPTY_COMPONENT), Ok(WasmKind::Component));
        assert_eq!(WasmKind::of(b"#!/bin/sh\n"), Err(WasmError::NotWasm));
        assert_eq!(
            WasmKind::of(b"\0asm"),
            Err(WasmError::Truncated { offset: 4 })
        );
        assert_eq!(
            WasmKind::of(b"\0asm\x02\0\0\0"),
            Err(WasmError::UnsupportedVersion([2, 0, 0, 0]))
        );
    }

    #[test]
    fn walks_custom_sections_and_finds_truncation() {
        let mut bytes = EMPTY_MODULE.to_vec();
        bytes.extend(custom_section("a", b"xyz"));
        bytes.extend(custom_section("bee", &[7; 200]));
        let file = WasmFile::parse(&bytes).unwrap();
        assert_eq!(file.sections.len(), 2);
        assert!(file.sections[0].is_custom("a"));
        assert_eq!(file.sections[0].custom, Some(("a", &b"xyz"[..])));
        assert_eq!(file.sections[1].custom.unwrap().1.len(), 200);
        assert_eq!(file.sections[1].offset, 8 + file.sections[0].raw.len());

        let cut = &bytes[..bytes.len() - 1];
        assert_eq!(
            WasmFile::parse(cut).unwrap_err(),
            WasmError::Truncated {
                offset: file.sections[1].offset
            }
        );
    }

    #[test]
    fn leb128_round_trips_and_rejects_overlong() {
        for value in [0usize, 1, 127, 128, 300, 1 << 20, u32::MAX as usize] {
            let mut out = Vec::new();
            write_u32(&mut out, value);
            assert_eq!(read_u32(&out), Ok((value as u32, out.len())));
        }
        assert_eq!(read_u32(&[0x80, 0x80]), Err(true));
        assert_eq!(read_u32(&[0xff, 0xff, 0xff, 0xff, 0x1f]), Err(false));
        // A padded encoding (as some linkers write) is still read.
        assert_eq!(read_u32(&[0x85, 0x80, 0x80, 0x80, 0x00]), Ok((5, 5)));
    }
}
