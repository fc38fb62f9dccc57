//! Restore: the operator's commands over `replay`. `tidemark restore` into a
//! target database, `history` of a row, and `drill`, a measured rehearsal.
//! Why a restore is exact is `replay`'s argument; this layer adds only what a
//! target needs: checks before touching it, the scope (`--table`, `--where`)
//! of what is replaced, and replacing live tables all or nothing (`replace`).

pub mod command;
pub mod drill;
pub mod history;
pub mod replace;
