//! JSON-lines reading and writing, and the byte-string representation used in those files.

use std::io::{BufRead, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a JSON-lines file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    /// The underlying reader or writer failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not a valid record; `line` counts from 1 so it matches an editor.
    #[error("line {line}: {source}")]
    Parse {
        /// The offending line, counting from 1.
        line: usize,
        /// What serde_json disliked.
        source: serde_json::Error,
    },
    /// A record could not be encoded (cannot happen for the checker's own types).
    #[error("encoding failed: {0}")]
    Encode(serde_json::Error),
}

/// Writes each item as one line of JSON.
pub(crate) fn write<T: Serialize>(mut writer: impl Write, items: &[T]) -> Result<(), JsonlError> {
    for item in items {
        serde_json::to_writer(&mut writer, item).map_err(JsonlError::Encode)?;
        writer.write_all(b"\n")?;
    }
    writer.flush()?;
    Ok(())
}

/// Reads one item per non-blank line.
pub(crate) fn read<T: DeserializeOwned>(reader: impl BufRead) -> Result<Vec<T>, JsonlError> {
    let mut items = Vec::new();
    for (number, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let item = serde_json::from_str(&line)
            .map_err(|source| JsonlError::Parse { line: number + 1, source })?;
        items.push(item);
    }
    Ok(items)
}

/// Serde representation of a byte string: a JSON string when the bytes are UTF-8, so that
/// tokens stay readable in the files, and an array of numbers otherwise. Reading accepts both.
/// It needs a self-describing format (JSON), which is all the checker uses.
pub(crate) mod bytes {
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(value) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => serializer.serialize_bytes(value),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_any(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or an array of bytes")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<Vec<u8>, E> {
            Ok(value.as_bytes().to_vec())
        }

        fn visit_bytes<E: de::Error>(self, value: &[u8]) -> Result<Vec<u8>, E> {
            Ok(value.to_vec())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(byte) = seq.next_element::<u8>()? {
                out.push(byte);
            }
            Ok(out)
        }
    }
}
