//! Overload (issue 10, item 6).
