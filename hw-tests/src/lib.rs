//! hw-tests
