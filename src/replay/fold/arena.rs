//! Rows in large blocks: one allocation per block, not per row.

/// Where a row is in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowAt {
    block: u32,
    start: u32,
    len: u32,
}

impl RowAt {
    pub fn len(self) -> usize {
        self.len as usize
    }
}

#[derive(Default)]
pub struct Arena {
    blocks: Vec<Vec<u8>>,
    /// The blocks' capacity: the memory held.
    bytes: usize,
}

pub const BLOCK: usize = 1 << 20;

impl Arena {
    pub fn push(&mut self, row: &[u8]) -> RowAt {
        let fits = self
            .blocks
            .last()
            .is_some_and(|b| b.capacity() - b.len() >= row.len());
        if !fits {
            let block = Vec::with_capacity(BLOCK.max(row.len()));
            self.bytes += block.capacity();
            self.blocks.push(block);
        }
        let block = self.blocks.len() - 1;
        let data = &mut self.blocks[block];
        let start = data.len();
        data.extend_from_slice(row);
        RowAt {
            block: block as u32,
            start: start as u32,
            len: row.len() as u32,
        }
    }

    pub fn get(&self, at: RowAt) -> &[u8] {
        let start = at.start as usize;
        &self.blocks[at.block as usize][start..start + at.len as usize]
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}
