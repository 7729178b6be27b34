//! The `qforge` binary: parses the command line and runs the command ([`qforge::commands`]).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of our output goes away
    // (`qforge recipes | head`) instead of panicking on the failed write.
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = qforge::commands::Cli::parse();
    match cli.run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("qforge: error: {err}");
            // A failed agreement gate is a result, not a crash: give it its own code so CI
            // jobs can tell "the checkpoint is bad" from "the command could not run".
            if matches!(err, qforge::Error::Verify(_)) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
