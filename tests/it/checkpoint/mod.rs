//! The checkpoint reader and writer on the shared fixtures.

mod reader;
mod writer;
