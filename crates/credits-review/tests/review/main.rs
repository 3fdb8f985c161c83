//! Tests of the high-usage review analysis (SPEC 7): named rules, one line per case, and
//! properties over random threads.

mod helpers;
mod properties;
mod rules;
