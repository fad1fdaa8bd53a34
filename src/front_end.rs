//! Which front end runs (the `imageimport` command or the operator's worker), so that a
//! message says what to change in that front end's terms: a flag of the command, or a field
//! of the ImageImport. Set once at start-up; the command is the default.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontEnd {
    Cli,
    Operator,
}

static FRONT_END: OnceLock<FrontEnd> = OnceLock::new();

/// Called once, first thing, by the worker; later calls change nothing.
pub fn set(front_end: FrontEnd) {
    let _ = FRONT_END.set(front_end);
}

pub fn current() -> FrontEnd {
    FRONT_END.get().copied().unwrap_or(FrontEnd::Cli)
}

/// `cli` or `operator`, whichever speaks to the user of this process.
pub fn says(cli: &'static str, operator: &'static str) -> &'static str {
    match current() {
        FrontEnd::Cli => cli,
        FrontEnd::Operator => operator,
    }
}
