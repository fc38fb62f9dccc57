//! The two ways a command can fail, and the exit code of each.
//!
//! Every error type of the crate has an `exit_code()` that matches each of
//! its variants by name, with no catch-all arm: a new variant does not
//! compile until it says which kind of failure it is.

/// What a failure asks of the person who ran the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// Something failed while running: a lost connection, a damaged object, a full disk.
    Failure = 1,
    /// The input is wrong and a person must fix it: config, arguments, server state, files.
    BadInput = 2,
}

impl ExitCode {
    pub fn code(self) -> u8 {
        self as u8
    }
}
