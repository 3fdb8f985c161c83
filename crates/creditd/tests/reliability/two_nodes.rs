//! Two nodes on one PostgreSQL (issue 10, item 2).
