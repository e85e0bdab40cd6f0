//! Append-only byte storage in chunks that are never reallocated: what the memtable's value
//! arena and its hash tables' key copies are kept in.
//!
//! Owns: its chunks, freed together when it is dropped (a memtable's life). Must never: move
//! bytes once appended (a place handed out stays valid), or allocate per append: pieces
//! written by the million cost one allocation per chunk.

/// Byte pieces appended to chunks of a fixed size (a longer piece gets a chunk of its own).
#[derive(Debug)]
pub(crate) struct Chunks {
    chunks: Vec<Vec<u8>>,
    chunk_bytes: usize,
}

impl Chunks {
    pub(crate) fn new(chunk_bytes: usize) -> Self {
        Chunks {
            chunks: Vec::new(),
            chunk_bytes,
        }
    }

    /// Appends `bytes`; returns the chunk and the offset in it where they lie.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> (usize, usize) {
        let fits = self
            .chunks
            .last()
            .is_some_and(|chunk| chunk.capacity() - chunk.len() >= bytes.len());
        if !fits {
            self.chunks
                .push(Vec::with_capacity(self.chunk_bytes.max(bytes.len())));
        }
        let chunk = self.chunks.len() - 1;
        let last = &mut self.chunks[chunk];
        let offset = last.len();
        last.extend_from_slice(bytes);
        (chunk, offset)
    }

    /// The `len` bytes at `offset` of `chunk`, as [`Chunks::append`] placed them.
    pub(crate) fn get(&self, chunk: usize, offset: usize, len: usize) -> &[u8] {
        &self.chunks[chunk][offset..offset + len]
    }

    /// [`Chunks::get`], to write over in place.
    pub(crate) fn get_mut(&mut self, chunk: usize, offset: usize, len: usize) -> &mut [u8] {
        &mut self.chunks[chunk][offset..offset + len]
    }
}

#[cfg(test)]
mod tests {
    use super::Chunks;

    #[test]
    fn pieces_read_back_where_they_were_placed_and_long_ones_get_a_chunk() {
        let mut chunks = Chunks::new(8);
        let a = chunks.append(b"abcde");
        let b = chunks.append(b"fgh");
        let c = chunks.append(b"ij");
        let long = chunks.append(b"0123456789");
        assert_eq!(
            (a, b, c.0, long.1),
            ((0, 0), (0, 5), 1, 0),
            "c did not fit chunk 0"
        );
        assert_eq!(chunks.get(a.0, a.1, 5), b"abcde");
        assert_eq!(chunks.get(b.0, b.1, 3), b"fgh");
        assert_eq!(chunks.get(c.0, c.1, 2), b"ij");
        assert_eq!(chunks.get(long.0, long.1, 10), b"0123456789");
        chunks.get_mut(a.0, a.1, 2).copy_from_slice(b"xy");
        assert_eq!(chunks.get(a.0, a.1, 5), b"xycde");
    }
}
