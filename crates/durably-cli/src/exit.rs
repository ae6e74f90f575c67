//! Exit codes of the `durably` command and the error type that carries them.

/// Success (`watch`: the run completed).
pub const OK: u8 = 0;
/// Something went wrong (database, conflict with the run's state; `watch`: the run failed).
pub const FAILURE: u8 = 1;
/// Bad arguments (the same code clap uses for its own usage errors).
pub const USAGE: u8 = 2;
/// `watch`: the run was cancelled.
pub const CANCELLED: u8 = 3;
/// The run (or wait) named on the command line does not exist (or was deleted while watching).
pub const NOT_FOUND: u8 = 4;

/// The exit-code table shown at the end of `durably --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (watch: the run completed)
  1  error: database unreachable, operation refused by the run's or wait's state (watch: the run failed)
  2  bad arguments (unknown --status, malformed --label or --older-than, …)
  3  watch: the run was cancelled
  4  no such run (signal: no such wait; schedule: no such schedule)";

/// An error message plus the exit code it ends the command with.
#[derive(Debug)]
pub struct CliError {
    /// The process exit code.
    pub code: u8,
    /// What went wrong and what to do about it.
    pub message: String,
}

impl CliError {
    /// A general failure (exit code 1).
    pub fn new(message: impl Into<String>) -> Self {
        CliError {
            code: FAILURE,
            message: message.into(),
        }
    }

    /// Bad arguments (exit code 2).
    pub fn usage(message: impl Into<String>) -> Self {
        CliError::new(message).with_code(USAGE)
    }

    /// The same message with another exit code.
    pub fn with_code(mut self, code: u8) -> Self {
        self.code = code;
        self
    }
}

impl From<Box<dyn std::error::Error>> for CliError {
    fn from(error: Box<dyn std::error::Error>) -> Self {
        CliError::new(error.to_string())
    }
}
